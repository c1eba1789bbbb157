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
from podium import Competition, Sample

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
            )
            for row in podium.read_csv_rows(self.data_dir / "train.csv")
        ]

    def test_samples(self) -> list[Sample]:
        depths = self._depths()
        return [
            Sample(
                id=row["id"],
                image=self.data_dir / "test" / "images" / f"{row['id']}.png",
                meta={"depth": depths.get(row["id"])},
            )
            for row in podium.read_csv_rows(self.sample_submission_path())
        ]

    def _depths(self) -> dict[str, int]:
        path = self.data_dir / "depths.csv"
        if not path.is_file():
            return {}
        return {row["id"]: int(row["z"]) for row in podium.read_csv_rows(path)}


def _area(rle: str) -> int:
    """Salt pixels of a run-length string: the sum of its run lengths."""
    return sum(int(length) for length in rle.split()[1::2])
