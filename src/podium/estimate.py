"""`podium estimate`: what a training run, a `-m` sweep or a prediction will cost, before it runs.

    podium estimate [train] [-m] <train overrides>     a run, or every run of the sweep
    podium estimate predict <predict overrides>        the test set, with TTA and the ensemble

It times the real code on the real data, on this machine, and writes nothing but the folds.csv
a first run makes: the run's data and model are built as `podium train` builds them
(`load_data`, `build_train_state`, the TensorBoard writer in a temporary folder), a few epochs
of a few steps run through `train_epoch`, validation through `validate`, and one epoch's
checkpoints through `save_epoch` into a temporary folder. What it measures, and how a run adds
up (`RunCost.seconds`):

    start-up      data (the data check, folds), the model and the run's logs, once
    warm-up       what the first steps cost beyond a steady step (allocator, cuDNN), once
    steps         steady seconds per batch x batches per epoch x epochs
    loader start  each epoch's DataLoader (its workers, the first batch), per epoch
    validation    seconds per image x validation images + its own start, per validated epoch
                  (every trainer.val_every epochs and the last)
    checkpoints   best.pt, oof.npz and last.pt, per epoch (as if every epoch scored best)

Steps are timed as two epochs of different lengths after a warm-up epoch: their difference is
the steady step, the rest each epoch's loader start. The estimate is for `trainer.max_epochs`:
early stopping can end a run sooner. A sweep's runs are estimated once per distinct setting
(the folds and seeds of one setting cost the same) and added up, one run after another. Peak
memory: the accelerator's (torch.cuda.max_memory_allocated) on CUDA; on CPU this process's peak
resident memory, said as such (DataLoader workers are other processes).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import resource
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from podium import distributed as dist
from podium import rundir
from podium.competition import load_competition
from podium.config import (
    REPLICATE_KEYS,
    compose_config,
    register_competitions,
    sweep_grid,
)
from podium.data import SegmentationDataset, make_loader, resolve_num_workers
from podium.infer import find_tuned, load_ensemble, predict_rows, tta_views
from podium.models import resolve_device, resolve_precision
from podium.run_state import Clock, Compute, build_train_state, load_data, seed_everything
from podium.train import RunLog, save_epoch, train_epoch, validate

log = logging.getLogger(__name__)

__all__ = [
    "RunCost",
    "validation_epochs",
    "sweep_cost",
    "estimate_run",
    "estimate_predict",
    "estimate_command",
]

WARMUP_BATCHES = 2  # batches of the warm-up epoch, never counted as steady steps
SHORT_BATCHES = 2  # the short timed epoch; the long one has SHORT + STEADY batches
STEADY_BATCHES = 4
VAL_BATCHES = 2  # validation: the warm-up pass and the short pass have 1 batch, the long one 1+2


# =============================================================================================
# The arithmetic
def validation_epochs(max_epochs: int, val_every: int) -> int:
    """How many epochs validate: every `val_every`-th and always the last (podium.train)."""
    return sum(1 for e in range(max_epochs) if (e + 1) % val_every == 0 or e + 1 == max_epochs)


@dataclass(frozen=True)
class RunCost:
    """What one training run costs, from measured unit times (seconds)."""

    epochs: int
    batches_per_epoch: int  # micro-batches per device and epoch (trainer.accumulate each step)
    validations: int
    val_images: int
    startup_s: float  # data and model, once
    warmup_s: float  # the first steps beyond steady ones, once
    batch_s: float  # one steady training micro-batch
    loader_start_s: float  # per epoch
    val_image_s: float  # per validation image
    val_start_s: float  # per validation pass
    checkpoint_s: float  # per epoch
    peak_memory: str = "n/a"

    @property
    def train_s(self) -> float:
        return self.epochs * (self.batches_per_epoch * self.batch_s + self.loader_start_s)

    @property
    def validation_s(self) -> float:
        """One validation pass."""
        return self.val_images * self.val_image_s + self.val_start_s

    @property
    def seconds(self) -> float:
        """The whole run: start-up and warm-up once, every epoch's steps, loader start and
        checkpoints, every validation pass."""
        once = self.startup_s + self.warmup_s
        per_epoch = self.epochs * self.checkpoint_s
        return once + self.train_s + per_epoch + self.validations * self.validation_s

    def lines(self) -> list[str]:
        steps = f"{self.batches_per_epoch} batches/epoch x {self.epochs} epochs"
        val = f"{self.val_images} images, {self.validation_s:.1f} s"
        validations = self.validations * self.validation_s
        return [
            f"  start-up (data check, folds, model)  {self.startup_s:8.1f} s",
            f"  warm-up (first steps, once)          {self.warmup_s:8.1f} s",
            f"  training {self.batch_s:.3f} s/batch x {steps}: {self.train_s:.1f} s"
            f" (loader start {self.loader_start_s:.2f} s/epoch included)",
            f"  validation ({val}) x {self.validations}: {validations:.1f} s",
            f"  checkpoints {self.checkpoint_s:.2f} s x {self.epochs} epochs",
            f"  one run: {duration(self.seconds)} (trainer.max_epochs={self.epochs}; early "
            "stopping can end it sooner)",
            f"  peak memory: {self.peak_memory}",
        ]


def sweep_cost(costs: Sequence[tuple[float, int]]) -> float:
    """The seconds of a sweep run one job after another: (seconds per run, runs) per setting."""
    return sum(seconds * runs for seconds, runs in costs)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min ({seconds:.0f} s)"
    return f"{seconds / 3600:.1f} h ({seconds / 60:.0f} min)"


# =============================================================================================
# Measuring
def peak_memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB on {device} (allocated)"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return f"n/a on CPU (no accelerator); this process's peak RSS {rss / 2**30:.2f} GiB"


def _timed(function, *args, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = function(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def estimate_run(cfg: DictConfig) -> RunCost:
    """Time the run of train config `cfg` here (see the module's docstring); nothing is kept."""
    cfg = copy.deepcopy(cfg)
    tc = cfg.trainer
    tc.progress = False
    device = resolve_device(tc.cpu_threads)
    peak_memory_reset(device)
    seed_everything(int(cfg.seed), deterministic=bool(tc.deterministic))
    start = time.perf_counter()
    data = load_data(cfg)
    run = build_train_state(cfg, data, Compute.for_trainer(tc, device))
    with tempfile.TemporaryDirectory(prefix="podium-estimate-") as tmp:
        RunLog(Path(tmp), cfg, 0, Clock()).writer.close()  # TensorBoard: its import, its files
    startup_s = time.perf_counter() - start

    # Training: a warm-up epoch, then a short and a long one (whole accumulation steps each).
    def epoch_of(batches: int, epoch: int) -> tuple[float, int]:
        batches = max(data.accumulate, batches // data.accumulate * data.accumulate)
        batches = min(batches, data.steps_per_epoch)
        short = dataclasses.replace(data, steps_per_epoch=batches)
        return _timed(train_epoch, run, short, cfg, epoch, None, device=device)[0], batches

    warm_s, warm_n = epoch_of(WARMUP_BATCHES * data.accumulate, 0)
    short_s, short_n = epoch_of(SHORT_BATCHES * data.accumulate, 1)
    long_s, long_n = epoch_of((SHORT_BATCHES + STEADY_BATCHES) * data.accumulate, 2)
    if long_n > short_n:
        batch_s = max(0.0, (long_s - short_s) / (long_n - short_n))
    else:  # an epoch shorter than the timing: its whole time per batch
        batch_s = long_s / long_n
    loader_start_s = max(0.0, short_s - short_n * batch_s)
    warmup_s = max(0.0, warm_s - warm_n * batch_s - loader_start_s)

    # Validation: a warm-up pass of one batch, then one of 1 and one of 1 + VAL_BATCHES batches.
    val_set, batch = data.val_set, int(tc.batch_size)

    def validation_of(images: int) -> tuple[float, int, dict]:
        images = min(images, len(val_set))
        part = SegmentationDataset(val_set.competition, val_set.samples[:images], val_set.transform)
        seconds, result = _timed(
            validate, run.eval_model, part, run.loss_fn, run.compute, cfg, device=device
        )
        return seconds, images, result

    validation_of(batch)
    one_s, one_n, _ = validation_of(batch)
    more_s, more_n, result = validation_of(batch * (1 + VAL_BATCHES))
    if more_n > one_n:
        val_image_s = max(0.0, (more_s - one_s) / (more_n - one_n))
        val_start_s = max(0.0, one_s - one_n * val_image_s)
    else:  # the whole validation set fits in one batch: its time is the pass
        val_image_s, val_start_s = 0.0, one_s

    # One epoch's checkpoints, as an epoch that scored best writes them.
    with tempfile.TemporaryDirectory(prefix="podium-estimate-") as tmp:
        part_ids = val_set.samples[: len(result["probs"])]
        part = SegmentationDataset(val_set.competition, part_ids, val_set.transform)
        saved = dataclasses.replace(data, val_set=part)
        checkpoint_s, _ = _timed(
            save_epoch, run, saved, cfg, Path(tmp), result, True, device=device
        )
    epochs = int(tc.max_epochs)
    return RunCost(
        epochs=epochs,
        batches_per_epoch=data.steps_per_epoch,
        validations=validation_epochs(epochs, int(tc.val_every)),
        val_images=len(val_set),
        startup_s=startup_s,
        warmup_s=warmup_s,
        batch_s=batch_s,
        loader_start_s=loader_start_s,
        val_image_s=val_image_s,
        val_start_s=val_start_s,
        checkpoint_s=checkpoint_s,
        peak_memory=peak_memory(device),
    )


@dataclass(frozen=True)
class PredictCost:
    images: int
    runs: int
    views: int
    load_s: float  # the runs' models
    image_s: float  # one test image through every model and view, post-processed and encoded
    peak_memory: str

    @property
    def seconds(self) -> float:
        return self.load_s + self.images * self.image_s


PREDICT_BATCHES = 3  # timed test batches, after one warm-up batch


def estimate_predict(cfg: DictConfig) -> PredictCost:
    """Time `podium predict` of predict config `cfg` on a few test batches (the real ensemble,
    TTA views, post-processing and encoding) and extrapolate to the test set."""
    competition = load_competition(cfg)
    runs = rundir.resolve_runs(cfg)
    postprocess, tuned = find_tuned(cfg, [path for path, _ in runs])
    views = tta_views(cfg.tta or (tuned or {}).get("tta") or "none", cfg.tta_scales)
    device = resolve_device(cfg.cpu_threads)
    peak_memory_reset(device)
    precision = resolve_precision(str(cfg.precision), device)
    load_s, ensemble = _timed(
        load_ensemble, cfg, runs, competition.task, views, device, precision, device=device
    )
    competition.require_data()
    samples = competition.test_samples()
    dataset = SegmentationDataset(competition, samples, transform=None, with_masks=False)
    batch = int(cfg.batch_size)
    workers = resolve_num_workers(cfg.num_workers)

    def predict_images(first: int, count: int) -> tuple[float, int]:
        indices = list(range(first, min(len(dataset), first + count)))
        loader = make_loader(torch.utils.data.Subset(dataset, indices), batch, workers)
        area_basis = (tuned or {}).get("area_basis")

        def consume() -> None:
            rows = predict_rows(
                competition, samples, loader, ensemble, postprocess, area_basis,
                cfg.tile_size, float(cfg.tile_overlap), batch,
            )  # fmt: skip
            for _ in rows:
                pass

        return _timed(consume, device=device)[0], len(indices)

    predict_images(0, batch)  # warm-up
    seconds, images = predict_images(batch, batch * PREDICT_BATCHES)
    if images == 0:  # a test set of one batch: that batch again
        seconds, images = predict_images(0, batch)
    return PredictCost(
        len(samples), len(runs), len(views), load_s, seconds / images, peak_memory(device)
    )


# =============================================================================================
# The command
def estimate_command(args: list[str]) -> int:
    """`podium estimate [train|predict] [-m] key=value ...`: print the cost; writes nothing."""
    if "-h" in args or "--help" in args:
        print(__doc__.split("\n\n", 2)[1])
        return 0
    what = args[0] if args and args[0] in ("train", "predict") else "train"
    args = args[1:] if args and args[0] == what else args
    multirun = "-m" in args or "--multirun" in args
    overrides = [a for a in args if not a.startswith("-")]
    register_competitions()
    if what == "predict":
        cost = estimate_predict(compose_config("predict", overrides))
        print(
            f"estimate: podium predict of {cost.images} test images x {cost.runs} runs x "
            f"{cost.views} views: {duration(cost.seconds)} ({cost.image_s:.3f} s/image, "
            f"model loading {cost.load_s:.1f} s); the data check of the test images aside"
        )
        print(f"  peak memory: {cost.peak_memory}")
        return 0
    grid = sweep_grid(overrides, multirun)
    settings = group_by_setting(grid)
    costs = []
    for i, (setting, jobs) in enumerate(settings.items()):
        cfg = compose_config("train", jobs[0])
        if dist.resolve_devices(cfg.trainer.devices) > 1 or cfg.trainer.gpus_per_job:
            log.warning("estimated in one process: trainer.devices/gpus_per_job not simulated")
        label = " ".join(setting) or "(defaults)"
        print(f"estimate: setting {i + 1} of {len(settings)}: {label}, {len(jobs)} run(s)")
        cost = estimate_run(cfg)
        print("\n".join(cost.lines()), flush=True)
        costs.append((cost.seconds, len(jobs)))
    if multirun:
        total = sweep_cost(costs)
        print(
            f"estimate: sweep of {len(grid)} runs ({len(settings)} setting(s)): "
            f"{duration(total)} one after another"
        )
    return 0


def group_by_setting(grid: list[list[str]]) -> dict[tuple[str, ...], list[list[str]]]:
    """The sweep's jobs grouped by their overrides other than fold and seed: the runs of one
    setting cost the same, so each setting is timed once."""
    settings: dict[tuple[str, ...], list[list[str]]] = {}
    for job in grid:
        key = tuple(o for o in job if o.split("=", 1)[0].lstrip("+~") not in REPLICATE_KEYS)
        settings.setdefault(key, []).append(job)
    return settings
