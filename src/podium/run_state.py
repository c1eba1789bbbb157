"""What a training run carries, and how each part is built and checkpointed.

`podium.train` reads as the steps of a run; the things a step needs travel together in the
dataclasses here: `Compute` (device, precision, memory format), `TrainData` (datasets and batch
arithmetic), `TrainState` (model, EMA, optimizer, scheduler, scaler, loss, `Progress`) and
`Clock`. `make_checkpoint` / `restore_checkpoint` turn a TrainState into a checkpoint and back.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

import podium
from podium import distributed as dist
from podium.classify.model import ARCH as CLASSIFIER_ARCH
from podium.classify.model import build_classification_loss, build_classifier
from podium.classify.training import ClassificationDataset
from podium.competition import Competition, load_competition
from podium.data import (
    SegmentationDataset,
    build_transforms,
    load_or_make_folds,
    resolve_num_workers,
    split_samples,
)
from podium.datacheck import require_clean_data
from podium.io import PodiumError
from podium.losses import EmptyHeadLoss, build_loss
from podium.models import build_model, resolve_precision, strip_compile_prefix
from podium.pseudo_data import MixedLoss, PseudoSet, mixed_training_set
from podium.rundir import load_checkpoint

log = logging.getLogger(__name__)

__all__ = [
    "Compute",
    "TrainData",
    "Progress",
    "TrainState",
    "Clock",
    "seed_everything",
    "retain_freed_memory",
    "load_data",
    "build_train_state",
    "make_checkpoint",
    "restore_checkpoint",
    "estimate_checkpoint_bytes",
]


# =============================================================================================
# What travels together.
@dataclass(frozen=True)
class Compute:
    """Where and in which number format the model runs, in training and in validation."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    memory_format: torch.memory_format

    @classmethod
    def for_trainer(cls, trainer: DictConfig, device: torch.device) -> Compute:
        """The `trainer` config's precision (auto resolved for `device`) and memory format."""
        memory_format = torch.channels_last if trainer.channels_last else torch.contiguous_format
        return cls(device, resolve_precision(trainer.precision, device), memory_format)


@dataclass
class TrainData:
    """The fold's training and validation sets, and how the training set is batched."""

    competition: Competition
    train_set: SegmentationDataset
    val_set: SegmentationDataset
    batch_size: int  # per device
    accumulate: int  # micro-batches per optimizer step
    workers: int  # DataLoader worker processes of each training process
    steps_per_epoch: int  # micro-batches per device and epoch
    # With pseudo-labels (podium.pseudo_data): the set, and (seed, epoch) -> the epoch's indices.
    pseudo: PseudoSet | None = None
    epoch_order: Callable[[int, int], list[int]] | None = None

    @property
    def full_data(self) -> bool:
        """fold=all: every labelled image trains, nothing validates."""
        return len(self.val_set) == 0

    @property
    def optimizer_steps_per_epoch(self) -> int:
        return self.steps_per_epoch // self.accumulate

    @property
    def images_per_epoch(self) -> int:
        """Training images per epoch, over all devices."""
        return self.steps_per_epoch * self.batch_size * dist.world_size()

    @property
    def global_batch(self) -> int:
        """Images per optimizer step, over all devices."""
        return self.batch_size * dist.world_size() * self.accumulate


@dataclass
class Progress:
    """How far a run got: checkpoints save it as their "state" (these keys, in this order)."""

    epoch: int = 0  # epochs done
    step: int = 0  # optimizer steps done
    best_score: float = -math.inf
    best_epoch: int = -1
    stale_epochs: int = 0  # validated epochs since the best one

    def end_epoch(self, result: dict | None) -> bool:
        """Count an epoch as done, with its validation result (None: it did not validate).
        True when it scored best so far."""
        self.epoch += 1
        improved = result is not None and result["score"] > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.stale_epochs = result["score"], self.epoch, 0
        elif result is not None:
            self.stale_epochs += 1
        return improved


