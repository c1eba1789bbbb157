"""Post-processing: probabilities -> the hard mask a submission encodes (threshold, removal of
small components, the empty-mask rules). `podium tune` chooses it on out-of-fold predictions,
`podium predict` applies it."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from podium.models import binarize

__all__ = ["PostProcess", "remove_small_components"]


@dataclass(frozen=True)
class PostProcess:
    """Probabilities -> the hard mask a submission encodes.

    threshold: binarisation threshold (binary, multilabel; multiclass takes the argmax).
    min_area: connected components (8-connected) smaller than this many pixels are removed.
    empty_area: a mask (per class) left with fewer pixels than this becomes empty.
    empty_gate: the image-level head's gate (`model.aux_head=empty`): the whole mask is emptied
      when the head's P(not empty) (`nonempty`) is below this; None: off, the head is ignored.
    Areas are pixels at the resolution the mask is made at, times `area_scale`.
    """

    threshold: float = 0.5
    min_area: float = 0
    empty_area: float = 0
    empty_gate: float | None = None

    def __call__(
        self,
        probs: np.ndarray,
        task: str,
        area_scale: float = 1.0,
        nonempty: float | None = None,
    ) -> np.ndarray:
        if self.empty_gate is not None:
            if nonempty is None:
                raise ValueError("empty_gate is set but the models give no P(not empty)")
            if nonempty < self.empty_gate:
                return np.zeros_like(binarize(probs, task, self.threshold))
        hard = binarize(probs, task, self.threshold)
        min_area, empty_area = self.min_area * area_scale, self.empty_area * area_scale
        if min_area <= 1 and empty_area <= 0:
            return hard
        if task == "binary":
            return self._clean(hard, min_area, empty_area)
        if task == "multilabel":
            return np.stack([self._clean(channel, min_area, empty_area) for channel in hard])
        out = hard.copy()
        for class_id in np.unique(hard):
            if class_id == 0:
                continue
            region = hard == class_id
            out[region & ~self._clean(region, min_area, empty_area).astype(bool)] = 0
        return out

    @staticmethod
    def _clean(mask: np.ndarray, min_area: float, empty_area: float) -> np.ndarray:
        mask = remove_small_components(mask, min_area) if min_area > 1 else mask.astype(np.uint8)
        if empty_area > 0 and int(mask.sum()) < empty_area:
            return np.zeros_like(mask)
        return mask


def remove_small_components(mask: np.ndarray, min_area: float) -> np.ndarray:
    """`mask` (HxW) without its 8-connected components of fewer than `min_area` pixels."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return mask
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False  # the background
    return keep[labels].astype(np.uint8)
