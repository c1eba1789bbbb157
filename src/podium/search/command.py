"""`podium search` itself: check the space, open the study, run its workers, print the best."""

from __future__ import annotations

import logging
import multiprocessing
import queue
from pathlib import Path
from typing import Any

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from podium.config import ConfigError, check_overrides
from podium.io import PodiumError
from podium.rules import show
from podium.search.study import LOCK_FILE, open_study, param_overrides, remaining_trials
from podium.search.worker import run_worker, work

log = logging.getLogger(__name__)

__all__ = ["search_command", "train_overrides", "check_space", "best_command"]


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
    with FileLock(str(study_dir / LOCK_FILE)):
        remaining = remaining_trials(study, settings)
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
    then, on an error, one by one to name the param. An override that the space also sets, or
    resume=, is an error too."""

    for override in base:
        key = override.lstrip("+~").split("=", 1)[0]
        if key in space:
            raise ConfigError(f"{override}: {key} is searched (search.params.{key}): give one")
        if key == "resume":
            raise ConfigError(f"{override}: trials are new runs (a search resumes its own)")

    def sweep(name: str, spec: dict) -> str:
        values = spec["choices"] if spec["type"] == "categorical" else [spec["low"], spec["high"]]
        return f"{name}={','.join(map(show, values))}"

    try:
        check_overrides("train", [*base, *(sweep(n, spec) for n, spec in space.items())])
        return
    except ConfigError:
        pass
    for name, spec in space.items():
        try:
            check_overrides("train", [*base, sweep(name, spec)])
        except ConfigError as e:
            raise ConfigError(f"search.params.{name}: {e}") from None
    # Each param alone is fine: some combinations break a rule across keys (a warm-up longer
    # than the run), and those trials fail, naming it, while the others run.


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
