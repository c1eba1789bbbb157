"""`podium search`: hyper-parameter search with Optuna, used directly (the Hydra Optuna sweeper
pins optuna<3 and can neither prune nor run trials in parallel: facebookresearch/hydra#3091,
#1954).

The study lives in its folder, `<paths.runs_dir>/<competition>/search/<search.name>/`: Optuna's
JournalStorage file (`study.journal`, appended under a file lock, so any number of processes on
this machine, or on machines sharing the folder, run trials of one study) and one run directory
per trial (`trial_007/`), a normal `podium train` run recorded in the ledger with its study and
trial number. `search.workers` processes run trials at once; with GPUs each worker first leases
`search.gpus_per_worker` of them (podium.distributed's GPU leases, shared with `podium train
trainer.gpus_per_job`). Each validated epoch's score is reported to the trial; when the pruner
says so, the run stops after that epoch's checkpoint and is recorded as pruned.

Resuming: the same command again continues the study up to `search.n_trials` trials (complete,
pruned or failed), never running a finished one again. A trial whose worker was killed (its
worker lock is free) is marked failed, and its parameters are queued again: the next trial
resumes its run directory from the last checkpoint, so its finished epochs are not trained again.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import multiprocessing
import os
import queue
import random
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from podium import rundir
from podium.config import ConfigError, changes_result, check_overrides, compose_config
from podium.io import PodiumError
from podium.rules import show

log = logging.getLogger(__name__)

__all__ = ["search_command", "run_worker", "train_overrides", "STUDY_FILE"]

STUDY_FILE = "study.journal"  # Optuna's JournalStorage
LOCK_FILE = "study.lock"  # held while a worker counts the trials and starts one
WORKERS_DIR = "workers"  # one lock file per live worker: a trial whose worker died is freed
COUNTED = ("COMPLETE", "PRUNED", "RUNNING")  # and FAIL with an error (not an interrupted one)


# -- the command ------------------------------------------------------------------------------
def search_command(cfg: DictConfig, study_dir: Path) -> float | None:
    """`podium search`: run the study's remaining trials in `search.workers` processes, then
    print the best trial and its `podium train` command line. Returns the best value."""
    from hydra.core.hydra_config import HydraConfig

    sc = cfg.search
    base = train_overrides(list(HydraConfig.get().overrides.task))
    check_space(base, OmegaConf.to_container(sc.params))
    settings = {
        "study_dir": str(study_dir),
        "competition": str(cfg.competition.name),
        "metric": str(cfg.competition.metric),
        "base": base,
        **OmegaConf.to_container(sc, resolve=True),
    }
    study = open_study(settings)
    remaining = settings["n_trials"] - len(counted_trials(study))
    if remaining > 0:
        run_workers(settings, min(int(sc.workers), remaining))
    else:
        log.info("study %s already has %d trials", sc.name, settings["n_trials"])
    return report(open_study(settings), settings)


def train_overrides(task_overrides: list[str]) -> list[str]:
    """The command line's overrides that go to every trial's `podium train`: all but the
    search's own (search=..., search.*) and Hydra's."""
    kept = []
    for override in task_overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key.split(".")[0] not in ("search", "hydra"):
            kept.append(override)
    return kept


def check_space(base: list[str], space: dict) -> None:
    """Each param of the space is a train setting or group that takes its range's ends and
    every choice (a misspelt key fails now, not in every trial). All at once (one composition),
    then, on an error, one by one to name the param."""

    def sweep(name: str, spec: dict) -> str:
        values = spec["choices"] if spec["type"] == "categorical" else [spec["low"], spec["high"]]
        return f"{name}={','.join(map(show, values))}"

    try:
        check_overrides("train", [*base, *(sweep(n, spec) for n, spec in space.items())])
        return
    except ConfigError as error:
        first_error = error
    for name, spec in space.items():
        try:
            check_overrides("train", [*base, sweep(name, spec)])
        except ConfigError as e:
            raise ConfigError(f"search.params.{name}: {e}") from None
    raise first_error


def run_workers(settings: dict, workers: int) -> None:
    """Run `workers` worker processes (fresh interpreters: each may lease its own GPUs before
    CUDA starts) and wait for them. A worker that stopped on an error fails the command."""
    from podium import distributed as dist

    settings = {**settings, "gpus": dist.visible_gpus()}
    log.info("study %s: %d worker(s) in %s", settings["name"], workers, settings["study_dir"])
    # On CPU this process is worker 0 (one interpreter fewer to start); a GPU worker must set
    # CUDA_VISIBLE_DEVICES before CUDA starts, which it did here: all GPU workers are spawned.
    here = 0 if settings["gpus"] else 1
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    processes = [
        context.Process(target=run_worker, args=(settings, i, ready), name=f"search-worker-{i}")
        for i in range(here, workers)
    ]
    for process in processes:
        process.start()
    try:
        if here:
            _wait_until_ready(ready, processes)
            work(settings, 0)
        for process in processes:
            process.join()
    finally:
        for process in processes:  # an interrupted command leaves no worker behind
            if process.is_alive():
                process.terminate()
                process.join()
    failed = [p for p in processes if p.exitcode]
    if failed:
        raise PodiumError(
            f"{len(failed)} of {workers} search worker(s) stopped on an error (above); the "
            "study keeps its finished trials: run the command again to continue"
        )


def _wait_until_ready(ready: Any, processes: list) -> None:
    """Wait until the spawned workers have imported what a trial needs (or died). This process
    starts first (torch is imported here already): without waiting it would run the first
    trials alone, and the spawned workers would find fewer left to share."""
    reported = 0
    while reported < len(processes):
        try:
            ready.get(timeout=1.0)
            reported += 1
        except queue.Empty:
            if reported + sum(not p.is_alive() for p in processes) >= len(processes):
                return


def report(study: Any, settings: dict) -> float | None:
    """Print the study's counts, its best trial and that trial as a `podium train` command."""
    states = [t.state.name for t in study.trials if t.state.name != "WAITING"]  # not queued
    counts = ", ".join(f"{states.count(s)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL"))
    print(f"study {settings['name']}: {len(states)} trials ({counts}) in {settings['study_dir']}")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        print("no trial completed: no best configuration yet")
        return None
    best = study.best_trial
    print(
        f"best: trial {best.number}, {settings['metric']} {best.value:.6g} "
        f"({best.user_attrs.get('run_dir')})"
    )
    print(" ".join(["podium train", *best_command(settings, best.params)]))
    return float(best.value)


