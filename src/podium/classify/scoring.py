"""Classification metrics per image, and per-class thresholds tuned for them.

Arrays: `probs` N x C probabilities (sigmoid per class when multi-label, softmax rows when
multi-class), `truth` N x C in {0, 1} (one 1 per row when multi-class). Every metric is the mean
of a per-image score, as podium's segmentation metrics are, so it is exact under any split of the
images across processes:

- `fbeta`: F-beta of the image's predicted label set against its true one,
  (1 + b²)·tp / ((1 + b²)·tp + b²·fn + fp), averaged over images (scikit-learn's
  `fbeta_score(average="samples")`; Planet Amazon uses beta 2). An image with no true and no
  predicted label scores 1 (podium's empty rule; scikit-learn's zero_division decides it there).
- `accuracy`: the image is right when its predicted label set equals the truth (multi-class:
  the argmax is the true class).
- `log_loss`: cross-entropy of the probabilities, clipped to [1e-15, 1 - 1e-15]: -log p(true
  class) when multi-class, the mean binary cross-entropy over classes when multi-label. Lower is
  better; training keeps the checkpoint with the highest `-log_loss`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "METRICS",
    "LOWER_IS_BETTER",
    "THRESHOLDED",
    "decide",
    "per_image_scores",
    "score",
    "tune_thresholds",
]

METRICS = ("fbeta", "accuracy", "log_loss")
LOWER_IS_BETTER = {"log_loss"}
THRESHOLDED = {"fbeta", "accuracy"}  # scored on decided labels (log_loss: on probabilities)
EPS = 1e-15


def decide(probs: np.ndarray, multi_label: bool, thresholds: float | Sequence[float]) -> np.ndarray:
    """N x C {0, 1} labels: each class above its threshold (multi-label), else the argmax."""
    probs = np.asarray(probs, dtype=np.float32)
    if not multi_label:
        return np.eye(probs.shape[1], dtype=np.uint8)[probs.argmax(1)]
    return (probs > np.asarray(thresholds, dtype=np.float32)).astype(np.uint8)


def fbeta_per_image(pred: np.ndarray, truth: np.ndarray, beta: float) -> np.ndarray:
    pred, truth = pred.astype(bool), truth.astype(bool)
    tp = (pred & truth).sum(1).astype(np.float64)
    fp = (pred & ~truth).sum(1)
    fn = (~pred & truth).sum(1)
    b2 = beta * beta
    denominator = (1 + b2) * tp + b2 * fn + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(denominator > 0, (1 + b2) * tp / denominator, 1.0)
    return scores


def log_loss_per_image(probs: np.ndarray, truth: np.ndarray, multi_label: bool) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    t = np.asarray(truth, dtype=np.float64)
    if multi_label:
        return -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(1)
    return -np.log((p * t).sum(1))


def per_image_scores(
    metric: str,
    probs: np.ndarray,
    truth: np.ndarray,
    multi_label: bool,
    thresholds: float | Sequence[float] = 0.5,
    beta: float = 1.0,
) -> np.ndarray:
    """The metric of each image (N,): thresholded metrics decide the labels first."""
    truth = np.asarray(truth)
    if metric == "log_loss":
        return log_loss_per_image(probs, truth, multi_label)
    pred = decide(probs, multi_label, thresholds)
    if metric == "fbeta":
        return fbeta_per_image(pred, truth, beta)
    if metric == "accuracy":
        return (pred.astype(bool) == truth.astype(bool)).all(1).astype(np.float64)
    raise ValueError(f"unknown classification metric '{metric}' (known: {', '.join(METRICS)})")


def score(metric: str, *args, **kwargs) -> float:
    """The competition score: the mean of `per_image_scores`."""
    return float(np.mean(per_image_scores(metric, *args, **kwargs)))


def tune_thresholds(
    probs: np.ndarray,
    truth: np.ndarray,
    image_scores: Callable[[np.ndarray, np.ndarray], np.ndarray],
    start: float,
    grid: Sequence[float],
    rounds: int = 3,
) -> tuple[list[float], float, float]:
    """Per-class thresholds for the best mean `image_scores(decided labels, truth)` on OOF,
    by coordinate search: each class in turn takes the grid value that scores best with the
    others held, in passes until one changes nothing (at most `rounds`). A value replaces the
    current one only if it scores strictly higher, so ties keep `start`. Returns (thresholds,
    tuned score, score with `start` everywhere)."""
    probs = np.asarray(probs, dtype=np.float32)
    truth = np.asarray(truth).astype(bool)
    n_classes = probs.shape[1]
    thresholds = [float(start)] * n_classes
    pred = probs > np.float32(start)
    base = float(np.mean(image_scores(pred, truth)))
    best = base
    for _ in range(rounds):
        changed = False
        for c in range(n_classes):
            for value in grid:
                pred[:, c] = probs[:, c] > np.float32(value)
                value_score = float(np.mean(image_scores(pred, truth)))
                if value_score > best + 1e-12:
                    best, thresholds[c], changed = value_score, float(value), True
            pred[:, c] = probs[:, c] > np.float32(thresholds[c])
        if not changed:
            break
    return thresholds, best, base
