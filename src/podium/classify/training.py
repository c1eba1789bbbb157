"""What training plugs in for a classification task: the dataset (images and label vectors)
and validation (the competition metric over the fold, out-of-fold probabilities per image).
`podium.train` runs them in its one loop; `podium.run_state` picks them by task."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import albumentations as A
import numpy as np
import torch
from omegaconf import DictConfig

from podium import distributed as dist
from podium.classify import scoring
from podium.classify.labels import ClassificationCompetition
from podium.classify.model import class_probabilities
from podium.competition import Sample
from podium.data import SegmentationDataset, make_loader, resolve_num_workers
from podium.models import autocast, to_input
from podium.rundir import quantize

__all__ = ["ClassificationDataset", "validate_classifier"]


class ClassificationDataset(SegmentationDataset):
    """Samples as {"image": uint8 CxHxW, "labels": float32 C, "index": i}: the segmentation
    dataset's images and seeded augmentation (a pure function of seed, epoch and index), with
    the sample's label vector instead of a mask (none when `with_labels=False`: test images)."""

    def __init__(
        self,
        competition: ClassificationCompetition,
        samples: Sequence[Sample],
        transform: A.Compose | None = None,
        with_labels: bool = True,
        seed: int = 0,
    ):
        super().__init__(competition, samples, transform, with_masks=False, seed=seed)
        self.with_labels = with_labels

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        if self.with_labels:
            labels = self.competition.read_labels(self.samples[index])
            item["labels"] = torch.from_numpy(labels)
        return item


@torch.inference_mode()
def validate_classifier(
    model: torch.nn.Module,
    dataset: ClassificationDataset,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    compute,
    cfg: DictConfig,
) -> dict:
    """Score every validation image once across ranks (rank r takes images r, r+W, ...), as
    `podium.train.validate` does for masks: per-image scores and losses gathered on every rank,
    probabilities (uint8, as oof.npz stores them) and labels on rank 0. The score is the
    competition metric at `trainer.threshold` (argmax when multi-class), `-log_loss` for
    log_loss, so that higher is better for the best checkpoint and early stopping."""
    model.eval()
    dist.broadcast_buffers(model)
    competition = dataset.competition
    indices = list(range(dist.rank(), len(dataset), dist.world_size()))
    subset = torch.utils.data.Subset(dataset, indices)
    workers = resolve_num_workers(cfg.trainer.num_workers, processes=dist.world_size())
    loader = make_loader(subset, int(cfg.trainer.batch_size), workers)
    sign = -1.0 if competition.metric in scoring.LOWER_IS_BETTER else 1.0
    scores, arrays = [], []
    for batch in loader:
        images = to_input(batch["image"], model, compute.device, compute.memory_format)
        with autocast(compute.device, compute.precision):
            logits = model(images).float()
        labels = batch["labels"].to(compute.device)
        losses = [float(loss_fn(logits[j : j + 1], labels[j : j + 1])) for j in range(len(logits))]
        probs = class_probabilities(logits, competition.multi_label).cpu().numpy()
        truth = batch["labels"].numpy()
        per_image = scoring.per_image_scores(
            competition.metric, probs, truth, competition.multi_label,
            float(cfg.trainer.threshold), beta=competition.beta,
        )  # fmt: skip
        for j, index in enumerate(batch["index"].tolist()):
            scores.append((index, sign * float(per_image[j]), losses[j]))
            arrays.append((index, quantize(probs[j]), truth[j].astype(np.uint8)))
    return dist.gather_validation(scores, arrays, len(dataset))
