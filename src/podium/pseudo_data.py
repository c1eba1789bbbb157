"""A pseudo-label set on disk, and how training mixes it in (`podium train ... pseudo=DIR`).

The set (`podium pseudo ... out=DIR` writes it, podium.pseudo):

    pseudo.json         the manifest: competition, round, teacher runs, TTA, the rule, kept/total
    pseudo.csv          one row per labelled image: id, image, confident, kept, label
    labels/<n>.npy      one per kept image: uint8 2xHxW at the image's own size, [target x 255
                        (hard: 0/255, soft: the ensemble's p x 255), pixel weight x 255 (pixel
                        rule: 0 on the uncertain pixels, which the loss ignores; else all 255)]

Training (podium.run_state builds it when `pseudo` is set): pseudo images join the *training* part
only; validation folds are the competition's labelled samples as always, whatever the set holds.
Each per-device batch holds round(pseudo_ratio x batch_size) pseudo images and the rest labelled;
an epoch keeps the steps (and images seen) of the run without pseudo-labels. Labelled and pseudo
images are drawn from two endless streams of permutations, a pure function of (seed, epoch), so a
resumed run replays exactly. The loss: labelled images with the configured loss, pseudo images
with BCE + soft Dice over their weighted pixels (soft targets and ignored pixels need both),
weighted `pseudo_weight`, averaged over the images of the batch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from podium import io
from podium.competition import Competition, Sample
from podium.data import SegmentationDataset
from podium.io import PodiumError

__all__ = [
    "MANIFEST",
    "TABLE",
    "LABELS",
    "BATCH_KEYS",
    "PseudoSet",
    "load_pseudo_set",
    "teacher_round",
    "PseudoDataset",
    "MixedDataset",
    "pseudo_per_batch",
    "mixed_epoch_order",
    "epoch_order_function",
    "mixed_training_set",
    "weighted_bce_dice",
    "MixedLoss",
    "batch_extras",
]

MANIFEST = "pseudo.json"
TABLE = "pseudo.csv"
LABELS = "labels"
# What a mixed batch carries besides image and mask (pad_collate pads them like the mask).
BATCH_KEYS = ("pseudo", "soft_mask", "pixel_weight")


@dataclass(frozen=True)
class PseudoSet:
    """A pseudo-label set read back: its folder, manifest and kept images (id, image, label)."""

    folder: Path
    manifest: dict
    kept: list[tuple[str, Path, Path]]

    @property
    def round(self) -> int:
        return int(self.manifest.get("round", 1))

    def record(self, weight: float, ratio: float) -> dict:
        """What summary.json and the ledger keep of the round a run trained with."""
        keys = ("round", "teachers", "rule", "kept", "total", "source", "tta")
        return {
            "dir": str(self.folder),
            **{k: self.manifest.get(k) for k in keys},
            "weight": weight,
            "ratio": ratio,
        }


def load_pseudo_set(folder: str | Path, competition: str) -> PseudoSet:
    """The set in `folder`, checked: its manifest names `competition`, every kept image and label
    file exists. Anything wrong is one line naming the file (key `pseudo`)."""
    folder = Path(folder).expanduser().resolve()
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise PodiumError(f"pseudo={folder}: no {MANIFEST} there (make one with `podium pseudo`)")
    try:
        manifest = io.read_json(manifest_path)
        rows = io.read_csv_rows(folder / TABLE)
    except (OSError, ValueError) as e:
        raise PodiumError(f"pseudo={folder}: cannot read the set ({e})") from None
    if manifest.get("competition") != competition:
        raise PodiumError(
            f"{manifest_path}: labels competition {manifest.get('competition')}, not {competition}"
        )
    kept = []
    for row in rows:
        if row.get("kept") != "1":
            continue
        image, label = Path(row["image"]), folder / LABELS / row["label"]
        for path in (image, label):
            if not path.is_file():
                raise PodiumError(f"{folder / TABLE}: image {row['id']}: {path} is missing")
        kept.append((row["id"], image, label))
    if len(kept) != int(manifest.get("kept", -1)):
        raise PodiumError(
            f"{manifest_path}: says {manifest.get('kept')} kept images, {TABLE} lists {len(kept)}"
        )
    if not kept:
        raise PodiumError(f"pseudo={folder}: the rule kept no image; loosen it or leave pseudo out")
    return PseudoSet(folder, manifest, kept)


def teacher_round(summary: dict | None) -> int:
    """The pseudo-label round a run trained with (0: none), from its summary.json."""
    return int(((summary or {}).get("pseudo") or {}).get("round") or 0)


# -- datasets ---------------------------------------------------------------------------------
class PseudoDataset(Dataset):
    """The kept images of a set with their labels, augmented like the labelled training images
    (the same transform moves image, target and pixel weights together)."""

    def __init__(self, competition: Competition, pseudo: PseudoSet, transform=None, seed: int = 0):
        self.competition, self.items = competition, pseudo.kept
        self.transform, self.seed, self.epoch = transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        image_id, image_path, label_path = self.items[index]
        image = self.competition.read_image(Sample(id=image_id, image=image_path))
        label = np.load(label_path, allow_pickle=False)
        if label.shape != (2, *image.shape[:2]):
            raise PodiumError(f"{label_path}: shape {label.shape}, image is {image.shape[:2]}")
        soft, weight = label[0], label[1]
        if self.transform is not None:
            # Its own stream: never the seed of a labelled index (ids are offset by 2**31).
            rng_seed = (self.seed * 1_000_003 + self.epoch) * 10_000_019 + index + 2**31
            self.transform.set_random_state(
                np.random.default_rng(rng_seed), random.Random(rng_seed)
            )
            out = self.transform(image=image, masks=[soft, weight])
            image, (soft, weight) = out["image"], out["masks"]
        soft = torch.from_numpy(np.ascontiguousarray(soft)[None])
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "mask": (soft >= 128).to(torch.uint8),
            "soft_mask": soft,
            "pixel_weight": torch.from_numpy(np.ascontiguousarray(weight)[None]),
            "pseudo": True,
            "index": index,
        }


class MixedDataset(Dataset):
    """Labelled training images (indices 0..n-1) then pseudo-labelled ones (n..), every item
    with the keys of a mixed batch (a labelled image: its own mask as the soft target, every
    pixel weighing 1). Binary tasks only, like the pseudo-label sets."""

    def __init__(self, labelled: SegmentationDataset, pseudo: PseudoDataset):
        self.labelled, self.pseudo = labelled, pseudo
        self.samples = labelled.samples  # the labelled samples, as a plain training set has

    def set_epoch(self, epoch: int) -> None:
        self.labelled.set_epoch(epoch)
        self.pseudo.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.labelled) + len(self.pseudo)

    def __getitem__(self, index: int) -> dict:
        if index >= len(self.labelled):
            return self.pseudo[index - len(self.labelled)]
        item = self.labelled[index]
        mask = item["mask"]
        return {
            **item,
            "soft_mask": mask * 255,
            "pixel_weight": torch.full_like(mask, 255),
            "pseudo": False,
        }


# -- batches ----------------------------------------------------------------------------------
def pseudo_per_batch(ratio: float, batch_size: int) -> int:
    """Pseudo images in each per-device batch: round(ratio x batch), at least 1 and leaving at
    least 1 labelled image (else the error names the keys)."""
    count = round(float(ratio) * batch_size)
    if not 1 <= count <= batch_size - 1:
        raise PodiumError(
            f"pseudo_ratio={ratio}: with trainer.batch_size={batch_size} each batch would hold "
            f"{count} pseudo-labelled images; it needs 1..{batch_size - 1}"
        )
    return count


def _stream(n: int, start: int, count: int, seed: int, salt: int) -> list[int]:
    """Positions start..start+count of an endless stream of permutations of range(n), the
    k-th permutation a function of (seed, salt, k) alone."""
    out, position = [], start
    while len(out) < count:
        k, offset = divmod(position, n)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + salt * 7919 + k)
        take = min(n - offset, count - len(out))
        out += torch.randperm(n, generator=generator)[offset : offset + take].tolist()
        position += take
    return out


def mixed_epoch_order(
    n_labelled: int, n_pseudo: int, batch_size: int, per_batch: int, world: int, steps: int,
    seed: int, epoch: int,
) -> list[int]:  # fmt: skip
    """The MixedDataset indices of an epoch of `steps` global batches: each global batch is
    (batch_size - per_batch) x world labelled indices, then per_batch x world pseudo ones, so
    the round-robin deal of podium.train.train_loader (rank r takes positions r, r+W, ...)
    gives every rank exactly `per_batch` pseudo images per batch."""
    labelled_per_step = (batch_size - per_batch) * world
    pseudo_per_step = per_batch * world
    labelled = _stream(n_labelled, epoch * steps * labelled_per_step,
                       steps * labelled_per_step, seed, 1)  # fmt: skip
    pseudo = _stream(n_pseudo, epoch * steps * pseudo_per_step, steps * pseudo_per_step, seed, 2)
    order = []
    for step in range(steps):
        order += labelled[step * labelled_per_step : (step + 1) * labelled_per_step]
        chunk = pseudo[step * pseudo_per_step : (step + 1) * pseudo_per_step]
        order += [n_labelled + i for i in chunk]
    return order


def epoch_order_function(
    n_labelled: int, n_pseudo: int, batch_size: int, per_batch: int, world: int, steps: int
) -> Callable[[int, int], list[int]]:
    """`mixed_epoch_order` with the set's sizes bound: (seed, epoch) -> the epoch's indices."""

    def order(seed: int, epoch: int) -> list[int]:
        return mixed_epoch_order(
            n_labelled, n_pseudo, batch_size, per_batch, world, steps, seed, epoch
        )

    return order


# -- loss -------------------------------------------------------------------------------------
def weighted_bce_dice(
    logits: torch.Tensor, soft: torch.Tensor, weight: torch.Tensor, smooth: float = 1.0
) -> torch.Tensor:
    """BCE with soft targets averaged over the weighted pixels, plus 1 - soft Dice over them
    (sums over the images given): uncertain pixels (weight 0) add nothing, nor a gradient."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, soft, reduction="none")
    bce = (bce * weight).sum() / weight.sum().clamp_min(1.0)
    probs = logits.sigmoid() * weight
    target = soft * weight
    dice = (2 * (probs * target).sum() + smooth) / (probs.sum() + target.sum() + smooth)
    return bce + 1.0 - dice