def best_command(settings: dict, params: dict) -> list[str]:
    """The overrides of `podium train` that train the configuration of a trial's `params`."""
    base = settings["base"]
    named = any(o.split("=", 1)[0] == "competition" for o in base)
    first = [] if named else [f"competition={settings['competition']}"]
    return [*first, *base, *param_overrides(params)]


def param_overrides(params: dict) -> list[str]:
    # repr: the shortest text that reads back as the same float (the exact value the trial ran)
    return [f"{k}={repr(v) if isinstance(v, float) else show(v)}" for k, v in params.items()]


# -- the study --------------------------------------------------------------------------------
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


# -- a worker ---------------------------------------------------------------------------------
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
    """With GPUs: lease `gpus_per_worker` of them and make them this process's only ones
    (before CUDA starts here). On CPU: share the cores between the workers."""
    import torch

    from podium import distributed as dist

    if settings["gpus"]:
        with dist.lease_gpus(int(settings["gpus_per_worker"]), gpus=settings["gpus"]) as gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
            log.info("worker %d: GPU %s", index, ",".join(gpus))
            yield
        return
    if "OMP_NUM_THREADS" not in os.environ:  # the user's choice stands
        threads = max(1, (os.cpu_count() or 1) // int(settings["workers"]))
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


def next_trial(study: Any, settings: dict, lock: str) -> Any | None:
    """The next trial with its parameters, or None when the study has n_trials. Under the
    study's lock, so that parallel workers never start more than n_trials."""
    from filelock import FileLock

    n_trials = min(settings["n_trials"], len(grid(settings)) or settings["n_trials"])
    with FileLock(str(Path(settings["study_dir"]) / LOCK_FILE)):
        requeue_interrupted(study)
        if len(counted_trials(study)) >= n_trials:
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


def requeue_interrupted(study: Any) -> None:
    """Running trials whose worker died: failed (not counted), their parameters queued again
    with their run directory, which the next trial resumes."""
    for t in study.get_trials(deepcopy=False):
        lock = t.user_attrs.get("worker_lock")
        if t.state.name != "RUNNING" or not lock or _held(lock):
            continue
        log.info("trial %d lost its worker: marked failed, its parameters queued again", t.number)
        study.tell(t.number, state=_state("FAIL"))
        resume = t.user_attrs.get("run_dir")
        study.enqueue_trial(t.params, user_attrs={"resume_run": resume, "retry_of": t.number})


def _state(name: str) -> Any:
    import optuna

    return optuna.trial.TrialState[name]


def run_trial(study: Any, trial: Any, settings: dict, worker: int) -> None:
    """Train the trial's configuration as a normal run and tell the study how it ended."""
    from podium import launch
    from podium.train import TrainHooks

    run_dir, cfg = trial_config(trial, settings)
    trial.set_user_attr("run_dir", str(run_dir))
    shown = " ".join(param_overrides(trial.params))
    log.info("worker %d: trial %d: %s -> %s", worker, trial.number, shown, run_dir)

    def after_validation(epoch: int, score: float, last: bool) -> bool:
        trial.report(score, epoch)
        return not last and trial.should_prune()

    hooks = TrainHooks(after_validation, {"study": settings["name"], "trial": trial.number})
    try:
        with _log_file(run_dir / "podium.log"):
            launch.main(cfg, run_dir, hooks)
    except (ConfigError, PodiumError) as e:  # the next trial would meet it too: stop
        _fail(study, trial, str(e))
        raise
    except Exception as e:  # this trial's own failure (out of memory, NaN...): the next goes on
        log.error("trial %d failed: %s: %s", trial.number, type(e).__name__, e)
        _fail(study, trial, f"{type(e).__name__}: {e}")
        return
    summary = rundir.read_summary(run_dir) or {}
    score = summary.get("best_score")
    if summary.get("status") == "pruned":
        study.tell(trial, state=_state("PRUNED"))
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
    study.tell(trial, state=_state("FAIL"))


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
