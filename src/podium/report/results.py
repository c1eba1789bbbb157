"""The ledger joined with the run directories: runs, submissions and experiments.

The CV of a run is its best validation score (summary.json's `best_score`); an experiment is all
the runs recorded under one `experiment_name`, and a submission counts toward an experiment only
when every run behind it is one of that experiment's.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from podium import io, ledger, rundir
from podium.config import REPLICATE_KEYS
from podium.io import PodiumError

# What `podium tune` and `podium predict` leave in their run folders (see podium/infer.py).
INFERENCE_FILES = (rundir.PREDICTED, rundir.TUNED)


@dataclass
class Run:
    """One training run: its ledger record, and its folder's files read on demand."""

    id: str  # the run directory relative to the competition's runs folder (or its full path)
    record: dict

    @property
    def experiment(self) -> str:
        return str(self.record.get("experiment_name") or "unnamed")

    @property
    def fold(self) -> int | str:
        """The validation fold, or "all" for a full-data model (no validation, no score)."""
        return "all" if self.full_data else int(self.record["fold"])

    @property
    def full_data(self) -> bool:
        return str(self.record.get("fold")) == "all"

    @property
    def seed(self) -> int:
        return int(self.record["seed"])

    @property
    def score(self) -> float | None:
        """The run's CV; None when it never validated (or the score is not a number)."""
        value = _float_or_none(self.record.get("best_score"))
        return value if value is not None and math.isfinite(value) else None

    @property
    def run_dir(self) -> Path | None:
        value = self.record.get("run_dir")
        return Path(value) if value else None

    @cached_property
    def config(self) -> dict | None:
        """The run's resolved config.yaml as nested dicts (None when the folder is gone)."""
        path = self.run_dir / rundir.CONFIG if self.run_dir else None
        if path is None or not path.is_file():
            return None
        try:
            return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        except Exception as e:
            raise PodiumError(f"{path}: cannot read the run's config ({e})") from None

    @cached_property
    def settings(self) -> dict[str, str] | None:
        """The config flattened to dotted keys with JSON values (comparable, printable)."""
        return None if self.config is None else flatten(self.config)


@dataclass
class Submission:
    """One submitted file: its ledger record and the runs behind it."""

    record: dict
    runs: list[Run]
    unresolved: list[str]  # the run entries of the record that match no run in the ledger

    @property
    def ref(self) -> str:
        return str(self.record["ref"])

    @property
    def public(self) -> float | None:
        return _float_or_none(self.record.get("public_score"))

    @property
    def private(self) -> float | None:
        return _float_or_none(self.record.get("private_score"))

    @property
    def experiments(self) -> list[str]:
        return sorted({run.experiment for run in self.runs})

    @property
    def cv(self) -> float | None:
        """Mean CV of the runs behind the file (for an ensemble: of its members)."""
        scores = [r.score for r in self.runs if r.score is not None]
        return statistics.fmean(scores) if scores else None


@dataclass
class Experiment:
    """The runs recorded under one experiment_name, and the submissions made from them alone."""

    name: str
    runs: list[Run]
    submissions: list[Submission] = field(default_factory=list)

    @property
    def full_data_runs(self) -> list[Run]:
        """Its full-data models (fold=all): listed apart, never in the CV."""
        return [r for r in self.runs if r.full_data]

    @property
    def scored(self) -> list[Run]:
        return [r for r in self.runs if r.score is not None]

    @property
    def scores(self) -> list[float]:
        return [r.score for r in self.scored]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.scores) if self.scores else None

    @property
    def std(self) -> float | None:
        return _stdev(self.scores)

    @property
    def folds(self) -> list[int]:
        return sorted({r.fold for r in self.scored})

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.scored})

    def cell(self, seed: int, fold: int) -> float | None:
        """CV of (seed, fold); two runs of the same cell (a repeat) are averaged."""
        scores = [r.score for r in self.scored if r.seed == seed and r.fold == fold]
        return statistics.fmean(scores) if scores else None

    @property
    def seed_means(self) -> dict[int, float]:
        """Each seed's CV: the mean over the folds it ran."""
        means = {}
        for seed in self.seeds:
            cells = [self.cell(seed, f) for f in self.folds]
            means[seed] = statistics.fmean([c for c in cells if c is not None])
        return means

    @property
    def seed_std(self) -> float | None:
        return _stdev(list(self.seed_means.values()))

    def fold_stats(self, fold: int) -> tuple[float | None, float | None]:
        """(mean, std) over seeds of one fold."""
        cells = [c for c in (self.cell(s, fold) for s in self.seeds) if c is not None]
        return (statistics.fmean(cells) if cells else None), _stdev(cells)

    @property
    def best_submission(self) -> Submission | None:
        scored = [s for s in self.submissions if s.public is not None]
        return max(scored, key=lambda s: s.public) if scored else None

    @cached_property
    def settings(self) -> dict[str, tuple[str, ...]]:
        """Each config key's distinct values over the experiment's runs (replicate keys aside)."""
        values: dict[str, list[str]] = {}
        for run in self.runs:
            for key, value in (run.settings or {}).items():
                if key not in REPLICATE_KEYS and value not in values.setdefault(key, []):
                    values[key].append(value)
        return {key: tuple(v) for key, v in values.items()}

    @property
    def config(self) -> dict | None:
        """The resolved config of its first run that still has one."""
        return next((r.config for r in self.runs if r.config is not None), None)

    @property
    def config_hashes(self) -> list[str]:
        return sorted({str(r.record.get("config_hash")) for r in self.runs})


