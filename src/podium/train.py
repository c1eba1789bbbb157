"""The training loop: `train`, from data to checkpoints, read top to bottom.

It runs unchanged in one process (CPU or GPU) and as one worker of a torch.distributed job:
rank-dependent work goes through `podium.distributed`, and `podium.launch` starts the processes.

Run directory (decided by podium.launch, before any worker starts):
    config.yaml            resolved config
    checkpoints/last.pt    everything needed to resume (model, EMA, optimizer, scheduler, scaler,
    checkpoints/best.pt      RNG states, epoch, early-stopping state); best = best validation score
    metrics.csv            one row per epoch
    tb/                    TensorBoard events
    oof.npz                out-of-fold probabilities of the best epoch (for tuning and ensembling)
    summary.json           the run's facts for the ledger and write-ups
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import math
import os
import random
import subprocess
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

import podium
from podium import distributed as dist
from podium import io
from podium.competition import Competition, load_competition
from podium.config import config_hash
from podium.data import (
    SegmentationDataset,
    build_transforms,
    load_or_make_folds,
    make_loader,
    resolve_num_workers,
    split_samples,
)
from podium.io import PodiumError
from podium.losses import build_loss
from podium.models import (
    autocast,
    binarize,
    build_model,
    probabilities,
    resolve_device,
    resolve_precision,
    to_input,
)

log = logging.getLogger(__name__)

__all__ = ["train", "Compute", "TrainData", "Progress", "TrainState", "validate", "write_oof"]

METRICS_COLUMNS = [
    "epoch",
    "step",
    "lr",
    "train_loss",
    "val_loss",
    "val_score",
    "images_per_s",
    "elapsed_s",
]


# =============================================================================================
def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train `cfg` into `run_dir` (resuming from `run_dir/checkpoints/last.pt` when
    `cfg.resume` is set). Returns the summary written to summary.json."""
    clock = Clock()
    tc = cfg.trainer
    device = resolve_device()
    if device.type == "cpu":
        retain_freed_memory()
    seed_everything(int(cfg.seed), deterministic=bool(tc.deterministic))

    # -- data; model, EMA, optimizer, schedule, loss: fresh or from the last checkpoint -------
    data = load_data(cfg)
    run = build_train_state(cfg, data, Compute.for_trainer(tc, device))
    if cfg.resume:
        resume(run, run_dir, cfg)
    records = RunLog(run_dir, cfg, run.progress.step, clock) if dist.is_main() else None
    if dist.is_main():
        records.start(data, run.compute)

    # -- the loop: train an epoch, validate, checkpoint, stop early ---------------------------
    max_epochs, status, checkpoints = int(tc.max_epochs), "finished", run_dir / "checkpoints"
    for epoch in range(run.progress.epoch, max_epochs):
        train_loss, seconds = train_epoch(run, data, cfg, epoch, records)
        clock.count_epoch(seconds, data.images_per_epoch)
        result = None
        if (epoch + 1) % int(tc.val_every) == 0 or epoch + 1 == max_epochs:
            result = validate(run.eval_model, data.val_set, run.loss_fn, run.compute, cfg)
        improved = run.progress.end_epoch(result)
        if dist.is_main():
            records.epoch(run, train_loss, result, data.images_per_epoch / seconds)
            checkpoint = make_checkpoint(run, cfg)
            if improved:
                save_checkpoint(checkpoint, checkpoints / "best.pt")
                if tc.save_oof:
                    oof = (result["probs"], result["masks"])
                    write_oof(run_dir / "oof.npz", data.val_set.samples, *oof)
            save_checkpoint(checkpoint, checkpoints / "last.pt")  # a kill after this resumes here
        dist.barrier()
        if tc.early_stopping and run.progress.stale_epochs >= int(tc.early_stopping):
            status = "early_stopped"
            if dist.is_main():
                stale = run.progress.stale_epochs
                log.info("early stopping: %d epochs without improvement", stale)
            break

    summary = run_summary(cfg, run_dir, run, data, status, clock)
    if dist.is_main():
        records.finish(summary)
    return summary


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

    model: torch.nn.Module
    train_model: torch.nn.Module  # `model`, or its DDP wrapper: the training forward pass
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
# The pieces `train` uses, in the order it uses them.
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
    n_folds, folds_seed = int(cfg.competition.n_folds), int(cfg.competition.folds_seed)
    folds = load_or_make_folds(samples, competition.data_dir / "folds.csv", n_folds, folds_seed)
    train_samples, val_samples = split_samples(samples, folds, int(cfg.fold))
    size = cfg.competition.image_size
    train_transform = build_transforms(cfg.augment, size, train=True)
    train_set = SegmentationDataset(competition, train_samples, train_transform, seed=int(cfg.seed))
    val_transform = build_transforms(cfg.augment, size, train=False)
    val_set = SegmentationDataset(competition, val_samples, val_transform)
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
    return TrainData(
        competition, train_set, val_set, batch_size, accumulate, workers, steps_per_epoch
    )


