"""The training loop: one readable function, `train`, from data to checkpoints.

It runs unchanged in one process (CPU or GPU) and as one worker of a torch.distributed job
(torchrun, or `trainer.devices=N`): rank-dependent work goes through `podium.distributed`.

Run directory (decided once, before any worker starts):
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
import logging
import math
import os
import random
import shutil
import subprocess
import time
import zipfile
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

__all__ = ["train", "main"]

METRICS_COLUMNS = [
    "epoch", "step", "lr", "train_loss", "val_loss", "val_score", "images_per_s", "elapsed_s",
]  # fmt: skip


# =============================================================================================
def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train `cfg` into `run_dir` (resuming from `run_dir/checkpoints/last.pt` when
    `cfg.resume` is set). Returns the summary written to summary.json."""
    t_start = time.time()
    tc = cfg.trainer
    device = resolve_device()
    if device.type == "cpu":
        retain_freed_memory()
    seed_everything(int(cfg.seed), deterministic=bool(tc.deterministic))
    world = dist.world_size()

    # -- data ---------------------------------------------------------------------------------
    competition = load_competition(cfg)
    competition.require_data()
    samples = competition.train_samples()
    folds = load_or_make_folds(
        samples, competition.data_dir / "folds.csv", int(cfg.competition.n_folds),
        int(cfg.competition.folds_seed),
    )  # fmt: skip
    train_samples, val_samples = split_samples(samples, folds, int(cfg.fold))
    image_size = cfg.competition.image_size
    train_set = SegmentationDataset(
        competition, train_samples, build_transforms(cfg.augment, image_size, train=True),
        seed=int(cfg.seed),
    )  # fmt: skip
    val_set = SegmentationDataset(
        competition, val_samples, build_transforms(cfg.augment, image_size, train=False)
    )
    workers = resolve_num_workers(tc.num_workers, processes=dist.local_world_size())
    batch_size, accumulate = int(tc.batch_size), int(tc.accumulate)
    steps_per_epoch = len(train_set) // (batch_size * world)
    if tc.limit_train_batches:
        steps_per_epoch = min(steps_per_epoch, int(tc.limit_train_batches))
    if steps_per_epoch < accumulate:
        raise PodiumError(
            f"trainer.batch_size={batch_size}: {len(train_set)} training images give "
            f"{steps_per_epoch} batches per epoch per device; lower it"
        )
    optimizer_steps_per_epoch = steps_per_epoch // accumulate

    # -- model, EMA, optimizer, schedule, loss ------------------------------------------------
    model = build_model(cfg.model, competition.num_outputs, int(cfg.competition.in_channels))
    memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    if tc.sync_batchnorm and world > 1:
        model = dist.convert_sync_batchnorm(model)
    ema_updates = [0]  # Python-side counter: the decay ramp must not sync with the GPU
    ema = make_ema(model, tc.ema, tc.ema_warmup, ema_updates) if tc.ema else None
    train_model = model
    if world > 1:
        train_model = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(tc.find_unused_parameters),
        )
    optimizer = build_optimizer(cfg.optimizer, model)
    total_steps = max(1, optimizer_steps_per_epoch * int(tc.max_epochs))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda=lr_schedule(cfg.scheduler, total_steps, optimizer_steps_per_epoch)
    )
    precision = resolve_precision(tc.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    loss_fn = build_loss(cfg.loss, competition.task)

    # -- state: fresh or resumed --------------------------------------------------------------
    state = {"epoch": 0, "step": 0, "best_score": -math.inf, "best_epoch": -1, "stale_epochs": 0}
    last_ckpt = run_dir / "checkpoints" / "last.pt"
    if cfg.resume:
        if not last_ckpt.is_file():
            raise PodiumError(f"resume={cfg.resume}: no checkpoints/last.pt there to resume from")
        state = restore_checkpoint(last_ckpt, model, ema, optimizer, scheduler, scaler, device)
        ema_updates[0] = state["step"]
        log.info("resumed %s at epoch %d", run_dir, state["epoch"])
        # A longer run gets a longer schedule: rebuild the LR lambda for the new total.
        scheduler.lr_lambdas[0] = lr_schedule(cfg.scheduler, total_steps, optimizer_steps_per_epoch)

    writer = None
    if dist.is_main():
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=state["step"] or None)
        log.info(
            "%s fold %d: %d train / %d val images, global batch %d (%d x %d devices x %d accum), "
            "%s, %s", competition.name, cfg.fold, len(train_set), len(val_set),
            batch_size * world * accumulate, batch_size, world, accumulate, device, precision,
        )  # fmt: skip

    # -- the loop -----------------------------------------------------------------------------
    images_seen, train_time = 0, 0.0
    max_epochs, status = int(tc.max_epochs), "finished"
    for epoch in range(state["epoch"], max_epochs):
        train_set.set_epoch(epoch)
        loader = train_loader(train_set, batch_size, workers, int(cfg.seed), epoch)
        train_model.train()
        t_epoch = time.time()
        running_loss = torch.zeros((), device=device)
        progress = tqdm(
            total=steps_per_epoch, desc=f"epoch {epoch + 1}/{max_epochs}", leave=False,
            disable=not (tc.progress and dist.is_main()), mininterval=1.0,
        )  # fmt: skip
        batches = iter(loader)
        for micro in range(steps_per_epoch):
            batch = next(batches)
            images = to_input(batch["image"], model, device, memory_format)
            masks = batch["mask"].to(device, non_blocking=True)
            last_micro = (micro + 1) % accumulate == 0
            # Under DDP, only the last micro-batch of an accumulation all-reduces gradients
            # (no_sync must hold over both the forward and the backward pass).
            sync = (
                train_model.no_sync()
                if (world > 1 and not last_micro)
                else contextlib.nullcontext()
            )
            with sync:
                with autocast(device, precision):
                    loss = loss_fn(ddp_forward(train_model, images), masks) / accumulate
                scaler.scale(loss).backward()
            running_loss += loss.detach() * accumulate
            if last_micro:
                if tc.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), float(tc.grad_clip))
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                state["step"] += 1
                if ema is not None:
                    ema_updates[0] += 1
                    ema.update_parameters(model)
                if writer and state["step"] % int(tc.log_every) == 0:
                    writer.add_scalar("train/loss", loss.item() * accumulate, state["step"])
                    writer.add_scalar("train/lr", scheduler.get_last_lr()[0], state["step"])
            progress.update()
        progress.close()
        del batches, loader
        epoch_time = time.time() - t_epoch
        train_time += epoch_time
        images_seen += steps_per_epoch * batch_size * world
        train_loss = float(dist.reduce_mean(running_loss / steps_per_epoch))

        # -- validation, checkpoints, logs ------------------------------------------------------
        eval_model = ema.module if ema is not None else model
        last_epoch = epoch + 1 == max_epochs
        validate_now = (epoch + 1) % int(tc.val_every) == 0 or last_epoch
        result = (
            validate(eval_model, val_set, competition, cfg, device, memory_format, loss_fn)
            if validate_now
            else None
        )
        state["epoch"] = epoch + 1
        improved = result is not None and result["score"] > state["best_score"]
        if improved:
            state.update(best_score=result["score"], best_epoch=epoch + 1, stale_epochs=0)
        elif result is not None:
            state["stale_epochs"] += 1
        if dist.is_main():
            row = {
                "epoch": epoch + 1,
                "step": state["step"],
                "lr": f"{scheduler.get_last_lr()[0]:.6g}",
                "train_loss": f"{train_loss:.6f}",
                "val_loss": f"{result['loss']:.6f}" if result else "",
                "val_score": f"{result['score']:.6f}" if result else "",
                "images_per_s": f"{steps_per_epoch * batch_size * world / epoch_time:.2f}",
                "elapsed_s": f"{time.time() - t_start:.1f}",
            }
            append_metrics(run_dir / "metrics.csv", row)
            writer.add_scalar("train/epoch_loss", train_loss, epoch + 1)
            if result:
                writer.add_scalar("val/loss", result["loss"], epoch + 1)
                writer.add_scalar(f"val/{cfg.competition.metric}", result["score"], epoch + 1)
                log.info(
                    "epoch %d: train loss %.4f, val loss %.4f, val %s %.4f%s", epoch + 1,
                    train_loss, result["loss"], cfg.competition.metric, result["score"],
                    " (best)" if improved else "",
                )  # fmt: skip
            writer.flush()
            checkpoint = make_checkpoint(model, ema, optimizer, scheduler, scaler, state, cfg)
            if improved:
                save_checkpoint(checkpoint, run_dir / "checkpoints" / "best.pt")
                if tc.save_oof:
                    write_oof(run_dir / "oof.npz", val_samples, result["probs"], result["masks"])
            save_checkpoint(checkpoint, last_ckpt)  # last: a kill after this resumes here
        dist.barrier()
        if tc.early_stopping and state["stale_epochs"] >= int(tc.early_stopping):
            status = "early_stopped"
            if dist.is_main():
                log.info("early stopping: %d epochs without improvement", state["stale_epochs"])
            break

    summary = {
        "competition": competition.name,
        "experiment_name": cfg.experiment_name,
        "fold": int(cfg.fold),
        "seed": int(cfg.seed),
        "metric": cfg.competition.metric,
        "best_score": state["best_score"] if state["best_epoch"] > 0 else None,
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "status": status,
        "train_images_per_s": round(images_seen / train_time, 2) if train_time else None,
        "images_seen": images_seen,
        "duration_s": round(time.time() - t_start, 1),
        "arch": cfg.model.arch,
        "encoder": cfg.model.encoder,
        "encoder_weights": None
        if cfg.model.encoder_weights is None
        else str(cfg.model.encoder_weights),
        "loss": cfg.loss.name,
        "world_size": world,
        "global_batch": batch_size * world * accumulate,
        "device": str(device.type),
        "precision": precision,
        # Without fold and seed: the same for every run of an experiment, which report checks.
        "config_hash": config_hash(cfg, replicates=False),
        "git_sha": git_sha(),
        "podium_version": podium.__version__,
        "run_dir": str(run_dir),
    }
    if dist.is_main():
        if cfg.resume and (run_dir / "summary.json").is_file():
            # Across resumes the run's own totals add up.
            before = io.read_json(run_dir / "summary.json")
            summary["duration_s"] = round(before.get("duration_s", 0) + summary["duration_s"], 1)
            summary["images_seen"] += before.get("images_seen", 0)
        io.write_json(run_dir / "summary.json", summary)
        writer.close()
        from podium import ledger

        ledger.record_run(ledger.ledger_path(cfg.paths.runs_dir, competition.name), summary)
    return summary


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


