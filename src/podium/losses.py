"""Training losses: soft Dice with an explicit reduction, and weighted sums with BCE/CE, Lovász
and focal terms (those two from segmentation_models_pytorch).

Soft Dice, as computed here (p = predicted probability, t = target, s = `smooth`):

    dice = (2 * sum(p * t) + s) / (sum(p) + sum(t) + s),   loss = 1 - mean(dice)

- `reduction="batch"` sums over every image of the batch for each class, then averages the
  classes (one Dice per class per batch; what smp's DiceLoss does). Under DDP the batch is the
  global batch: in a training step (gradients on) the sums are all-reduced across ranks, so the
  loss and its gradient are those of one process with the N-times batch. Validation (no
  gradients) keeps each rank's sums, since ranks may hold different numbers of images.
- `reduction="image"` computes one Dice per image and class and averages them all (the loss that
  matches a per-image Dice metric like Carvana's or Ultrasound Nerve's).
- Empty masks: with s > 0, an (image, class) whose truth is empty scores s / (sum(p) + s), i.e. 1
  when nothing is predicted and falling towards 0 as false positives grow. With s = 0 such a pair
  contributes 0 Dice with no gradient; keep s > 0 when masks can be empty.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from segmentation_models_pytorch.losses import FocalLoss, LovaszLoss
from torch import nn

from podium import distributed as dist

__all__ = ["SoftDiceLoss", "WeightedLoss", "EmptyHeadLoss", "build_loss"]


def _probabilities_and_targets(logits: torch.Tensor, target: torch.Tensor, task: str):
    """(probabilities, one-hot/float targets) of shape NxCxHxW for any task."""
    if task == "multiclass":
        probs = logits.softmax(dim=1)
        onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2)
        return probs, onehot.to(probs.dtype)
    return logits.sigmoid(), target.to(logits.dtype)


class SoftDiceLoss(nn.Module):
    """1 - soft Dice; see the module docstring for the formula, reductions and empty masks."""

    def __init__(self, task: str = "binary", reduction: str = "batch", smooth: float = 1.0):
        super().__init__()
        if reduction not in ("batch", "image"):
            raise ValueError(f"dice reduction must be 'batch' or 'image', got '{reduction}'")
        self.task, self.reduction, self.smooth = task, reduction, float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, target = _probabilities_and_targets(logits.float(), target, self.task)
        dims = (0, 2, 3) if self.reduction == "batch" else (2, 3)
        intersection = (probs * target).sum(dims)
        total = probs.sum(dims) + target.sum(dims)
        if self.reduction == "batch" and torch.is_grad_enabled():
            intersection, total = dist.all_reduce_sum(torch.stack([intersection, total]))
        dice = (2.0 * intersection + self.smooth) / (total + self.smooth).clamp_min(1e-7)
        return 1.0 - dice.mean()


class CrossEntropyTerm(nn.Module):
    """Pixel-wise BCE with logits (binary, multilabel) or cross-entropy (multiclass)."""

    def __init__(self, task: str):
        super().__init__()
        self.task = task

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.task == "multiclass":
            return F.cross_entropy(logits.float(), target.long())
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())


class WeightedLoss(nn.Module):
    """sum_i weight_i * term_i(logits, target); `last_terms` keeps each term's value for logs."""

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float]):
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.weights = dict(weights)
        self.last_terms: dict[str, float] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = logits.new_zeros((), dtype=torch.float32)
        parts = {}
        for name, term in self.terms.items():
            value = term(logits, target)
            parts[name] = value.detach()
            total = total + self.weights[name] * value
        self.last_terms = parts
        return total


class EmptyHeadLoss(nn.Module):
    """The segmentation loss plus `weight` x BCE of the image-level head (`model.aux_head=empty`)
    against "the mask is not empty" (any foreground pixel, of any class). Takes the model's
    output as it comes: (mask logits, non-empty logits N), or mask logits alone."""

    def __init__(self, segmentation: nn.Module, weight: float):
        super().__init__()
        self.segmentation, self.weight = segmentation, float(weight)

    def forward(self, output, target: torch.Tensor, **extras: torch.Tensor) -> torch.Tensor:
        logits, nonempty = output if isinstance(output, tuple) else (output, None)
        loss = self.segmentation(logits, target, **extras)  # extras: a pseudo-label batch's
        if nonempty is None:
            return loss
        truth = target.flatten(1).gt(0).any(1).to(torch.float32)
        bce = F.binary_cross_entropy_with_logits(nonempty.float(), truth)
        return loss + self.weight * bce


def build_loss(cfg: DictConfig, task: str) -> WeightedLoss:
    """Build the loss of `cfg` (the `loss` config group) for a binary/multiclass/multilabel task."""
    smp_mode = {"binary": "binary", "multiclass": "multiclass", "multilabel": "multilabel"}[task]
    factories = {
        "dice": lambda: SoftDiceLoss(task, cfg.dice.reduction, cfg.dice.smooth),
        "bce": lambda: CrossEntropyTerm(task),
        "lovasz": lambda: LovaszLoss(smp_mode, per_image=cfg.lovasz.per_image),
        "focal": lambda: FocalLoss(smp_mode, alpha=cfg.focal.alpha, gamma=cfg.focal.gamma),
    }
    weights = {name: float(w) for name, w in cfg.weights.items() if w}
    unknown = set(weights) - set(factories)
    if unknown:
        raise KeyError(f"loss.weights: unknown term(s) {sorted(unknown)}; known: {list(factories)}")
    if not weights:
        raise ValueError("loss.weights: every weight is zero; give at least one term a weight")
    return WeightedLoss({name: factories[name]() for name in weights}, weights)