class MixedLoss(nn.Module):
    """The configured loss on the labelled images of a batch, `weighted_bce_dice` on its pseudo
    ones times `pseudo_weight`, averaged over the images: (n_l x L_l + w x n_p x L_p) / n.
    Called without the mixed-batch keys (validation) it is the configured loss."""

    def __init__(self, base: nn.Module, pseudo_weight: float):
        super().__init__()
        self.base, self.pseudo_weight = base, float(pseudo_weight)

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        pseudo: torch.Tensor | None = None,
        soft_mask: torch.Tensor | None = None,
        pixel_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if pseudo is None:
            return self.base(logits, target)
        is_pseudo = pseudo.bool()
        n, n_pseudo = len(is_pseudo), int(is_pseudo.sum())
        labelled = ~is_pseudo
        # Every rank holds labelled images (pseudo_per_batch), so the base loss's DDP
        # all-reduce (batch Dice) runs on every rank.
        total = self.base(logits[labelled], target[labelled]) * (n - n_pseudo)
        if n_pseudo:
            soft = soft_mask[is_pseudo].float() / 255.0
            weight = pixel_weight[is_pseudo].float() / 255.0
            pseudo_loss = weighted_bce_dice(logits[is_pseudo], soft, weight)
            total = total + self.pseudo_weight * n_pseudo * pseudo_loss
        return total / n