def train_loader(dataset, batch_size: int, workers: int, seed: int, epoch: int):
    """The epoch's loader: order depends only on (seed, epoch), so resuming replays it exactly.

    One permutation per epoch, dealt round-robin to the ranks (DistributedSampler's scheme, with
    drop_last): rank r takes positions r, r+W, ... So the W per-device batches of a step are
    exactly the global batch a single process with batch_size * W would draw, whatever W is."""
    order = torch.randperm(len(dataset), generator=epoch_generator(seed, epoch)).tolist()
    world = dist.world_size()
    shard = order[dist.rank() : len(order) - len(order) % world : world]
    return make_loader(
        dataset, batch_size, workers, sampler=shard, drop_last=True,
        generator=epoch_generator(seed, epoch),  # seeds the loader's worker processes
    )  # fmt: skip


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


@torch.inference_mode()
def validate(model, dataset, competition: Competition, cfg, device, memory_format, loss_fn):
    """Score every validation image exactly once across ranks (rank r takes images r, r+W, ...,
    no padding duplicates) with the competition metric. Per-image scores and losses are gathered
    on every rank (each needs the score for best/early stopping), so the result equals a single
    process's on the same weights; probabilities and masks (for oof.npz) go to rank 0 only."""
    model.eval()
    # Each rank's BatchNorm running statistics follow its own batches (DDP hands rank 0's to the
    # others only at the next training forward): score with rank 0's, the ones checkpointed.
    dist.broadcast_buffers(model)
    indices = list(range(dist.rank(), len(dataset), dist.world_size()))
    subset = torch.utils.data.Subset(dataset, indices)
    workers = resolve_num_workers(cfg.trainer.num_workers, processes=dist.world_size())
    loader = make_loader(subset, int(cfg.trainer.batch_size), workers)
    precision = resolve_precision(cfg.trainer.precision, device)
    threshold, task = float(cfg.trainer.threshold), competition.task
    scores, arrays = [], []  # (dataset index, score, loss), (dataset index, probs, mask) uint8
    for batch in loader:
        images = to_input(batch["image"], model, device, memory_format)
        with autocast(device, precision):
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


