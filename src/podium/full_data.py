"""Full-data models (`podium train fold=all`): how many epochs they train.

After cross-validation has chosen the recipe and its length, a full-data model trains on every
labelled image for a fixed number of epochs: nothing is left to validate on, so nothing can pick
the best epoch or stop early. By default that number comes from the CV runs of the same recipe
in the competition's ledger: the median of their best epochs (summary.json's `best_epoch`). The
same recipe: the same result config (podium.config) once fold, seed and the keys that only say
how long or how often to validate are set aside (`RUN_LENGTH_KEYS`). With no such run, the
command line must say `trainer.max_epochs=N`.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from podium import ledger, rundir
from podium.config import ConfigError, result_config
from podium.io import PodiumError

log = logging.getLogger(__name__)

__all__ = ["RUN_LENGTH_KEYS", "is_full_data", "recipe", "cv_best_epochs", "full_data_epochs"]

# How long a run trains and how it validates: CV runs and the full-data model differ in them.
RUN_LENGTH_KEYS = (
    "trainer.max_epochs",
    "trainer.early_stopping",
    "trainer.val_every",
    "trainer.save_oof",
)


def is_full_data(config: DictConfig | dict) -> bool:
    """Whether a run config (or a ledger record) is a full-data model's (fold=all)."""
    fold = config.get("fold")
    return str(fold) == "all"


def recipe(config: DictConfig | dict) -> dict:
    """What a run computes, without fold, seed and `RUN_LENGTH_KEYS`."""
    kept = result_config(config, replicates=False)
    for key in RUN_LENGTH_KEYS:
        group, name = key.split(".")
        kept.get(group, {}).pop(name, None)
    return kept


def cv_best_epochs(cfg: DictConfig) -> list[tuple[Path, int]]:
    """(run folder, best epoch) of the competition's finished fold runs of `cfg`'s recipe."""
    path = ledger.ledger_path(Path(cfg.paths.runs_dir), str(cfg.competition.name))
    wanted, found = recipe(cfg), {}
    for record in ledger.runs(ledger.read(path)):
        if is_full_data(record) or record.get("status") == "failed":
            continue
        best, run_dir = record.get("best_epoch"), Path(str(record.get("run_dir", "")))
        if not isinstance(best, int) or best < 1 or not rundir.is_run(run_dir):
            continue
        try:
            same = recipe(OmegaConf.to_container(rundir.read_config(run_dir))) == wanted
        except (PodiumError, ValueError):
            continue
        if same:
            found[run_dir.resolve()] = best  # a resumed run's later record wins
    return sorted(found.items())


def full_data_epochs(cfg: DictConfig, given: bool) -> tuple[int, str]:
    """(epochs, where the number comes from) of a full-data run: `trainer.max_epochs` when the
    command line `given` it, else the median best epoch of the recipe's CV runs."""
    if given:
        return int(cfg.trainer.max_epochs), "trainer.max_epochs as given"
    runs = cv_best_epochs(cfg)
    if not runs:
        raise ConfigError(
            f"fold=all: no finished fold runs of this recipe in "
            f"{ledger.ledger_path(Path(cfg.paths.runs_dir), str(cfg.competition.name))} to take "
            "the epoch count from; give trainer.max_epochs=N"
        )
    best = [epoch for _, epoch in runs]
    epochs = max(1, round(statistics.median(best)))
    return epochs, f"the median best epoch of {len(runs)} CV runs of this recipe ({best})"