def build_train_state(cfg: DictConfig, data: TrainData, compute: Compute) -> TrainState:
    """The model on its device (with synced BatchNorm if asked), its EMA and DDP wrapper, the
    optimizer, LR schedule, gradient scaler and loss."""
    tc = cfg.trainer
    model = build_model(cfg.model, data.competition.num_outputs, int(cfg.competition.in_channels))
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
    optimizer = build_optimizer(cfg.optimizer, model)
    # From this config also on resume (a checkpoint keeps the scheduler's step count, not this
    # function), so a run resumed with a larger trainer.max_epochs gets the longer schedule.
    per_epoch = data.optimizer_steps_per_epoch
    schedule = lr_schedule(cfg.scheduler, max(1, per_epoch * int(tc.max_epochs)), per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=schedule)
    scaler = torch.amp.GradScaler(compute.device.type, enabled=compute.precision == "fp16")
    loss_fn = build_loss(cfg.loss, data.competition.task)
    return TrainState(
        model, train_model, ema, ema_updates, optimizer, scheduler, scaler, loss_fn, compute
    )


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


def resume(run: TrainState, run_dir: Path, cfg: DictConfig) -> None:
    """Continue from `run_dir`'s last checkpoint: weights, EMA, optimizer, scheduler, scaler,
    RNG states and progress."""
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        raise PodiumError(f"resume={cfg.resume}: no checkpoints/last.pt there to resume from")
    restore_checkpoint(last, run)
    log.info("resumed %s at epoch %d", run_dir, run.progress.epoch)


