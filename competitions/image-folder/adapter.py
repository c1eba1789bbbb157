"""image-folder: any local `images/` + `masks/` pair of folders, set up by `options`.

    <data_dir>/images/<id>.<ext>   <data_dir>/masks/<id>.png   [<data_dir>/<test_dir>/<id>.<ext>]

Works as is on ../shared/data/kvasir_seg (Kvasir-SEG polyps) and ../shared/data/isbi2012_em.
Masks are read as grey images and thresholded (`mask_threshold`), so 0/1, 0/255 and lossy JPEG
masks all work. Without `group_regex` every image is its own group: near-duplicate frames of one
video may then land in different folds, so set it when ids carry a video or patient.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

import podium
from podium import Competition, PodiumError, Sample


class ImageFolder(Competition):
    def train_samples(self) -> list[Sample]:
        images = self._images(self.data_dir / str(self.options.image_dir))
        if not images:
            raise PodiumError(f"{self.data_dir / self.options.image_dir}: no images")
        mask_dir = self.data_dir / str(self.options.mask_dir)
        pattern = re.compile(self.options.group_regex) if self.options.group_regex else None
        samples = []
        for path in images:
            mask = mask_dir / str(self.options.mask_name).format(id=path.stem)
            if not mask.is_file():
                raise PodiumError(f"{mask}: mask of image {path.name} not found")
            match = pattern.search(path.stem) if pattern else None
            samples.append(Sample(path.stem, path, mask, group=match.group(1) if match else None))
        return samples

    def test_samples(self) -> list[Sample]:
        if not self.options.test_dir:
            return []
        return [Sample(p.stem, p) for p in self._images(self.data_dir / str(self.options.test_dir))]

    def read_mask(self, sample: Sample, shape: tuple[int, int]) -> np.ndarray:
        grey = podium.read_gray(sample.mask)
        if grey.shape != tuple(shape):
            raise PodiumError(f"{sample.mask}: mask is {grey.shape[::-1]}, image is {shape[::-1]}")
        return (grey > int(self.options.mask_threshold)).astype(np.uint8)

    def _images(self, folder: Path) -> list[Path]:
        exts = {e.lower() for e in self.options.image_exts}
        return sorted(p for p in folder.glob("*") if p.suffix.lower() in exts)
