"""`podium train`: where the training processes come from. One process, N local worker processes,
or this process as one worker of a torchrun job; each runs `podium.train.train`.

The run is decided here, once, before any worker starts: its directory and its resolved config
(config.yaml). A new run that stops before its first checkpoint leaves no directory behind.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from podium import distributed as dist
from podium import rundir, runlock
from podium.full_data import full_data_epochs, is_full_data
from podium.io import PodiumError
from podium.train import TrainHooks, train

log = logging.getLogger(__name__)

__all__ = ["main", "train_run", "worker", "join_launched_job"]


def main(cfg: DictConfig, run_dir: Path, hooks: TrainHooks | None = None) -> float | None:
    """`podium train`, called once per run inside the Hydra task, after Hydra chose `run_dir`.

    The run is decided here, once: its directory and its resolved config (written to
    config.yaml). Then it trains in this process (`trainer.devices=1`), in N worker processes
    launched here that are handed that directory and config (`trainer.devices=N|auto`, or
    `trainer.gpus_per_job=K`: K workers on K GPUs leased from the machine), or, when torchrun
    started this process, as one worker of that job. Returns the best score (Hydra sweepers
    optimise it). `hooks` (podium.search's trials) need the training in this process. With
    `debug=true`, the run is a debug run (podium.debugrun): a few steps, then tune, predict and
    validate on it."""
    if cfg.get("debug") and not dist.inside_launcher():
        from podium.debugrun import debug_run

        return debug_run(cfg, run_dir, train_run)
    return train_run(cfg, run_dir, hooks)


def train_run(cfg: DictConfig, run_dir: Path, hooks: TrainHooks | None = None) -> float | None:
    """Decide the run (its directory and config.yaml) and train it: see `main`."""
    if is_full_data(cfg) and not cfg.resume:
        try:
            cfg = _with_full_data_epochs(cfg)
        except PodiumError:
            _remove_unstarted_run_dir(run_dir)  # what Hydra made for it, and nothing else
            raise
    config = OmegaConf.to_container(cfg, resolve=True)
    if dist.inside_launcher():
        return join_launched_job(config, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_config(run_dir, config)
    try:
        return _train_here_or_in_workers(cfg, config, run_dir, hooks)
    except BaseException:
        if not cfg.resume and _remove_unstarted_run_dir(run_dir):
            log.info("removed %s: the run stopped before its first checkpoint", run_dir)
        raise


def _with_full_data_epochs(cfg: DictConfig) -> DictConfig:
    """fold=all: trainer.max_epochs from the command line, else from the recipe's CV runs."""
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    given = any(o.split("=", 1)[0].lstrip("+~") == "trainer.max_epochs" for o in overrides)
    epochs, source = full_data_epochs(cfg, given or not HydraConfig.initialized())
    log.info("fold=all: %d epochs (%s)", epochs, source)
    cfg = cfg.copy()
    cfg.trainer.max_epochs = epochs
    return cfg


def _train_here_or_in_workers(
    cfg: DictConfig, config: dict, run_dir: Path, hooks: TrainHooks | None
) -> float | None:
    tc = cfg.trainer
    if hooks is not None:
        if tc.gpus_per_job or dist.resolve_devices(tc.devices) != 1:
            raise PodiumError(
                f"trainer.devices={tc.devices}, trainer.gpus_per_job={tc.gpus_per_job}: "
                "a search trial trains in one process, on the one GPU its worker leased"
            )
        return train(OmegaConf.create(config), run_dir, hooks)["best_score"]
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
            rundir.write_config(run_dir, config)
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


STARTUP_FILES = {".hydra", rundir.CONFIG, rundir.TENSORBOARD, rundir.METRICS}  # and *.log


def _remove_unstarted_run_dir(path: Path) -> bool:
    """Remove a run directory that holds only what Hydra and podium write before the first
    checkpoint (a run that never got anywhere would otherwise be picked up by `runs=[...]`
    globs). Anything else in it, e.g. a checkpoint or a failed run's summary.json, keeps it,
    and so does a training that holds it (another command training into the same folder).
    True if it was removed."""
    if not path.is_dir() or runlock.in_use(path):
        return False
    if all(e.name in STARTUP_FILES or e.suffix == ".log" for e in path.iterdir()):
        shutil.rmtree(path, ignore_errors=True)
        return True
    return False
