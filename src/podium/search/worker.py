"""A search worker: it leases its GPUs (or shares the CPUs) and runs trials, each a `podium
train` run reporting its validation score after every epoch, until the study has n_trials."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from podium import rundir
from podium.config import ConfigError, compose_config
from podium.io import PodiumError
from podium.search.study import (
    LOCK_FILE,
    make_sampler,
    open_study,
    param_overrides,
    remaining_trials,
    state,
)

log = logging.getLogger(__name__)

__all__ = ["run_worker", "work", "next_trial", "trial_config"]

WORKERS_DIR = "workers"  # one lock file per live worker: a trial whose worker died is freed


def run_worker(settings: dict, index: int, ready: Any) -> None:
    """A spawned worker process: `work`, with errors as one line and exit code 1 (2 for a
    config error). It puts its index on `ready` once it has imported what a trial needs."""
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    logging.captureWarnings(True)
    try:
        import podium.launch  # noqa: F401  (torch, smp, timm: the seconds a worker takes to start)

        ready.put(index)
        work(settings, index)
    except ConfigError as e:
        print(f"podium: error: {e}", file=sys.stderr)
        sys.exit(2)
    except PodiumError as e:
        print(f"podium: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # its trial stays running: the next search queues it again
        sys.exit(130)


def work(settings: dict, index: int) -> None:
    """Worker `index`: lease its GPUs (or share the CPUs), then run trials until the study has
    n_trials."""
    with _devices(settings, index), _worker_lock(Path(settings["study_dir"])) as lock:
        study = open_study(settings)
        study.sampler = make_sampler(settings, index)
        while (trial := next_trial(study, settings, lock)) is not None:
            run_trial(study, trial, settings, index)


@contextlib.contextmanager
def _devices(settings: dict, index: int) -> Iterator[None]:
    """With GPUs: lease one (trainer.gpus_per_job's leases) and make it this process's only one
    (before CUDA starts here). On CPU: share the cores between the workers."""
    import torch

    from podium import distributed as dist

    if settings["gpus"]:
        with dist.lease_gpus(1, gpus=settings["gpus"]) as gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
            log.info("worker %d: GPU %s", index, ",".join(gpus))
            yield
        return
    if "OMP_NUM_THREADS" not in os.environ:  # the user's choice stands
        threads = max(1, dist.cpu_count() // int(settings["workers"]))
        # Set as a user would: trials' trainer.cpu_threads=auto then keep it (distributed.
        # choose_cpu_threads), instead of reading the sibling workers as other work.
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
        log.info("worker %d: %d torch thread(s)", index, threads)
    yield


@contextlib.contextmanager
def _worker_lock(study_dir: Path) -> Iterator[str]:
    """Hold a lock file for this worker's life (flock: it dies with the process), named in
    its trials: a running trial whose lock is free lost its worker."""
    folder = study_dir / WORKERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield str(path)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def next_trial(study: Any, settings: dict, lock: str) -> Any | None:
    """The next trial with its parameters, or None when the study has n_trials. Under the
    study's lock, so that parallel workers never start more than n_trials."""
    from filelock import FileLock

    with FileLock(str(Path(settings["study_dir"]) / LOCK_FILE)):
        if remaining_trials(study, settings) <= 0:
            return None
        trial = study.ask()
        trial.set_user_attr("worker_lock", lock)
        for name, spec in settings["params"].items():
            suggest(trial, name, spec)
    return trial


def suggest(trial: Any, name: str, spec: dict) -> Any:
    if spec["type"] == "float":
        return trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
    if spec["type"] == "int":
        return trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1))
    return trial.suggest_categorical(name, spec["choices"])


def run_trial(study: Any, trial: Any, settings: dict, worker: int) -> None:
    """Train the trial's configuration as a normal run and tell the study how it ended."""
    from podium import launch
    from podium.train import TrainHooks

    shown = " ".join(param_overrides(trial.params))
    try:
        run_dir, cfg = trial_config(trial, settings)
    except ConfigError as e:  # this combination breaks a rule across keys: the next may not
        log.error("worker %d: trial %d: %s: %s", worker, trial.number, shown, e)
        _fail(study, trial, str(e))
        return
    trial.set_user_attr("run_dir", str(run_dir))
    log.info("worker %d: trial %d: %s -> %s", worker, trial.number, shown, run_dir)

    def after_validation(epoch: int, score: float, last: bool) -> bool:
        trial.report(score, epoch)
        return not last and trial.should_prune()

    hooks = TrainHooks(after_validation, {"study": settings["name"], "trial": trial.number})
    try:
        with _log_file(run_dir / "podium.log"):
            launch.main(cfg, run_dir, hooks)
    except PodiumError as e:  # bad data, no disk space...: the next trial would meet it too
        _fail(study, trial, str(e))
        raise
    except Exception as e:  # this trial's own failure (out of memory, NaN...): the next goes on
        log.error("trial %d failed: %s: %s", trial.number, type(e).__name__, e)
        _fail(study, trial, f"{type(e).__name__}: {e}")
        return
    summary = rundir.read_summary(run_dir) or {}
    score = summary.get("best_score")
    if summary.get("status") == "pruned":
        study.tell(trial, state=state("PRUNED"))
        log.info("trial %d pruned after epoch %s", trial.number, summary.get("epochs_run"))
    elif score is None:
        _fail(study, trial, "the run recorded no validation score")
    else:
        study.tell(trial, float(score))
        log.info("trial %d: %s %.6g", trial.number, settings["metric"], score)


def trial_config(trial: Any, settings: dict) -> tuple[Path, DictConfig]:
    """The trial's run directory and training config: the command's training overrides and
    the trial's parameters; or, for a trial queued again, its earlier run, resumed."""
    earlier = trial.user_attrs.get("resume_run")
    if earlier and rundir.checkpoint_path(Path(earlier), "last").is_file():
        cfg = rundir.read_config(Path(earlier))
        OmegaConf.set_struct(cfg, False)
        cfg.resume = earlier
        return Path(earlier), cfg
    run_dir = Path(settings["study_dir"]) / f"trial_{trial.number:03d}"
    overrides = [
        *settings["base"],
        *param_overrides(trial.params),
        f"experiment_name={settings['name']}-trial{trial.number}",
        "trainer.gpus_per_job=null",  # the worker holds its GPUs
    ]
    return run_dir, compose_config("train", overrides)


def _fail(study: Any, trial: Any, error: str) -> None:
    trial.set_user_attr("error", error)
    study.tell(trial, state=state("FAIL"))


@contextlib.contextmanager
def _log_file(path: Path) -> Iterator[None]:
    """The trial's log lines also go to its run directory, as a `podium train` run's do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
