"""The training loop: `train`, from data to checkpoints, read top to bottom.

It runs unchanged in one process (CPU or GPU) and as one worker of a torch.distributed job:
rank-dependent work goes through `podium.distributed`, and `podium.launch` starts the processes.

The run directory (decided by podium.launch, before any worker starts) and its files:
`podium.rundir`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

import podium
from podium import distributed as dist
from podium import rundir, runlock
from podium.classify.training import validate_classifier
from podium.config import config_hash
from podium.data import (
    SegmentationDataset,
    make_loader,
    resolve_num_workers,
)
from podium.io import PodiumError
from podium.models import (
    autocast,
    binarize,
    join_output,
    probabilities,
    resolve_device,
    split_output,
    to_input,
)
from podium.pseudo_data import batch_extras
from podium.run_state import (
    Clock,
    Compute,
    Progress,
    TrainData,
    TrainState,
    build_train_state,
    estimate_checkpoint_bytes,
    load_data,
    make_checkpoint,
    restore_checkpoint,
    retain_freed_memory,
    seed_everything,
)
from podium.rundir import quantize, save_checkpoint

log = logging.getLogger(__name__)

__all__ = ["train", "validate", "TrainHooks"]

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


@dataclass
class TrainHooks:
    """What a caller adds to a run (podium.search's trials). `after_validation(epoch, score,
    last)` runs on rank 0 once a validated epoch is checkpointed and in metrics.csv (epoch
    counts from 1; `last`: no epoch follows); True stops the run there, recorded as "pruned".
    `summary`: fields added to summary.json and the ledger record."""

    after_validation: Callable[[int, float, bool], bool] | None = None
    summary: dict = field(default_factory=dict)


# =============================================================================================
def train(cfg: DictConfig, run_dir: Path, hooks: TrainHooks | None = None) -> dict:
    """Train `cfg` into `run_dir` (resuming from `run_dir/checkpoints/last.pt` when
    `cfg.resume` is set). Returns the summary written to summary.json."""
    hooks = hooks or TrainHooks()
    clock = Clock()
    tc = cfg.trainer
    device = resolve_device(tc.cpu_threads, dist.local_world_size())
    if device.type == "cpu":
        retain_freed_memory()
    seed_everything(int(cfg.seed), deterministic=bool(tc.deterministic))
    # Rank 0 holds the run while it trains, and first clears what a killed process left in it.
    with runlock.claim_run(run_dir) if dist.is_main() else contextlib.nullcontext():
        # -- data; model, EMA, optimizer, schedule, loss: fresh or from the last checkpoint ---
        data = load_data(cfg)
        run = build_train_state(cfg, data, Compute.for_trainer(tc, device))
        if cfg.resume:
            resume(run, run_dir, cfg)
        records = None
        if dist.is_main():
            # Before the first epoch: a checkpoint that cannot fit would lose it.
            rundir.check_checkpoint_space(run_dir, estimate_checkpoint_bytes(run))
            records = RunLog(run_dir, cfg, run.progress.step, clock, hooks.summary)
            records.start(data, run.compute)
        status = train_epochs(run, data, cfg, run_dir, records, clock, hooks)
        summary = {**run_summary(cfg, run_dir, run, data, status, clock), **hooks.summary}
        if dist.is_main():
            records.finish(summary)
    return summary


def train_epochs(
    run: TrainState,
    data: TrainData,
    cfg: DictConfig,
    run_dir: Path,
    records: RunLog | None,
    clock: Clock,
    hooks: TrainHooks,
) -> str:
    """The loop: train an epoch, validate, checkpoint, stop early (or when `hooks` says so).
    Returns the run's status."""
    tc = cfg.trainer
    max_epochs = int(tc.max_epochs)
    classification = data.competition.task == "classification"
    validate_fold = validate_classifier if classification else validate
    for epoch in range(run.progress.epoch, max_epochs):
        train_loss, seconds = train_epoch(run, data, cfg, epoch, records)
        clock.count_epoch(seconds, data.images_per_epoch)
        result = None
        validates = (epoch + 1) % int(tc.val_every) == 0 or epoch + 1 == max_epochs
        if validates and not data.full_data:
            result = validate_fold(run.eval_model, data.val_set, run.loss_fn, run.compute, cfg)
        saved = dataclasses.replace(run.progress)  # what the checkpoints on disk hold
        improved = run.progress.end_epoch(result)
        if records is not None:  # rank 0
            try:
                save_epoch(run, data, cfg, run_dir, result, improved)
            except OSError as error:  # a full disk: the checkpoints before this one are intact
                raise records.fail(error, run, data, saved) from None
            # Only now: metrics.csv never claims an epoch that no checkpoint holds.
            records.epoch(run, train_loss, result, data.images_per_epoch / seconds)
        dist.barrier()
        if result is not None and hooks.after_validation is not None:
            last, epochs_done = epoch + 1 == max_epochs, run.progress.epoch
            stop = dist.is_main() and hooks.after_validation(epochs_done, result["score"], last)
            if dist.broadcast_object(stop):  # every rank stops together
                if dist.is_main():
                    log.info("stopped after epoch %d: pruned", run.progress.epoch)
                return "pruned"
        if tc.early_stopping and run.progress.stale_epochs >= int(tc.early_stopping):
            if dist.is_main():
                stale = run.progress.stale_epochs
                log.info("early stopping: %d epochs without improvement", stale)
            return "early_stopped"
    return "finished"


def save_epoch(
    run: TrainState,
    data: TrainData,
    cfg: DictConfig,
    run_dir: Path,
    result: dict | None,
    improved: bool,
) -> None:
    """The epoch's checkpoints (best.pt and oof.npz when it scored best, then last.pt). A
    full-data run (fold=all) has no score to choose by: its model is the last epoch's, which
    best.pt also holds, so every consumer of runs (predict, tune, export) takes it as is."""
    checkpoint = make_checkpoint(run, cfg)
    if improved or data.full_data:
        save_checkpoint(checkpoint, rundir.checkpoint_path(run_dir, "best"))
        if improved and cfg.trainer.save_oof:
            ids = [s.id for s in data.val_set.samples]
            rundir.write_oof(run_dir, ids, result["probs"], result["masks"], result["nonempty"])
    # A kill after this resumes here.
    save_checkpoint(checkpoint, rundir.checkpoint_path(run_dir, "last"))


def resume(run: TrainState, run_dir: Path, cfg: DictConfig) -> None:
    """Continue from `run_dir`'s last checkpoint: weights, EMA, optimizer, scheduler, scaler,
    RNG states and progress."""
    last = rundir.checkpoint_path(run_dir, "last")
    if not last.is_file():
        raise PodiumError(f"resume={cfg.resume}: no checkpoints/last.pt there to resume from")
    restore_checkpoint(last, run)
    log.info("resumed %s at epoch %d", run_dir, run.progress.epoch)


class RunLog:
    """Rank 0's records of a run as it goes: metrics.csv, TensorBoard events, log lines, and at
    the end summary.json and the ledger."""

    def __init__(
        self, run_dir: Path, cfg: DictConfig, step: int, clock: Clock, extra: dict | None = None
    ):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir, self.cfg, self.clock = run_dir, cfg, clock
        self.extra = extra or {}  # fields every summary of this run carries (TrainHooks.summary)
        # A resumed run drops the events logged after its checkpoint.
        tb = run_dir / rundir.TENSORBOARD
        self.writer = SummaryWriter(log_dir=str(tb), purge_step=step or None)

    def start(self, data: TrainData, compute: Compute) -> None:
        images = f"{len(data.train_set.samples)} train / {len(data.val_set)} val images"
        if data.pseudo is not None:
            images += f" (+{len(data.pseudo.kept)} pseudo-labelled train images)"
        devices = f"{data.batch_size} x {dist.world_size()} devices x {data.accumulate} accum"
        batch = f"global batch {data.global_batch} ({devices})"
        run = f"{data.competition.name} fold {self.cfg.fold}"
        log.info("%s: %s, %s, %s, %s", run, images, batch, compute.device, compute.precision)
        if data.pseudo is not None:
            pseudo, cfg = data.pseudo, self.cfg
            log.info(
                "pseudo-labels: round %d from %s, %d of %d images kept (%s); ratio %s per "
                "batch, loss weight %s", pseudo.round, pseudo.folder, pseudo.manifest["kept"],
                pseudo.manifest["total"], pseudo.manifest["rule"], cfg.pseudo_ratio,
                cfg.pseudo_weight,
            )  # fmt: skip
        if data.full_data:
            epochs = int(self.cfg.trainer.max_epochs)
            log.info("fold=all: a full-data model, %d epochs, no validation score", epochs)

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
        rundir.append_metrics(self.run_dir, row, METRICS_COLUMNS)
        self.writer.add_scalar("train/epoch_loss", train_loss, epoch)
        if result:
            self.writer.add_scalar("val/loss", result["loss"], epoch)
            self.writer.add_scalar(f"val/{metric}", result["score"], epoch)
            scores = f"val loss {result['loss']:.4f}, val {metric} {result['score']:.4f}"
            best = " (best)" if run.progress.best_epoch == epoch else ""
            log.info("epoch %d: train loss %.4f, %s%s", epoch, train_loss, scores, best)
        self.writer.flush()

    def fail(
        self, error: OSError, run: TrainState, data: TrainData, saved: Progress
    ) -> PodiumError:
        """A checkpoint could not be saved: summary.json and the ledger say the run failed and
        why, counting only the epochs its checkpoints hold (`saved`). Returns the error."""
        folder = rundir.checkpoint_path(self.run_dir, "last").parent
        cause = f"{error.strerror or error}, {rundir.free_bytes(folder) / 2**20:.1f} MB free"
        reason = f"{folder}: cannot save the checkpoint of epoch {run.progress.epoch} ({cause})"
        summary = run_summary(self.cfg, self.run_dir, run, data, "failed", self.clock, saved)
        try:
            self.finish({**summary, "error": reason})
        except OSError as e:
            log.warning("%s: the failure is not recorded (%s)", self.run_dir, e.strerror or e)
        if saved.epoch:
            kept = f"checkpoints/last.pt still holds epoch {saved.epoch}: make room, then resume"
        else:
            kept = "no epoch was saved: make room and train again"
        return PodiumError(f"{reason}; the run is marked failed, {kept}")

    def finish(self, summary: dict) -> None:
        """Write summary.json (across resumes the run's own totals add up: `summary` is updated
        with them) and record the run in the ledger."""
        from podium import ledger

        summary.update(self.extra)
        before = rundir.read_summary(self.run_dir) if self.cfg.resume else None
        if before:
            summary["duration_s"] = round(before.get("duration_s", 0) + summary["duration_s"], 1)
            summary["images_seen"] += before.get("images_seen", 0)
        rundir.write_summary(self.run_dir, summary)
        self.writer.close()
        ledger_file = ledger.ledger_path(self.cfg.paths.runs_dir, summary["competition"])
        ledger.record_run(ledger_file, summary)


def train_epoch(
    run: TrainState, data: TrainData, cfg: DictConfig, epoch: int, records: RunLog | None
) -> tuple[float, float]:
    """One epoch of optimizer steps. Returns (mean training loss over all ranks, seconds)."""
    tc = cfg.trainer
    data.train_set.set_epoch(epoch)
    order = data.epoch_order(int(cfg.seed), epoch) if data.epoch_order else None
    loader = train_loader(
        data.train_set, data.batch_size, data.workers, int(cfg.seed), epoch, order
    )
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
    # The target: masks, or label vectors for a classification task.
    masks = batch["labels" if "labels" in batch else "mask"].to(device, non_blocking=True)
    extras = batch_extras(batch, device)  # pseudo-labels: which images, soft targets, weights
    # Under DDP, only the last micro-batch of an accumulation all-reduces gradients
    # (no_sync must hold over both the forward and the backward pass).
    skip_sync = dist.world_size() > 1 and not sync_gradients
    with run.train_model.no_sync() if skip_sync else contextlib.nullcontext():
        with autocast(device, precision):
            loss = run.loss_fn(ddp_forward(run.train_model, images), masks, **extras)
            loss = loss / accumulate
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


def train_loader(
    dataset, batch_size: int, workers: int, seed: int, epoch: int, order: list[int] | None = None
):
    """The epoch's loader: order depends only on (seed, epoch), so resuming replays it exactly
    (`order`: the dataset's own for this epoch, e.g. batches mixing pseudo-labels in).

    One permutation per epoch, dealt round-robin to the ranks (DistributedSampler's scheme, with
    drop_last): rank r takes positions r, r+W, ... So the W per-device batches of a step are
    exactly the global batch a single process with batch_size * W would draw, whatever W is."""
    if order is None:
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
    """The training forward pass; DDP's unused-parameter failure, and a torch.compile that
    cannot build its kernels here, become a one-line fix."""
    try:
        return model(images)
    except RuntimeError as e:
        if _is_compile_failure(e):
            cause = getattr(e, "inner_exception", None) or e  # what the compiler raised
            lines = str(cause).strip().splitlines() or [""]
            raise PodiumError(
                f"trainer.compile=true: torch.compile cannot compile the model on this machine "
                f"({type(cause).__name__}: {lines[0][:200]}); set trainer.compile=false"
            ) from None
        if "find_unused_parameters" not in str(e):
            raise
        raise PodiumError(
            "the model has parameters that get no gradient (e.g. encoder stages beyond "
            "model.kwargs.encoder_depth), which DDP cannot reduce: set "
            "trainer.find_unused_parameters=true"
        ) from None


def _is_compile_failure(error: BaseException) -> bool:
    """Whether `error` comes from torch.compile's compiler (a missing C compiler, Triton...)."""
    from torch._dynamo.exc import BackendCompilerFailed  # here: importing Dynamo takes a while

    return isinstance(error, BackendCompilerFailed)


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
    # (dataset index, score, loss), (dataset index, probs uint8, mask, P(not empty) or None)
    scores, arrays = [], []
    for batch in loader:
        images = to_input(batch["image"], model, device, compute.memory_format)
        with autocast(device, compute.precision):
            logits, nonempty = split_output(model(images))
        logits = logits.float()
        nonempty = None if nonempty is None else nonempty.float()
        masks = batch["mask"]
        probs = probabilities(logits, task).cpu().numpy()
        nonempty_probs = None if nonempty is None else nonempty.sigmoid().cpu().numpy()
        pairs = zip(batch["index"].tolist(), batch["sizes"].tolist(), strict=True)
        for j, (index, (h, w)) in enumerate(pairs):
            p = probs[j, :, :h, :w]
            target = masks[j, ..., :h, :w].numpy()
            output = join_output(
                logits[j : j + 1, :, :h, :w], None if nonempty is None else nonempty[j : j + 1]
            )
            loss = float(loss_fn(output, masks[j : j + 1, ..., :h, :w].to(device)))
            truth = target[0] if task == "binary" else target
            score = competition.score_image(binarize(p, task, threshold), truth)
            scores.append((index, score, loss))
            present = None if nonempty_probs is None else float(nonempty_probs[j])
            arrays.append((index, quantize(p), target.astype(np.uint8), present))
    return dist.gather_validation(scores, arrays, len(dataset))


def run_summary(
    cfg: DictConfig,
    run_dir: Path,
    run: TrainState,
    data: TrainData,
    status: str,
    clock: Clock,
    progress: Progress | None = None,
) -> dict:
    """The run's facts for summary.json, the ledger and write-ups (`progress`: how far it got,
    by default `run.progress`)."""
    progress, weights = progress or run.progress, cfg.model.encoder_weights
    return {
        "competition": data.competition.name,
        "experiment_name": cfg.experiment_name,
        "fold": "all" if data.full_data else int(cfg.fold),
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
        # fold=all: a full-data model, no validation score; its model is the last epoch's.
        "full_data": data.full_data,
        "pseudo": None
        if data.pseudo is None
        else data.pseudo.record(float(cfg.pseudo_weight), float(cfg.pseudo_ratio)),
    }


def git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    command = ["git", "rev-parse", "HEAD"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=5, cwd=here)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
