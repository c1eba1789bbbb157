"""Carvana Image Masking Challenge: the car in 1918x1280 studio photos, 16 views per car.

Kaggle layout (podium download competition=carvana-image-masking-challenge):

    train/<car>_<view>.jpg   train_masks/<car>_<view>_mask.gif   train_masks.csv (img, rle_mask)
    train_hq/, test/, test_hq/ (same names)   sample_submission.csv (img, rle_mask)

Ids are file names with their extension (`0004d4463b50_01.jpg`), as in the CSVs. The 16 views of a
car are near-duplicates, so the car is the group: a car never spans two folds.
"""

from __future__ import annotations

import podium
from podium import Competition, PodiumError, Sample


class Carvana(Competition):
    def train_samples(self) -> list[Sample]:
        folder = self.data_dir / str(self.options.images)
        images = sorted(folder.glob("*.jpg"))
        if not images:
            raise PodiumError(f"{folder}: no training images (*.jpg)")
        origins = {}
        if self.options.masks == "csv":
            rows = podium.read_csv_rows(self.data_dir / "train_masks.csv", key="img")
            rles = {row["img"]: row["rle_mask"] for row in rows}
            origins = {row["img"]: row.origin for row in rows}
            masks = {p.name: rles.get(p.name) for p in images}
        else:
            masks = {p.name: self.data_dir / "train_masks" / f"{p.stem}_mask.gif" for p in images}
        missing = [name for name, mask in masks.items() if mask is None]
        if missing:
            raise PodiumError(
                f"train_masks.csv: no mask for {len(missing)} images, e.g. {missing[0]}"
            )
        return [
            Sample(
                id=p.name,
                image=p,
                mask=masks[p.name],
                group=p.stem.split("_")[0],
                origin=origins.get(p.name),
            )
            for p in images
        ]

    def test_samples(self) -> list[Sample]:
        folder = self.data_dir / str(self.options.images).replace("train", "test")
        return [
            Sample(id=row["img"], image=folder / row["img"], origin=row.origin)
            for row in podium.read_csv_rows(self.sample_submission_path(), key="img")
        ]