class RunLog:
    """Rank 0's records of a run as it goes: metrics.csv, TensorBoard events, log lines, and at
    the end summary.json and the ledger."""

    def __init__(self, run_dir: Path, cfg: DictConfig, step: int, clock: Clock):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir, self.cfg, self.clock = run_dir, cfg, clock
        # A resumed run drops the events logged after its checkpoint.
        self.writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=step or None)

    def start(self, data: TrainData, compute: Compute) -> None:
        images = f"{len(data.train_set)} train / {len(data.val_set)} val images"
        devices = f"{data.batch_size} x {dist.world_size()} devices x {data.accumulate} accum"
        batch = f"global batch {data.global_batch} ({devices})"
        run = f"{data.competition.name} fold {self.cfg.fold}"
        log.info("%s: %s, %s, %s, %s", run, images, batch, compute.device, compute.precision)

    def train_step(self, run: TrainState, loss: float) -> None:
        self.writer.add_scalar("train/loss", loss, run.progress.step)
        self.writer.add_scalar("train/lr", run.scheduler.get_last_lr()[0], run.progress.step)

    def epoch(
        self, run: TrainState, train_loss: float, result: dict | None, images_per_s: float
    ) -> None:
        """The epoch just ended (`run.progress.epoch`), with its validation `result` if any."""
        epoch, metric = run.progress.epoch, self.cfg.competition.metric
        row = {
            "epoch": epoch,
            "step": run.progress.step,
            "lr": f"{run.scheduler.get_last_lr()[0]:.6g}",
            "train_loss": f"{train_loss:.6f}",
            "val_loss": f"{result['loss']:.6f}" if result else "",
            "val_score": f"{result['score']:.6f}" if result else "",
            "images_per_s": f"{images_per_s:.2f}",
            "elapsed_s": f"{self.clock.elapsed_s():.1f}",
        }
        append_metrics(self.run_dir / "metrics.csv", row)
        self.writer.add_scalar("train/epoch_loss", train_loss, epoch)
        if result:
            self.writer.add_scalar("val/loss", result["loss"], epoch)
            self.writer.add_scalar(f"val/{metric}", result["score"], epoch)
            scores = f"val loss {result['loss']:.4f}, val {metric} {result['score']:.4f}"
            best = " (best)" if run.progress.best_epoch == epoch else ""
            log.info("epoch %d: train loss %.4f, %s%s", epoch, train_loss, scores, best)
        self.writer.flush()

    def finish(self, summary: dict) -> None:
        """Write summary.json (across resumes the run's own totals add up: `summary` is updated
        with them) and record the run in the ledger."""
        from podium import ledger

        path = self.run_dir / "summary.json"
        if self.cfg.resume and path.is_file():
            before = io.read_json(path)
            summary["duration_s"] = round(before.get("duration_s", 0) + summary["duration_s"], 1)
            summary["images_seen"] += before.get("images_seen", 0)
        io.write_json(path, summary)
        self.writer.close()
        ledger_file = ledger.ledger_path(self.cfg.paths.runs_dir, summary["competition"])
        ledger.record_run(ledger_file, summary)


def train_epoch(
    run: TrainState, data: TrainData, cfg: DictConfig, epoch: int, records: RunLog | None
) -> tuple[float, float]:
    """One epoch of optimizer steps. Returns (mean training loss over all ranks, seconds)."""
    tc = cfg.trainer
    data.train_set.set_epoch(epoch)
    loader = train_loader(data.train_set, data.batch_size, data.workers, int(cfg.seed), epoch)
    run.train_model.train()
    t_epoch = time.time()
    running_loss = torch.zeros((), device=run.compute.device)
    show, desc = tc.progress and dist.is_main(), f"epoch {epoch + 1}/{int(tc.max_epochs)}"
    bar = tqdm(
        total=data.steps_per_epoch, desc=desc, leave=False, disable=not show, mininterval=1.0
    )
    batches = iter(loader)
    for micro in range(data.steps_per_epoch):
        last_micro = (micro + 1) % data.accumulate == 0
        loss = forward_backward(run, next(batches), data.accumulate, sync_gradients=last_micro)
        running_loss += loss.detach() * data.accumulate
        if last_micro:
            optimizer_step(run, tc.grad_clip)
            if records and run.progress.step % int(tc.log_every) == 0:
                records.train_step(run, loss.item() * data.accumulate)
        bar.update()
    bar.close()
    del batches, loader
    seconds = time.time() - t_epoch
    return float(dist.reduce_mean(running_loss / data.steps_per_epoch)), seconds


def forward_backward(
    run: TrainState, batch: dict, accumulate: int, sync_gradients: bool
) -> torch.Tensor:
    """One micro-batch: its loss (divided by `accumulate`), backpropagated into the gradients."""
    device, precision = run.compute.device, run.compute.precision
    images = to_input(batch["image"], run.model, device, run.compute.memory_format)
    masks = batch["mask"].to(device, non_blocking=True)
    # Under DDP, only the last micro-batch of an accumulation all-reduces gradients
    # (no_sync must hold over both the forward and the backward pass).
    skip_sync = dist.world_size() > 1 and not sync_gradients
    with run.train_model.no_sync() if skip_sync else contextlib.nullcontext():
        with autocast(device, precision):
            loss = run.loss_fn(ddp_forward(run.train_model, images), masks) / accumulate
        run.scaler.scale(loss).backward()
    return loss