def batch_extras(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """The mixed-batch keys of a loader batch, on `device` ({} for a plain batch)."""
    return {k: batch[k].to(device, non_blocking=True) for k in BATCH_KEYS if k in batch}


def mixed_training_set(
    folder: str | Path,
    labelled: SegmentationDataset,
    val_samples: Sequence[Sample],
    transform,
    seed: int,
    batch_size: int,
    ratio: float,
    world: int,
    steps: int,
) -> tuple[MixedDataset, PseudoSet, Callable[[int, int], list[int]]]:
    """The training set of a run with `pseudo=folder`: (labelled + pseudo dataset, the set, the
    epoch order). A pseudo image that is one of the validation images is refused: its teacher's
    label would leak into the score."""
    competition = labelled.competition
    if competition.task != "binary":
        raise PodiumError(f"pseudo={folder}: pseudo-labels are for binary tasks only")
    pseudo = load_pseudo_set(folder, competition.name)
    val_images = {Path(s.image).resolve(): s.id for s in val_samples}
    leaked = [(i, val_images[p.resolve()]) for i, p, _ in pseudo.kept if p.resolve() in val_images]
    if leaked:
        raise PodiumError(
            f"pseudo={folder}: {len(leaked)} pseudo-labelled images are validation images of "
            f"this fold (e.g. {leaked[0][0]} is {leaked[0][1]}); they may only join training"
        )
    per_batch = pseudo_per_batch(ratio, batch_size)
    mixed = MixedDataset(labelled, PseudoDataset(competition, pseudo, transform, seed))
    order = epoch_order_function(len(labelled), len(pseudo.kept), batch_size, per_batch, world,
                                 steps)  # fmt: skip
    return mixed, pseudo, order
