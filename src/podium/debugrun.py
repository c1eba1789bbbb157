"""`podium train ... debug=true`: every stage of the loop on a sliver of the data, in one command.

The debug group (configs/debug/default.yaml) keeps what a real run would use (batch size, image
size, model, precision, augmentation, the data check) and cuts the amounts: `debug.train_steps`
optimizer steps of one epoch, `debug.val_batches` validation batches, then `podium tune` on the
run's out-of-fold predictions, `podium predict` on `debug.test_images` test images (the other
rows written empty, so the whole file is validated), and the submission's validation. Each stage
is the real command's function, called in order; the first failure stops the run with its own
error. The stages and their wall times are printed at the end.

Debug runs go under `debug_runs/<competition>/` (the group sets `paths.runs_dir`; its own
ledger), where `podium runs`, write-ups and `runs/<competition>/...` globs never look.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from podium import io, rundir
from podium.competition import load_competition
from podium.config import ConfigError, compose_config
from podium.infer import predict_command
from podium.io import PodiumError
from podium.submission import validate_submission
from podium.tune import tune_command

log = logging.getLogger(__name__)

__all__ = ["debug_run", "debug_train_config", "stage_config", "StageTimes"]

TrainRun = Callable[[DictConfig, Path], float | None]


@dataclass
class StageTimes:
    """Each stage's name, wall time and a note, as they ran."""

    rows: list[tuple[str, float, str]] = field(default_factory=list)
    start: float = field(default_factory=time.time)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[list[str]]:
        """Time the block as stage `name`; the block may append a note to the yielded list.
        A failing stage is printed with its time before its error goes on."""
        log.info("debug: %s ...", name)
        note: list[str] = []
        t0 = time.time()
        try:
            yield note
        except BaseException:
            self.rows.append((name, time.time() - t0, "FAILED"))
            print(self.table(), flush=True)
            raise
        self.rows.append((name, time.time() - t0, " ".join(note)))

    def table(self) -> str:
        width = max(len(name) for name, _, _ in self.rows)
        lines = [f"debug: {name:<{width}} {s:6.1f} s  {note}" for name, s, note in self.rows]
        lines.append(f"debug: {'total':<{width}} {time.time() - self.start:6.1f} s")
        return "\n".join(lines)


def debug_run(cfg: DictConfig, run_dir: Path, train_run: TrainRun) -> float | None:
    """Train `cfg` as a debug run into `run_dir` with `train_run` (podium.launch's), then tune,
    predict and validate on it. Returns the validation score of its one epoch."""
    if cfg.get("resume"):
        raise ConfigError("debug=true starts a new run; it cannot resume one (drop resume=)")
    times = StageTimes()
    cfg = debug_train_config(cfg)
    with times.stage("train") as note:
        score = train_run(cfg, run_dir)
        summary = rundir.read_summary(run_dir) or {}
        steps, val = int(cfg.debug.train_steps), int(cfg.trainer.limit_val_images)
        note.append(f"(data check, {steps} steps, 1 validation on {val} images, checkpoint)")
        note.append(f"-> {run_dir}")
    if summary.get("status") == "failed":
        raise PodiumError(f"{run_dir}: the debug run failed ({summary.get('error')})")

    with times.stage("tune") as note:
        tune_dir = run_dir / "tune"
        tune_command(stage_config("tune", cfg, [run_dir]), tune_dir)
        note.append(f"(post-processing on the OOF) -> {tune_dir / rundir.TUNED}")

    predict_dir = run_dir / "predict"
    with times.stage("predict") as note:
        predict_cfg = stage_config("predict", cfg, [run_dir])
        predict_command(predict_cfg, predict_dir)
        made = io.read_json(predict_dir / rundir.PREDICTED)
        images = f"{made['predicted_images']} of {made['images']} test images"
        note.append(f"({images}, tta={made['tta']})")

    with times.stage("validate") as note:
        path = predict_dir / "submission.csv"
        problems = validate_submission(load_competition(cfg), path)
        if problems:
            raise PodiumError(f"{path}: invalid submission: {problems[0]}")
        note.append(f"-> {path} is a valid submission")
    print(times.table(), flush=True)
    print(f"debug: every stage ran; the run is in {run_dir} (outside runs/: podium runs, "
          "writeups and run globs ignore it)", flush=True)  # fmt: skip
    return score


def debug_train_config(cfg: DictConfig) -> DictConfig:
    """A copy of `cfg` cut to the debug amounts: `debug.train_steps` optimizer steps (each of
    trainer.accumulate batches) and `debug.val_batches` batches of validation images."""
    cfg = copy.deepcopy(cfg)
    tc = cfg.trainer
    tc.limit_train_batches = int(cfg.debug.train_steps) * int(tc.accumulate)
    tc.limit_val_images = int(cfg.debug.val_batches) * int(tc.batch_size)
    return cfg


def stage_config(command: str, cfg: DictConfig, runs: list[Path]) -> DictConfig:
    """The `podium tune` / `podium predict` config of the debug run: the command's own defaults
    with the training run's competition and paths (every override of them kept), its runs, and
    the debug amounts."""
    stage = compose_config(command, [f"competition={cfg.competition.name}"])
    stage.competition = OmegaConf.to_container(cfg.competition, resolve=True)
    stage.paths = OmegaConf.to_container(cfg.paths, resolve=True)
    stage.runs = [str(path) for path in runs]
    stage.batch_size = int(cfg.trainer.batch_size)
    stage.num_workers = cfg.trainer.num_workers
    stage.progress = False
    if command == "predict":
        stage.limit_test_images = int(cfg.debug.test_images)
        stage.tta = cfg.debug.tta
    return stage