def optimizer_step(run: TrainState, grad_clip: float | None) -> None:
    """Step on the accumulated gradients (clipped), then the LR schedule and the EMA."""
    if grad_clip:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), float(grad_clip))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    run.progress.step += 1
    if run.ema is not None:
        run.ema_updates[0] += 1
        run.ema.update_parameters(run.model)


def train_loader(dataset, batch_size: int, workers: int, seed: int, epoch: int):
    """The epoch's loader: order depends only on (seed, epoch), so resuming replays it exactly.

    One permutation per epoch, dealt round-robin to the ranks (DistributedSampler's scheme, with
    drop_last): rank r takes positions r, r+W, ... So the W per-device batches of a step are
    exactly the global batch a single process with batch_size * W would draw, whatever W is."""
    order = torch.randperm(len(dataset), generator=epoch_generator(seed, epoch)).tolist()
    world = dist.world_size()
    shard = order[dist.rank() : len(order) - len(order) % world : world]
    workers_seed = epoch_generator(seed, epoch)  # seeds the loader's worker processes
    return make_loader(
        dataset, batch_size, workers, sampler=shard, drop_last=True, generator=workers_seed
    )


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def ddp_forward(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The training forward pass; DDP's unused-parameter failure becomes a one-line fix."""
    try:
        return model(images)
    except RuntimeError as e:
        if "find_unused_parameters" not in str(e):
            raise
        raise PodiumError(
            "the model has parameters that get no gradient (e.g. encoder stages beyond "
            "model.kwargs.encoder_depth), which DDP cannot reduce: set "
            "trainer.find_unused_parameters=true"
        ) from None


@torch.inference_mode()
def validate(
    model: torch.nn.Module,
    dataset: SegmentationDataset,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    compute: Compute,
    cfg: DictConfig,
) -> dict:
    """Score every validation image exactly once across ranks (rank r takes images r, r+W, ...,
    no padding duplicates) with the metric of the dataset's competition. Per-image scores and
    losses are gathered on every rank (each needs the score for best/early stopping), so the
    result equals a single process's on the same weights; probabilities and masks (for oof.npz)
    go to rank 0 only."""
    model.eval()
    # Each rank's BatchNorm running statistics follow its own batches (DDP hands rank 0's to the
    # others only at the next training forward): score with rank 0's, the ones checkpointed.
    dist.broadcast_buffers(model)
    indices = list(range(dist.rank(), len(dataset), dist.world_size()))
    subset = torch.utils.data.Subset(dataset, indices)
    workers = resolve_num_workers(cfg.trainer.num_workers, processes=dist.world_size())
    loader = make_loader(subset, int(cfg.trainer.batch_size), workers)
    device, competition = compute.device, dataset.competition
    threshold, task = float(cfg.trainer.threshold), competition.task
    scores, arrays = [], []  # (dataset index, score, loss), (dataset index, probs, mask) uint8
    for batch in loader:
        images = to_input(batch["image"], model, device, compute.memory_format)
        with autocast(device, compute.precision):
            logits = model(images)
        logits = logits.float()
        masks = batch["mask"]
        probs = probabilities(logits, task).cpu().numpy()
        pairs = zip(batch["index"].tolist(), batch["sizes"].tolist(), strict=True)
        for j, (index, (h, w)) in enumerate(pairs):
            p = probs[j, :, :h, :w]
            target = masks[j, ..., :h, :w].numpy()
            loss = float(
                loss_fn(logits[j : j + 1, :, :h, :w], masks[j : j + 1, ..., :h, :w].to(device))
            )
            truth = target[0] if task == "binary" else target
            score = competition.score_image(binarize(p, task, threshold), truth)
            scores.append((index, score, loss))
            arrays.append((index, quantize(p), target.astype(np.uint8)))
    gathered = sorted(item for part in dist.all_gather_objects(scores) for item in part)
    if [r[0] for r in gathered] != list(range(len(dataset))):
        raise RuntimeError(f"validation covered {len(gathered)} of {len(dataset)} images")
    parts = dist.gather_objects(arrays)  # None on ranks other than 0
    images = sorted((a for part in parts for a in part), key=lambda a: a[0]) if parts else []
    return {
        "score": float(np.mean([r[1] for r in gathered])),
        "loss": float(np.mean([r[2] for r in gathered])),
        "scores": [r[1] for r in gathered],
        "probs": [a[1] for a in images],
        "masks": [a[2] for a in images],
    }


def quantize(probs: np.ndarray) -> np.ndarray:
    """Probabilities as uint8 (p * 255, rounded): 4x smaller OOF files, error < 0.002."""
    return np.rint(probs * 255.0).astype(np.uint8)


def append_metrics(path: Path, row: dict) -> None:
    """Append one row to metrics.csv, rewriting it atomically (it is small)."""
    rows = io.read_csv_rows(path) if path.is_file() else []
    rows = [r for r in rows if int(r["epoch"]) < int(row["epoch"])] + [row]  # resumed epochs
    io.write_csv(path, rows, METRICS_COLUMNS)


def make_checkpoint(run: TrainState, cfg: DictConfig) -> dict:
    return {
        "model": run.model.state_dict(),
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        "state": dataclasses.asdict(run.progress),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "podium_version": podium.__version__,
    }


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    with io.atomic_write(path, "wb") as f:
        torch.save(checkpoint, f)


def restore_checkpoint(path: Path, run: TrainState) -> None:
    """Load a `make_checkpoint` file into `run`, the RNG states included."""
    checkpoint = torch.load(path, map_location=run.compute.device, weights_only=False)
    run.model.load_state_dict(checkpoint["model"])
    if run.ema is not None and checkpoint["ema"] is not None:
        run.ema.load_state_dict(checkpoint["ema"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    run.scaler.load_state_dict(checkpoint["scaler"])
    rng = checkpoint["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"].cpu())
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    run.progress = Progress(**checkpoint["state"])
    run.ema_updates[0] = run.progress.step


def write_oof(path: Path, samples, probs: list[np.ndarray], masks: list[np.ndarray]) -> None:
    """Out-of-fold predictions as an .npz: `ids`, and per image `prob_<i>` (uint8 CxHxW,
    p*255) and `mask_<i>` (the target at the same size). Streamed, then renamed into place."""
    with io.atomic_write(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        arrays = {"ids": np.array([s.id for s in samples])}
        for i, (p, m) in enumerate(zip(probs, masks, strict=True)):
            arrays[f"prob_{i}"], arrays[f"mask_{i}"] = p, m
        for name, array in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def run_summary(
    cfg: DictConfig, run_dir: Path, run: TrainState, data: TrainData, status: str, clock: Clock
) -> dict:
    """The run's facts for summary.json, the ledger and write-ups."""
    progress, weights = run.progress, cfg.model.encoder_weights
    return {
        "competition": data.competition.name,
        "experiment_name": cfg.experiment_name,
        "fold": int(cfg.fold),
        "seed": int(cfg.seed),
        "metric": cfg.competition.metric,
        "best_score": progress.best_score if progress.best_epoch > 0 else None,
        "best_epoch": progress.best_epoch,
        "epochs_run": progress.epoch,
        "status": status,
        "train_images_per_s": clock.images_per_s(),
        "images_seen": clock.images_seen,
        "duration_s": round(clock.elapsed_s(), 1),
        "arch": cfg.model.arch,
        "encoder": cfg.model.encoder,
        "encoder_weights": None if weights is None else str(weights),
        "loss": cfg.loss.name,
        "world_size": dist.world_size(),
        "global_batch": data.global_batch,
        "device": str(run.compute.device.type),
        "precision": run.compute.precision,
        # Without fold and seed: the same for every run of an experiment, which report checks.
        "config_hash": config_hash(cfg, replicates=False),
        "git_sha": git_sha(),
        "podium_version": podium.__version__,
        "run_dir": str(run_dir),
    }


def git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    command = ["git", "rev-parse", "HEAD"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=5, cwd=here)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