@dataclass
class TrainState:
    """What a training step uses and changes; checkpoints save it and resuming restores it."""

    model: torch.nn.Module  # the plain module: checkpoints save its keys, never compile's
    train_model: torch.nn.Module  # `model`, its DDP wrapper and/or torch.compile: training's
    ema: AveragedModel | None
    ema_updates: list[int]  # the EMA's update counter (see make_ema)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    compute: Compute
    progress: Progress = dataclasses.field(default_factory=Progress)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights validation scores: the EMA's, when there is one."""
        return self.ema.module if self.ema is not None else self.model


@dataclass
class Clock:
    """This process's time and training throughput (summary.json adds up a run's resumes)."""

    start: float = dataclasses.field(default_factory=time.time)
    train_s: float = 0.0  # in training epochs, validation aside
    images_seen: int = 0  # training images, over all devices

    def count_epoch(self, seconds: float, images: int) -> None:
        self.train_s += seconds
        self.images_seen += images

    def elapsed_s(self) -> float:
        return time.time() - self.start

    def images_per_s(self) -> float | None:
        return round(self.images_seen / self.train_s, 2) if self.train_s else None


# =============================================================================================
# Building them, in the order `train` does.
def retain_freed_memory() -> bool:
    """CPU training on glibc: keep the memory a step frees for the next step. By default glibc
    gives large blocks back to the OS (a moving mmap threshold, heap trimming) and the next step
    page-faults them in again: bench/train_step.py counted up to 33,000 faults per step at
    128 px (0 with this), and demo epochs ran ~7% faster with this (interleaved A/B). Blocks
    over 32 MiB still go to mmap. False (and nothing changed) where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(
            libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: trim only above 1 GiB of free top
            and libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: fixed at 32 MiB
        )
    except (OSError, AttributeError):
        return False


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:
        torch.backends.cudnn.benchmark = True


def load_data(cfg: DictConfig) -> TrainData:
    """The fold's datasets (folds.csv is made once per data folder) and the batching: per-device
    batches that give the same global batch on any number of devices."""
    tc = cfg.trainer
    competition = load_competition(cfg)
    competition.require_data()
    samples = competition.train_samples()
    require_clean_data(competition, samples, "train")  # before the folds and the first epoch
    n_folds, folds_seed = int(cfg.competition.n_folds), int(cfg.competition.folds_seed)
    if str(cfg.fold) == "all":  # a full-data model: no validation fold
        train_samples, val_samples = list(samples), []
    else:
        folds_csv = competition.data_dir / "folds.csv"
        folds = load_or_make_folds(samples, folds_csv, n_folds, folds_seed)
        train_samples, val_samples = split_samples(samples, folds, int(cfg.fold))
    if tc.get("limit_val_images"):  # debug: one short validation pass
        val_samples = val_samples[: int(tc.limit_val_images)]
    size = cfg.competition.image_size
    # The task's dataset: masks, or label vectors (podium.classify).
    dataset = ClassificationDataset if competition.task == "classification" else SegmentationDataset
    train_transform = build_transforms(cfg.augment, size, train=True)
    train_set = dataset(competition, train_samples, train_transform, seed=int(cfg.seed))
    val_transform = build_transforms(cfg.augment, size, train=False)
    val_set = dataset(competition, val_samples, val_transform)
    workers = resolve_num_workers(tc.num_workers, processes=dist.local_world_size())
    batch_size, accumulate = int(tc.batch_size), int(tc.accumulate)
    steps_per_epoch = len(train_set) // (batch_size * dist.world_size())
    if tc.limit_train_batches:
        steps_per_epoch = min(steps_per_epoch, int(tc.limit_train_batches))
    if steps_per_epoch < accumulate:
        raise PodiumError(
            f"trainer.batch_size={batch_size}: {len(train_set)} training images give "
            f"{steps_per_epoch} batches per epoch per device; lower it"
        )
    data = TrainData(
        competition, train_set, val_set, batch_size, accumulate, workers, steps_per_epoch
    )
    if cfg.get("pseudo"):  # pseudo-labelled images join the training part only
        data.train_set, data.pseudo, data.epoch_order = mixed_training_set(
            cfg.pseudo, train_set, val_samples, train_transform, int(cfg.seed), batch_size,
            float(cfg.pseudo_ratio), dist.world_size(), steps_per_epoch,
        )  # fmt: skip
    return data


def build_train_state(cfg: DictConfig, data: TrainData, compute: Compute) -> TrainState:
    """The model on its device (with synced BatchNorm if asked), its EMA and DDP wrapper, the
    optimizer, LR schedule, gradient scaler and loss."""
    tc = cfg.trainer
    model = build_network(cfg, data.competition)
    model = model.to(device=compute.device, memory_format=compute.memory_format)
    if tc.sync_batchnorm and dist.world_size() > 1:
        model = dist.convert_sync_batchnorm(model)
    ema_updates = [0]  # Python-side counter: the decay ramp must not sync with the GPU
    ema = make_ema(model, tc.ema, tc.ema_warmup, ema_updates) if tc.ema else None
    train_model = model
    if dist.world_size() > 1:
        cuda = compute.device.type == "cuda"
        train_model = DistributedDataParallel(
            model,
            device_ids=[compute.device.index] if cuda else None,
            find_unused_parameters=bool(tc.find_unused_parameters),
        )
    if tc.get("compile"):
        # Only the training forward is compiled: `model` (and the EMA, a copy of it) stay plain
        # modules, so checkpoints, validation and prediction never see `_orig_mod.` keys.
        train_model = torch.compile(train_model)
    optimizer = build_optimizer(cfg.optimizer, model)
    # From this config also on resume (a checkpoint keeps the scheduler's step count, not this
    # function), so a run resumed with a larger trainer.max_epochs gets the longer schedule.
    per_epoch = data.optimizer_steps_per_epoch
    schedule = lr_schedule(cfg.scheduler, max(1, per_epoch * int(tc.max_epochs)), per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=schedule)
    scaler = torch.amp.GradScaler(compute.device.type, enabled=compute.precision == "fp16")
    if data.competition.task == "classification":
        loss_fn = build_classification_loss(cfg.loss, data.competition.multi_label)
    else:
        loss_fn = build_loss(cfg.loss, data.competition.task)
    if data.pseudo is not None:
        loss_fn = MixedLoss(loss_fn, float(cfg.pseudo_weight))
    if getattr(model, "has_empty_head", False):  # outermost: it splits the model's output
        loss_fn = EmptyHeadLoss(loss_fn, float(cfg.loss.get("aux_weight", 0.5)))
    return TrainState(
        model, train_model, ema, ema_updates, optimizer, scheduler, scaler, loss_fn, compute
    )


def build_network(cfg: DictConfig, competition: Competition) -> torch.nn.Module:
    """The task's model: a segmentation network (podium.models), or an image classifier
    (podium.classify.model) for `task: classification`."""
    outputs, channels = competition.num_outputs, int(cfg.competition.in_channels)
    if cfg.model.arch == CLASSIFIER_ARCH:
        return build_classifier(cfg.model, outputs, channels)
    return build_model(cfg.model, outputs, channels)


def make_ema(model: torch.nn.Module, decay: float, warmup: bool, counter: list[int]):
    """An exponential moving average of the weights (and BN buffers) via torch's AveragedModel.
    With warm-up the decay ramps as min(decay, (1 + n) / (10 + n)) over the first updates."""
    decay = float(decay)

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], _n) -> None:
        if not averaged[0].is_floating_point():  # e.g. BatchNorm's num_batches_tracked
            torch._foreach_copy_(averaged, current)
            return
        n = counter[0]
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        torch._foreach_lerp_(averaged, current, 1.0 - d)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    # No weight decay on biases and normalisation weights (1-d tensors), as is standard.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": float(cfg.weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=float(cfg.lr), betas=tuple(cfg.betas))
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=float(cfg.lr), momentum=float(cfg.momentum), nesterov=bool(cfg.nesterov)
        )
    raise PodiumError(f"optimizer.name={cfg.name}: unknown (adamw | sgd)")


def lr_schedule(cfg: DictConfig, total_steps: int, steps_per_epoch: int):
    """LR multiplier per optimizer step: linear warm-up, then cosine / poly / constant."""
    warmup = int(float(cfg.warmup_epochs) * steps_per_epoch)
    floor = float(cfg.min_lr_ratio)
    name = cfg.name
    if name not in ("cosine", "poly", "constant"):
        raise PodiumError(f"scheduler.name={name}: unknown (cosine | poly | constant)")
    power = float(cfg.get("power", 0.9))

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if name == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if name == "poly":
            return max(floor, (1 - progress) ** power)
        return 1.0

    return multiplier


# =============================================================================================
# Checkpoints of a TrainState.
def make_checkpoint(run: TrainState, cfg: DictConfig) -> dict:
    """Everything a resume needs, as tensors and plain data only (lists, dicts, numbers,
    strings): it loads with `torch.load(weights_only=True)`, which runs no code."""
    return {
        "model": run.model.state_dict(),
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": {
            "python": _python_rng_state(),
            "numpy": _numpy_rng_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        "state": dataclasses.asdict(run.progress),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "podium_version": podium.__version__,
    }


def restore_checkpoint(path: Path, run: TrainState) -> None:
    """Load a `make_checkpoint` file into `run`, the RNG states included."""
    checkpoint = load_checkpoint(path, map_location=run.compute.device)
    run.model.load_state_dict(strip_compile_prefix(checkpoint["model"]))
    if run.ema is not None and checkpoint["ema"] is not None:
        run.ema.load_state_dict(strip_compile_prefix(checkpoint["ema"]))
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    run.scaler.load_state_dict(checkpoint["scaler"])
    rng = checkpoint["rng"]
    _set_python_rng_state(rng["python"])
    _set_numpy_rng_state(rng["numpy"])
    torch.set_rng_state(rng["torch"].cpu())
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    run.progress = Progress(**checkpoint["state"])
    run.ema_updates[0] = run.progress.step


# Python's and numpy's generator states as plain data. Older podium checkpoints kept the objects
# the getters return (tuples; numpy's holds an ndarray): both forms restore.
def _python_rng_state() -> dict:
    version, internal, gauss = random.getstate()
    return {"version": version, "state": list(internal), "gauss": gauss}


def _set_python_rng_state(state: dict | tuple) -> None:
    if isinstance(state, dict):
        state = (state["version"], tuple(state["state"]), state["gauss"])
    random.setstate(state)


def _numpy_rng_state() -> dict:
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "key": key.tolist(), "pos": pos, "has_gauss": has_gauss, "gauss": gauss}


def _set_numpy_rng_state(state: dict | tuple) -> None:
    if isinstance(state, dict):
        key = np.asarray(state["key"], dtype=np.uint32)
        state = (state["name"], key, state["pos"], state["has_gauss"], state["gauss"])
    np.random.set_state(state)


def estimate_checkpoint_bytes(run: TrainState) -> int:
    """What `make_checkpoint` will write, before the first optimizer step has made the
    optimizer's state: the weights, the EMA's, and the optimizer's per-parameter buffers
    (Adam keeps two per parameter, SGD with momentum one), plus room for the rest."""
    tensors = [*run.model.state_dict().values()]
    if run.ema is not None:
        tensors += [*run.ema.state_dict().values()]
    weights = sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    trainable = sum(p.numel() * p.element_size() for p in run.model.parameters())
    optimizer = run.optimizer
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        slots = 2
    else:
        slots = int(any(g.get("momentum") for g in optimizer.param_groups))
    return weights + slots * trainable + (1 << 20)
