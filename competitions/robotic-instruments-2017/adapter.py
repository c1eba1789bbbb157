"""MICCAI 2017 EndoVis robotic instrument segmentation, from the release's own folder layout:

    train/instrument_dataset_<k>/left_frames/frame<NNN>.png          (k = 1..8)
    train/instrument_dataset_<k>/ground_truth/<Instrument>_labels/frame<NNN>.png
    test/instrument_dataset_<k>/left_frames/frame<NNN>.png           (k = 1..10)
    test/instrument_dataset_<k>/ground_truth/...                      (optional: local scoring)

Each label image marks one instrument: grey 10 = shaft, 20 = wrist, 30 = claspers. The folder
name gives the instrument type; `Other_labels` (non-robotic tools) count for the type task only.
`podium download` (prepare) writes the sample submissions and, when the test ground truth is
there, the solutions of the three tasks. The video is the group: a video never spans two folds.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

import podium
from podium import Competition, PodiumError, Sample

PARTS = {10: 1, 20: 2, 30: 3}  # label grey value -> parts class id
TYPES = {  # folder name fragment -> type class id (classes[1:] in competition.yaml)
    "Bipolar_Forceps": 1,
    "Prograsp_Forceps": 2,
    "Large_Needle_Driver": 3,
    "Vessel_Sealer": 4,
    "Grasping_Retractor": 5,
    "Monopolar_Curved_Scissors": 6,
    "Other": 7,
}


class RoboticInstruments(Competition):
    def train_samples(self) -> list[Sample]:
        return self._frames("train")

    def test_samples(self) -> list[Sample]:
        return self._frames("test")

    def _frames(self, split: str) -> list[Sample]:
        videos = sorted((self.data_dir / split).glob("instrument_dataset_*"))
        if split == "train" and not videos:
            raise PodiumError(f"{self.data_dir / split}: no instrument_dataset_<k> folders")
        samples = []
        for video in videos:
            labels = sorted(p for p in (video / "ground_truth").glob("*") if p.is_dir())
            for frame in sorted((video / "left_frames").glob("*.png")):
                masks = [folder / frame.name for folder in labels]
                samples.append(
                    Sample(f"{video.name}_{frame.stem}", frame, masks or None, group=video.name)
                )
        return samples

    def image_shape(self, sample: Sample) -> tuple[int, int]:
        return int(self.options.crop[2]), int(self.options.crop[3])

    def read_image(self, sample: Sample) -> np.ndarray:
        return self._crop(podium.read_image(sample.image), sample.image)

    def read_mask(self, sample: Sample, shape: tuple[int, int]) -> np.ndarray:
        mask = None
        for path in sample.mask or []:
            label = podium.read_gray(path)
            if mask is None:
                mask = np.zeros(label.shape, np.uint8)
            other = "Other" in path.parent.name
            if self.options.labels == "type":
                type_id = next((v for k, v in TYPES.items() if k in path.parent.name), None)
                if type_id is None:
                    raise PodiumError(f"{path.parent}: unknown instrument type")
                mask[label > 0] = type_id
            elif self.options.labels == "parts" and not other:
                for value, class_id in PARTS.items():
                    mask[label == value] = class_id
            elif not other:
                mask[label > 0] = 1
        if mask is None:
            return np.zeros(shape, np.uint8)
        return self._crop(mask, sample.mask[0])

    def _crop(self, image: np.ndarray, source: Path) -> np.ndarray:
        top, left, height, width = (int(v) for v in self.options.crop)
        if image.shape[0] < top + height or image.shape[1] < left + width:
            raise PodiumError(
                f"{source}: {image.shape[1]}x{image.shape[0]} is smaller than the crop "
                f"{width}x{height} at ({left}, {top}) (competition.options.crop)"
            )
        return image[top : top + height, left : left + width]

    def solution_path(self) -> Path | None:
        return self.data_dir / "solution" / f"solution_{self.options.labels}.csv"

    def prepare(self) -> None:
        """Write, for each task, the sample submission and (test ground truth permitting) the
        solution: one row per test frame and class, in the submission format."""
        test = self.test_samples()
        if not self.train_samples() or not test:
            raise PodiumError(f"{self.data_dir}: expected train/ and test/ instrument_dataset_*")
        for labels in self.options.label_sets:
            own = {"options": {"labels": labels}, "data_dir": str(self.data_dir)}
            task = type(self)(OmegaConf.merge(self.cfg, own))
            task._write(task.sample_submission_path(), test, with_truth=False)
            if all(sample.mask for sample in test):
                task._write(task.solution_path(), test, with_truth=True)

    def _write(self, path: Path, samples: list[Sample], with_truth: bool) -> None:
        with podium.atomic_write(path, newline="") as f:
            writer = csv.writer(f)
            writer.writerow([self.submission.id_column, self.submission.mask_column])
            for sample in samples:
                if with_truth:
                    truth = self.read_mask(sample, self.image_shape(sample))
                    writer.writerows(self.submission_rows(sample, truth))
                else:
                    layout = self.submission_layout([sample])
                    writer.writerows((row, self.submission.empty) for row in layout)
