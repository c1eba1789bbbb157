"""Ultrasound Nerve Segmentation: the brachial plexus nerve in 580x420 grey ultrasound frames.

Kaggle layout (podium download competition=ultrasound-nerve-segmentation):

    train/<subject>_<img>.tif  train/<subject>_<img>_mask.tif  train_masks.csv (subject,img,pixels)
    test/<img>.tif             sample_submission.csv (img, pixels)

Masks come from train_masks.csv (the same masks as the _mask.tif files). Frames of one subject
(patient) are near-duplicates, so the subject is the group; folds are stratified on empty vs
non-empty masks.
"""

from __future__ import annotations

import podium
from podium import Competition, Sample


class UltrasoundNerve(Competition):
    def train_samples(self) -> list[Sample]:
        return [
            Sample(
                id=f"{row['subject']}_{row['img']}",
                image=self.data_dir / "train" / f"{row['subject']}_{row['img']}.tif",
                mask=row["pixels"],
                group=row["subject"],
                stratify=bool(row["pixels"].strip()),
                origin=row.origin,
            )
            for row in podium.read_csv_rows(
                self.data_dir / "train_masks.csv", key=("subject", "img")
            )
        ]

    def test_samples(self) -> list[Sample]:
        return [
            Sample(
                id=row["img"],
                image=self.data_dir / "test" / f"{row['img']}.tif",
                origin=row.origin,
            )
            for row in podium.read_csv_rows(self.sample_submission_path(), key="img")
        ]