@dataclass
class Results:
    """A competition's ledger: every training run, experiment and submission it records."""

    competition: str
    path: Path  # the ledger file
    runs: list[Run]
    experiments: dict[str, Experiment]  # in order of first run
    submissions: list[Submission]
    metric: str

    @property
    def folder(self) -> Path:
        return self.path.parent

    @cached_property
    def _by_key(self) -> dict[str, Run]:
        index = {}
        for run in self.runs:
            index[run.id] = run
            if run.run_dir:
                index[str(run.run_dir.resolve())] = run
        return index

    def find_run(self, entry: str) -> Run | None:
        """A run by id (relative to the competition's runs folder) or by its directory."""
        entry = str(entry).rstrip("/")
        for key in (entry, Path(entry).expanduser().resolve(), (self.folder / entry).resolve()):
            if str(key) in self._by_key:
                return self._by_key[str(key)]
        return None

    def resolve(self, entry: str) -> list[Run] | None:
        """The runs behind a name: a run (id or directory), an experiment, or a `podium predict`
        / `podium tune` folder (the runs its predict.json / tuned.json lists). None when nothing
        matches."""
        run = self.find_run(entry)
        if run is not None:
            return [run]
        if entry in self.experiments:
            return list(self.experiments[entry].runs)
        folder = Path(entry).expanduser()
        if not folder.is_dir():
            folder = self.folder / entry
        for name in INFERENCE_FILES:
            if (folder / name).is_file():
                listed = read_json_dict(folder / name).get("runs") or []
                found = [self.find_run(str(item)) for item in listed]
                return [r for r in found if r is not None] or None
        return None


def load_results(cfg: DictConfig) -> Results:
    """Read the competition's ledger and join runs, experiments and submissions."""
    competition = str(cfg.competition.name)
    path = ledger.ledger_path(Path(cfg.paths.runs_dir), competition)
    records = ledger.read(path)
    folder = path.parent.resolve()
    runs = []
    for record in ledger.runs(records):
        if record.get("fold") is None or record.get("seed") is None:
            continue  # not a training run (e.g. an inference stage that logged itself)
        runs.append(Run(id=run_id(record.get("run_dir"), folder), record=record))
    experiments: dict[str, Experiment] = {}
    for run in runs:
        experiments.setdefault(run.experiment, Experiment(run.experiment, [])).runs.append(run)
    metric = next((str(r.record["metric"]) for r in runs if r.record.get("metric")), None)
    results = Results(
        competition, path, runs, experiments, [], metric or str(cfg.competition.metric)
    )
    for record in ledger.submissions(records):
        found, unresolved = [], []
        entries = record.get("runs") or []
        if not entries and record.get("file"):
            # A submission.csv inside a predict folder: that folder made it.
            entries = [str(Path(record["file"]).parent)]
        for entry in entries:
            matched = results.resolve(str(entry))
            found += matched or []
            if matched is None:
                unresolved.append(str(entry))
        submission = Submission(record, list({id(r): r for r in found}.values()), unresolved)
        results.submissions.append(submission)
        # A submission counts toward an experiment's LB only if all its runs are that experiment's.
        if len(submission.experiments) == 1 and not unresolved:
            experiments[submission.experiments[0]].submissions.append(submission)
    return results


def run_id(run_dir: str | None, folder: Path) -> str:
    """A run (or inference) folder as shown: relative to the competition's runs folder when it
    lies below it, else its full path; "?" when the ledger names none."""
    if not run_dir:
        return "?"
    path = Path(run_dir).resolve()
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


def select_experiments(results: Results, names: Any) -> list[Experiment]:
    """`experiments=[A,B]` (or one name), else all; an unknown name is an error naming it."""
    if not results.experiments:
        raise PodiumError(
            f"{results.path}: no training runs recorded yet for {results.competition} "
            "(podium train writes them)"
        )
    if names is None or names == "" or (isinstance(names, Sequence) and not names):
        return list(results.experiments.values())
    wanted = [str(names)] if isinstance(names, str) else [str(n) for n in names]
    unknown = [n for n in wanted if n not in results.experiments]
    if unknown:
        raise PodiumError(
            f"experiments: no runs of {', '.join(unknown)} in {results.path} "
            f"(known: {', '.join(results.experiments)})"
        )
    return [results.experiments[n] for n in wanted]


def _stdev(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def read_json_dict(path: Path) -> dict:
    """A JSON object from a file podium wrote (predict.json, tuned.json); {} for another JSON
    value, a PodiumError naming the file when it is not JSON."""
    try:
        data = io.read_json(path)
    except (OSError, ValueError) as e:
        raise PodiumError(f"{path}: not readable JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> {dotted.key: JSON value}; lists and empty dicts stay whole values."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value, sort_keys=True, default=str)
    return flat
