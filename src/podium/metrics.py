"""Competition metrics, computed per image on hard (binarised) masks.

Every competition podium knows scores a submission as the mean of a per-image score, so a metric
here is `fn(pred, target, task) -> float` for ONE image, and the competition score is the mean
over images. That makes scores exact under any split of the images across processes.

Empty masks follow the Kaggle rule (Carvana, Ultrasound Nerve, TGS): an image whose prediction and
ground truth are both empty scores 1; an empty truth with a non-empty prediction (or the reverse)
scores 0.

Shapes: binary HxW {0,1}; multiclass HxW class ids (0 = background); multilabel CxHxW {0,1}.

The EndoVis 2017 robotic-instrument metrics (`endovis_iou`, `endovis_dice`) differ from `iou` and
`dice` on multiclass masks only: they average over the classes present in the ground truth, so a
class predicted where the frame has none costs nothing unless the frame has no instrument at all.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from podium.io import PodiumError

__all__ = ["dice", "iou", "tgs_map", "endovis_iou", "endovis_dice", "get_metric", "METRICS"]


def _overlap(pred: np.ndarray, target: np.ndarray, score: Callable[[int, int, int], float]):
    pred, target = pred.astype(bool), target.astype(bool)
    inter = int(np.logical_and(pred, target).sum())
    return score(inter, int(pred.sum()), int(target.sum()))


def _dice_counts(inter: int, p: int, t: int) -> float:
    return 1.0 if p + t == 0 else 2.0 * inter / (p + t)


def _iou_counts(inter: int, p: int, t: int) -> float:
    return 1.0 if p + t == 0 else inter / (p + t - inter)


def _per_class(pred, target, task, counts) -> float:
    if task == "binary":
        return _overlap(pred, target, counts)
    if task == "multilabel":
        return float(np.mean([_overlap(p, t, counts) for p, t in zip(pred, target, strict=True)]))
    # multiclass: mean over the foreground classes present in the prediction or the truth.
    present = np.union1d(np.unique(pred), np.unique(target))
    present = present[present != 0]
    if present.size == 0:
        return 1.0
    return float(np.mean([_overlap(pred == c, target == c, counts) for c in present]))


def dice(pred: np.ndarray, target: np.ndarray, task: str = "binary") -> float:
    """Dice = 2|P∩T| / (|P|+|T|) of one image; 1 when both are empty."""
    return _per_class(pred, target, task, _dice_counts)


def iou(pred: np.ndarray, target: np.ndarray, task: str = "binary") -> float:
    """IoU (Jaccard) = |P∩T| / |P∪T| of one image; 1 when both are empty."""
    return _per_class(pred, target, task, _iou_counts)


# Rounded so an IoU equal to a threshold (e.g. 11/20 = 0.55) compares as exactly equal: not a hit.
TGS_THRESHOLDS = np.round(np.linspace(0.5, 0.95, 10), 2)


def tgs_map(pred: np.ndarray, target: np.ndarray, task: str = "binary") -> float:
    """TGS Salt's score of one image: the mean over IoU thresholds 0.50:0.05:0.95 of a hit (1)
    or a miss (0). With one object per image, a hit is IoU > threshold; empty truth and empty
    prediction is a hit at every threshold; exactly one of them empty is a miss at every one."""
    if task != "binary":
        raise ValueError("tgs_map is defined for binary masks")
    p, t = pred.astype(bool), target.astype(bool)
    if not t.any():
        return 0.0 if p.any() else 1.0
    if not p.any():
        return 0.0
    score = _iou_counts(int((p & t).sum()), int(p.sum()), int(t.sum()))
    return float((score > TGS_THRESHOLDS).mean())


def _truth_classes(pred, target, task, counts) -> float:
    if task != "multiclass":
        return _per_class(pred, target, task, counts)
    truth = np.unique(target)
    truth = truth[truth != 0]
    if truth.size == 0:  # no instrument in the frame: right only if none is predicted
        return 0.0 if (pred != 0).any() else 1.0
    return float(np.mean([_overlap(pred == c, target == c, counts) for c in truth]))


def endovis_iou(pred: np.ndarray, target: np.ndarray, task: str = "binary") -> float:
    """EndoVis 2017 robotic-instrument IoU of one frame, as the winning team's evaluation code
    computes it (ternaus/robot-surgery-segmentation evaluate.py, `general_jaccard`): the mean IoU
    over the classes present in the ground truth; a frame without instruments scores 1 if the
    prediction is empty too, else 0. Binary masks: plain IoU with empty/empty = 1."""
    return _truth_classes(pred, target, task, _iou_counts)


def endovis_dice(pred: np.ndarray, target: np.ndarray, task: str = "binary") -> float:
    """Dice counterpart of `endovis_iou` (`general_dice` in the same file)."""
    return _truth_classes(pred, target, task, _dice_counts)


METRICS: dict[str, Callable[..., float]] = {
    "dice": dice,
    "iou": iou,
    "tgs_map": tgs_map,
    "endovis_iou": endovis_iou,
    "endovis_dice": endovis_dice,
}


def get_metric(name: str) -> Callable[..., float]:
    if name not in METRICS:
        raise PodiumError(f"unknown metric '{name}' (known: {', '.join(METRICS)})")
    return METRICS[name]