def append_metrics(path: Path, row: dict) -> None:
    """Append one row to metrics.csv, rewriting it atomically (it is small)."""
    rows = io.read_csv_rows(path) if path.is_file() else []
    rows = [r for r in rows if int(r["epoch"]) < int(row["epoch"])] + [row]  # resumed epochs
    io.write_csv(path, rows, METRICS_COLUMNS)


def make_checkpoint(model, ema, optimizer, scheduler, scaler, state, cfg) -> dict:
    return {
        "model": model.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        "state": dict(state),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "podium_version": podium.__version__,
    }


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    with io.atomic_write(path, "wb") as f:
        torch.save(checkpoint, f)


def restore_checkpoint(path, model, ema, optimizer, scheduler, scaler, device) -> dict:
    checkpoint = torch.load(path, map_location=device, weights_only=False)
    model.load_state_dict(checkpoint["model"])
    if ema is not None and checkpoint["ema"] is not None:
        ema.load_state_dict(checkpoint["ema"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    rng = checkpoint["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"].cpu())
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    return dict(checkpoint["state"])


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# =============================================================================================
# `podium train`: one process, N local worker processes, or one worker of a torchrun job.
def main(cfg: DictConfig, run_dir: Path) -> float | None:
    """`podium train`, called once per run inside the Hydra task, after Hydra chose `run_dir`.

    The run is decided here, once: its directory and its resolved config (written to
    config.yaml). Then it trains in this process (`trainer.devices=1`), in N worker processes
    launched here that are handed that directory and config (`trainer.devices=N|auto`, or
    `trainer.gpus_per_job=K`: K workers on K GPUs leased from the machine), or, when torchrun
    started this process, as one worker of that job. Returns the best score (Hydra sweepers
    optimise it)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    if dist.inside_launcher():
        return join_launched_job(config, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    io.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(config))
    try:
        return _train_here_or_in_workers(cfg, config, run_dir)
    except BaseException:
        if not cfg.resume and _remove_unstarted_run_dir(run_dir):
            log.info("removed %s: the run stopped before its first checkpoint", run_dir)
        raise


def _train_here_or_in_workers(cfg: DictConfig, config: dict, run_dir: Path) -> float | None:
    tc = cfg.trainer
    if tc.gpus_per_job:
        with dist.lease_gpus(int(tc.gpus_per_job)) as gpus:
            log.info("GPUs %s for %s", ",".join(gpus), run_dir)
            env = {"CUDA_VISIBLE_DEVICES": ",".join(gpus)}
            args = (config, str(run_dir), _log_setup())
            return dist.launch(worker, args, len(gpus), env)[0]["best_score"]
    devices = dist.resolve_devices(tc.devices)
    if devices == 1:
        return train(OmegaConf.create(config), run_dir)["best_score"]
    return dist.launch(worker, (config, str(run_dir), _log_setup()), devices)[0]["best_score"]


def worker(config: dict, run_dir: str, log_setup: tuple[str | None, str | None]) -> dict:
    """One worker process launched by `main`: joins the process group, trains, returns the
    summary. Rank 0 logs like the parent (console and the run's podium.log)."""
    dist.init_worker()
    try:
        _configure_worker_logging(*log_setup)
        return train(OmegaConf.create(config), Path(run_dir))
    finally:
        dist.shutdown()


def join_launched_job(config: dict, run_dir: Path) -> float | None:
    """This process is one worker of an external torchrun job, and every worker ran Hydra.
    Rank 0's run directory and config are the run's; a rank whose Hydra picked another
    directory (its clock said another second) removes it, so the job leaves one run directory.
    Several nodes need that directory on a shared filesystem: pass hydra.run.dir=/shared/..."""
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    dist.init_worker()
    try:
        decided_dir, config = dist.broadcast_object((str(run_dir), config))
        if dist.is_main():
            run_dir.mkdir(parents=True, exist_ok=True)
            io.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(config))
            if str(config["trainer"]["devices"]) != "1" or config["trainer"]["gpus_per_job"]:
                log.warning("trainer.devices/gpus_per_job ignored: torchrun started the workers")
        else:
            _quiet_secondary_rank()
            extra_dir = Path(decided_dir).resolve() != run_dir.resolve()
            if extra_dir and not _remove_unstarted_run_dir(run_dir) and run_dir.is_dir():
                log.warning("%s: not removed (it holds more than Hydra's files)", run_dir)
        dist.barrier()
        return train(OmegaConf.create(config), Path(decided_dir))["best_score"]
    except BaseException as error:
        ErrorHandler().record_exception(error)  # torchrun's error file: its summary shows it
        raise
    finally:
        dist.shutdown()


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


def _log_setup() -> tuple[str | None, str | None]:
    """(log file, format) of this process's root logger (Hydra's), for rank 0 to reuse."""
    log_file = fmt = None
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            log_file = handler.baseFilename
        if handler.formatter is not None and fmt is None:
            fmt = handler.formatter._fmt
    return log_file, fmt


def _configure_worker_logging(log_file: str | None, fmt: str | None) -> None:
    """Rank 0 logs INFO to the console and the run's log file; other ranks only warnings."""
    fmt = fmt or "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    root = logging.getLogger()
    console = logging.StreamHandler()
    if dist.is_main():
        root.setLevel(logging.INFO)
        handlers: list[logging.Handler] = [console]
        if log_file:
            handlers.append(logging.FileHandler(log_file))  # appends after the parent's lines
    else:
        root.setLevel(logging.WARNING)
        fmt = f"[rank {dist.rank()}]{fmt}"
        handlers = [console]
    for handler in handlers:
        handler.setFormatter(logging.Formatter(fmt))
        root.addHandler(handler)


def _quiet_secondary_rank() -> None:
    """Under torchrun every rank has Hydra's handlers: keep rank 0's log file the only one."""
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()


STARTUP_FILES = {".hydra", "config.yaml", "tb", "metrics.csv"}  # and *.log


def _remove_unstarted_run_dir(path: Path) -> bool:
    """Remove a run directory that holds only what Hydra and podium write before the first
    checkpoint (a run that never got anywhere would otherwise be picked up by `runs=[...]`
    globs). Anything else in it, e.g. a checkpoint, keeps it. True if it was removed."""
    entries = list(path.iterdir()) if path.is_dir() else []
    if path.is_dir() and all(e.name in STARTUP_FILES or e.suffix == ".log" for e in entries):
        shutil.rmtree(path, ignore_errors=True)
        return True
    return False
