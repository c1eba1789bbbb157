"""TGS Salt Identification Challenge: salt segmentation in 101x101 seismic image patches.

Kaggle layout (podium download competition=tgs-salt-identification-challenge):

    train/images/<id>.png  train/masks/<id>.png  train.csv (id, rle_mask)  depths.csv (id, z)
    test/images/<id>.png   sample_submission.csv (id, rle_mask)

Masks come from train.csv (the same masks as the PNGs, see README.md). There is no known
grouping (patches of one survey may overlap), so folds are stratified on salt coverage in
eleven classes (0: no salt, 1..10: tenths of the image), as most public kernels did.
"""

from __future__ import annotations

import math

import podium
from podium import Competition, PodiumError, RleError, Sample
from podium.rle import rle_parse

PIXELS = 101 * 101


class TgsSalt(Competition):
    def train_samples(self) -> list[Sample]:
        depths = self._depths()
        return [
            Sample(
                id=row["id"],
                image=self.data_dir / "train" / "images" / f"{row['id']}.png",
                mask=row["rle_mask"],
                stratify=math.ceil(10 * _area(row["rle_mask"]) / PIXELS),
                meta={"depth": depths.get(row["id"])},
                origin=row.origin,
            )
            for row in podium.read_csv_rows(self.data_dir / "train.csv", key="id")
        ]

    def test_samples(self) -> list[Sample]:
        depths = self._depths()
        return [
            Sample(
                id=row["id"],
                image=self.data_dir / "test" / "images" / f"{row['id']}.png",
                meta={"depth": depths.get(row["id"])},
                origin=row.origin,
            )
            for row in podium.read_csv_rows(self.sample_submission_path(), key="id")
        ]

    def _depths(self) -> dict[str, int]:
        path = self.data_dir / "depths.csv"
        if not path.is_file():
            return {}
        rows = podium.read_csv_rows(path, columns=["z"], key="id")
        bad = next((row for row in rows if not row["z"].lstrip("-").isdigit()), None)
        if bad is not None:
            raise PodiumError(f"{bad.origin}: depth {bad['z']!r} is not an integer")
        return {row["id"]: int(row["z"]) for row in rows}


def _area(rle: str) -> int:
    """Salt pixels of a run-length string: the sum of its run lengths (0 for a malformed one,
    which the data check reports with its row)."""
    try:
        return int(rle_parse(rle)[1].sum())
    except RleError:
        return 0
