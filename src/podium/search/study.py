"""A search's Optuna study: its storage in the study folder, what it is (the training overrides
and the space it was started with), its sampler and pruner, and which of its trials count."""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import random
from pathlib import Path
from typing import Any

from podium.config import changes_result
from podium.io import PodiumError
from podium.rules import show

log = logging.getLogger(__name__)

__all__ = [
    "STUDY_FILE",
    "LOCK_FILE",
    "open_study",
    "make_sampler",
    "make_pruner",
    "counted_trials",
    "remaining_trials",
    "requeue_interrupted",
    "grid",
    "param_overrides",
    "state",
]

STUDY_FILE = "study.journal"  # Optuna's JournalStorage
LOCK_FILE = "study.lock"  # held while a worker counts the trials and starts one
COUNTED = ("COMPLETE", "PRUNED", "RUNNING")  # and FAIL with an error (not an interrupted one)


def param_overrides(params: dict) -> list[str]:
    """A trial's parameters as `podium train` overrides."""
    # repr: the shortest text that reads back as the same float (the exact value the trial ran)
    return [f"{k}={repr(v) if isinstance(v, float) else show(v)}" for k, v in params.items()]


def open_study(settings: dict) -> Any:
    """The study in its folder, created on first use. A study started with other training
    overrides or another space is an error: its trials would not compare."""
    import optuna
    from filelock import FileLock

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # podium logs each trial itself
    study_dir = Path(settings["study_dir"])
    study_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(study_dir / STUDY_FILE))
    )
    identity = {
        "competition": settings["competition"],
        "overrides": sorted(o for o in settings["base"] if changes_result(_key(o))),
        "space": settings["params"],
    }
    with FileLock(str(study_dir / LOCK_FILE)):
        study = optuna.create_study(
            study_name=settings["name"],
            storage=storage,
            direction="maximize",  # podium's metrics: higher is better (run_state.Progress)
            load_if_exists=True,
            sampler=make_sampler(settings, worker=0),
            pruner=make_pruner(settings["pruner"]),
        )
        started = study.user_attrs.get("identity")
        if started is None:
            study.set_user_attr("identity", identity)
            for params in grid(settings):  # asked for in this order (first queued, first run)
                study.enqueue_trial(params)
        elif started != identity:
            raise PodiumError(
                f"{study_dir}: study {settings['name']} was started with {_differ(started)}, "
                f"this command gives {_differ(identity)}: set search.name=NEW for a new study"
            )
    return study


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _differ(identity: dict) -> str:
    overrides = " ".join(identity["overrides"]) or "no training overrides"
    return f"[{overrides}] and params {show(identity['space'])}"


def make_sampler(settings: dict, worker: int) -> Any:
    import optuna

    seed = settings["seed"]
    # Each worker its own seed: workers with one seed would sample the same values.
    seed = None if seed is None else seed + worker
    if settings["sampler"] in ("random", "grid"):  # grid: its points are queued trials
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: running trials count as bad ones, so parallel workers spread out.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(pruner: dict) -> Any:
    import optuna

    warmup = int(pruner["n_warmup_steps"])
    if pruner["name"] == "median":
        return optuna.pruners.MedianPruner(pruner["n_startup_trials"], n_warmup_steps=warmup)
    if pruner["name"] == "threshold":
        return optuna.pruners.ThresholdPruner(lower=pruner["threshold"], n_warmup_steps=warmup)
    return optuna.pruners.NopPruner()


def counted_trials(study: Any) -> list[Any]:
    """The trials that count towards n_trials: all but those interrupted (queued again)."""
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state.name in COUNTED or (t.state.name == "FAIL" and "error" in t.user_attrs)
    ]


def remaining_trials(study: Any, settings: dict) -> int:
    """How many trials the study still needs to have n_trials (capped by a grid's size),
    after queueing again those whose worker died. Call it under the study's LOCK_FILE."""
    requeue_interrupted(study)
    n_trials = min(settings["n_trials"], len(grid(settings)) or settings["n_trials"])
    return n_trials - len(counted_trials(study))


def requeue_interrupted(study: Any) -> None:
    """Running trials whose worker died: failed (not counted), their parameters queued again
    with their run directory, which the next trial resumes."""
    for t in study.get_trials(deepcopy=False):
        lock = t.user_attrs.get("worker_lock")
        if t.state.name != "RUNNING" or not lock or _held(lock):
            continue
        log.info("trial %d lost its worker: marked failed, its parameters queued again", t.number)
        study.tell(t.number, state=state("FAIL"))
        resume = t.user_attrs.get("run_dir")
        study.enqueue_trial(t.params, user_attrs={"resume_run": resume, "retry_of": t.number})


def _held(lock_path: str) -> bool:
    """Whether a live process holds the worker lock at `lock_path`."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except OSError:
        return False  # its worker ended and removed it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def grid(settings: dict) -> list[dict]:
    """search.sampler=grid: every combination of the choices, in order (shuffled by
    search.seed when given); queued as trials when the study starts. Optuna's GridSampler is
    not used: it stops the study from inside `tell`, which only works under `optimize`."""
    if settings["sampler"] != "grid":
        return []
    names = list(settings["params"])
    choices = [settings["params"][name]["choices"] for name in names]
    points = [dict(zip(names, values, strict=True)) for values in itertools.product(*choices)]
    if settings["seed"] is not None:
        random.Random(settings["seed"]).shuffle(points)
    return points


def state(name: str) -> Any:
    """Optuna's TrialState of that name (optuna is imported only where a study is used)."""
    import optuna

    return optuna.trial.TrialState[name]
