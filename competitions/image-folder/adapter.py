"""image-folder: any local `images/` + `masks/` pair of folders, set up by `options`.

    <data_dir>/images/<id>.<ext>   <data_dir>/masks/<id>.png   [<data_dir>/<test_dir>/<id>.<ext>]

Works as is on ../shared/data/kvasir_seg (Kvasir-SEG polyps) and ../shared/data/isbi2012_em.
Masks mean what `mask_encoding` says (competition.yaml, podium.masks): `binary` by default, so
0/1, 0/255 and lossy JPEG masks work, each file being one or the other; colour masks (red on
black) need `nonzero` or `colour_map`, and a mask that fits none of these is an error naming
it, never an empty mask. 16-bit images are scaled by `image_bit_depth` (README.md). Without
`group_regex` every image is its own group: near-duplicate frames of one video may then land in
different folds, so set it when ids carry a video or patient.
"""

from __future__ import annotations

import re
from pathlib import Path

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

    def _images(self, folder: Path) -> list[Path]:
        exts = {e.lower() for e in self.options.image_exts}
        return sorted(p for p in folder.glob("*") if p.suffix.lower() in exts)
