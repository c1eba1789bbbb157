"""Reports from the ledger: `podium runs` (CV by experiment, config diffs) and `podium writeup`.

Everything shown comes from the ledger (`ledger.jsonl`) and the run directories it names
(config.yaml, metrics.csv, oof.npz, .hydra/overrides.yaml): no number is made up. The CV of a run
is its best validation score (summary.json's `best_score`); an experiment's CV is reported as
the mean over all its runs with two spreads, because one lucky seed is not a result:

    std (runs)          sample standard deviation (n-1) over all runs, folds and seeds together
    std of seed means   sample standard deviation of the per-seed CV (each seed's mean over its
                        folds): how much a single-seed CV moves when only the seed changes

    podium runs competition=X [experiments=[A,...]]    the table (and the runs of A, ...)
    podium runs competition=X diff=[A,B]               config differences of two runs/experiments
    podium writeup competition=X [experiments=[...]]   <paths.root_dir>/writeup/X.md + PNG figures
                                                       (+writeup_dir=DIR to write elsewhere)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shlex
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from podium import io, ledger
from podium.io import PodiumError

log = logging.getLogger(__name__)

__all__ = [
    "runs_command",
    "writeup_command",
    "load_results",
    "Results",
    "Experiment",
    "Run",
    "Submission",
    "config_diff",
    "oof_cases",
]

MISSING = "—"
TODO = "**[TODO: {}]**"
DIGITS = 4  # decimals of every score in tables
# Keys that say where or under which name a run was made, not how: never a config difference.
UNCOMPARED_PREFIXES = ("paths.", "hydra.")
UNCOMPARED_KEYS = {"experiment_name", "resume", "competition.dir", "competition.data_dir"}
# Keys that vary across the runs of one experiment by design.
REPLICATE_KEYS = {"fold", "seed"}
# Keys that change how a run is displayed or scheduled, not its result: ignored by ablations.
COSMETIC_KEYS = {"trainer.progress", "trainer.num_workers", "trainer.log_every"}
# What `podium tune` and `podium predict` leave in their run folders (see podium/infer.py).
INFERENCE_FILES = ("predict.json", "tuned.json")
# A config group whose name differs is one setting (loss bce_dice -> dice), not many keys.
GROUP_IDENTITY = {
    "loss": "loss.name",
    "optimizer": "optimizer.name",
    "scheduler": "scheduler.name",
    "augment": "augment.preset",
}


# =============================================================================================
# The ledger, joined with the run directories
@dataclass
class Run:
    id: str  # the run directory relative to the competition's runs folder (or its full path)
    record: dict

    @property
    def experiment(self) -> str:
        return str(self.record.get("experiment_name") or "unnamed")

    @property
    def fold(self) -> int:
        return int(self.record["fold"])

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
        path = self.run_dir / "config.yaml" if self.run_dir else None
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
    record: dict
    runs: list[Run]
    unresolved: list[str]

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
    name: str
    runs: list[Run]
    submissions: list[Submission] = field(default_factory=list)

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
                listed = _read_dict(folder / name).get("runs") or []
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
        runs.append(Run(id=_run_id(record.get("run_dir"), folder), record=record))
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


def _run_id(run_dir: str | None, folder: Path) -> str:
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


# =============================================================================================
# Formatting
def num(value: float | None, digits: int = DIGITS) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return MISSING
    return num(mean) if std is None else f"{num(mean)} ± {num(std)}"


def int_list(values: Iterable[int]) -> str:
    return ", ".join(str(v) for v in values) or MISSING


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def lb_text(submission: Submission | None) -> str:
    if submission is None:
        return MISSING
    return f"{num(submission.public)} / {num(submission.private)}"


def markdown_table(header: list[str], rows: list[list[Any]], right: Iterable[int] = ()) -> str:
    """A pipe table padded to column width (readable as plain text too); columns in `right`
    are right-aligned."""
    right = set(right)
    cells = [[str(c).replace("|", "\\|").replace("\n", " ") for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(header), rule, *(line(r) for r in cells)])


SPREAD_NOTE = (
    "std (runs): sample standard deviation (n-1) over all runs of the experiment, folds and "
    "seeds together. std of seed means: sample standard deviation of the per-seed CV (each "
    "seed's mean over its folds), the spread a single-seed result hides. "
    f"{MISSING}: fewer than two values."
)


def summary_table(experiments: list[Experiment]) -> str:
    header = [
        "Experiment",
        "Runs",
        "Folds",
        "Seeds",
        "CV mean ± std (runs)",
        "Std of seed means",
        "Best LB public / private",
    ]
    rows = [
        [
            e.name,
            len(e.scored),
            int_list(e.folds),
            int_list(e.seeds),
            mean_std(e.mean, e.std),
            num(e.seed_std),
            lb_text(e.best_submission),
        ]
        for e in experiments
    ]
    return markdown_table(header, rows, right=[1])


def runs_table(experiment: Experiment) -> str:
    header = [
        "Run",
        "Fold",
        "Seed",
        "CV",
        "Best epoch / epochs",
        "Status",
        "Duration s",
        "Images/s",
        "Config",
        "Finished",
    ]
    rows = [
        [
            r.id,
            r.fold,
            r.seed,
            num(r.score),
            f"{r.record.get('best_epoch', MISSING)} / {r.record.get('epochs_run', MISSING)}",
            r.record.get("status", MISSING),
            r.record.get("duration_s", MISSING),
            r.record.get("train_images_per_s", MISSING),
            r.record.get("config_hash", MISSING),
            r.record.get("time", MISSING),
        ]
        for r in experiment.runs
    ]
    return markdown_table(header, rows, right=[1, 2, 6, 7])


def submissions_table(submissions: list[Submission]) -> str:
    header = [
        "Ref",
        "Submitted",
        "Experiments",
        "Runs",
        "Mean CV of its runs",
        "Public LB",
        "Private LB",
        "Message",
    ]
    rows = []
    for s in submissions:
        experiments = ", ".join(s.experiments) or MISSING
        if s.unresolved:
            experiments += f" (+{len(s.unresolved)} unknown)"
        when = s.record.get("submitted_at") or s.record.get("first_time") or MISSING
        message = s.record.get("message") or ""
        rows.append(
            [
                s.ref,
                when,
                experiments,
                len(s.runs),
                num(s.cv),
                num(s.public),
                num(s.private),
                message,
            ]
        )
    return markdown_table(header, rows, right=[3])


# =============================================================================================
# Config differences and ablations
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


def _compared(key: str) -> bool:
    return key not in UNCOMPARED_KEYS and not key.startswith(UNCOMPARED_PREFIXES)


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) for every compared key whose values differ; None where a
    side lacks the key."""
    keys = [k for k in dict.fromkeys([*a, *b]) if _compared(k)]
    return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]


def setting_changes(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """`config_diff` in settings: a config group whose name changed is one setting (its other
    keys follow the name), and cosmetic keys are left out."""
    diff = [d for d in config_diff(a, b) if d[0] not in COSMETIC_KEYS]
    renamed = {g for g, key in GROUP_IDENTITY.items() if a.get(key) != b.get(key)}
    return [
        d
        for d in diff
        if d[0].split(".")[0] not in renamed or d[0] == GROUP_IDENTITY[d[0].split(".")[0]]
    ]


def show_value(value: Any) -> str:
    if value is None:
        return "(absent)"
    if isinstance(value, tuple):
        return " / ".join(show_value(v) for v in value)
    decoded = json.loads(value) if isinstance(value, str) else value
    return decoded if isinstance(decoded, str) else str(value)


def ablations(experiments: list[Experiment]) -> list[tuple[Experiment, Experiment, str, Any, Any]]:
    """Pairs of experiments whose configs differ in exactly one setting (earlier one first)."""
    pairs = []
    for i, a in enumerate(experiments):
        for b in experiments[i + 1 :]:
            if not a.settings or not b.settings or a.mean is None or b.mean is None:
                continue
            changes = setting_changes(a.settings, b.settings)
            if len(changes) == 1:
                pairs.append((a, b, *changes[0]))
    return pairs


def ablation_table(pairs) -> str:
    header = [
        "Setting",
        "Baseline",
        "Changed to",
        "Baseline experiment",
        "Changed experiment",
        "CV baseline",
        "CV changed",
        "Δ CV",
    ]
    rows = [
        [
            f"`{key}`",
            show_value(va),
            show_value(vb),
            a.name,
            b.name,
            mean_std(a.mean, a.std),
            mean_std(b.mean, b.std),
            f"{b.mean - a.mean:+.{DIGITS}f}",
        ]
        for a, b, key, va, vb in pairs
    ]
    return markdown_table(header, rows)


def diff_text(results: Results, targets: Any) -> str:
    """`podium runs diff=[A,B]`: the config differences of two runs or experiments."""
    if isinstance(targets, str) or len(targets) != 2:
        raise PodiumError(f"diff={targets}: give two runs or experiments, e.g. diff=[A,B]")
    sides = []
    for target in map(str, targets):
        run = results.find_run(target)
        if run is not None:
            if run.settings is None:
                raise PodiumError(f"diff: run {run.id}: no config.yaml in {run.run_dir}")
            settings = {k: (v,) for k, v in run.settings.items()}
            sides.append((f"run {run.id} ({run.experiment}, CV {num(run.score)})", settings))
        elif target in results.experiments:
            e = results.experiments[target]
            if not e.settings:
                raise PodiumError(f"diff: experiment {target}: none of its run folders remain")
            label = f"experiment {e.name} ({len(e.scored)} runs, CV {mean_std(e.mean, e.std)})"
            sides.append((label, e.settings))
        else:
            raise PodiumError(
                f"diff: '{target}' is neither a run (id or folder) nor an experiment in "
                f"{results.path} (experiments: {', '.join(results.experiments) or 'none'})"
            )
    (label_a, a), (label_b, b) = sides
    diff = config_diff(a, b)
    if label_a.startswith("experiment") or label_b.startswith("experiment"):
        diff = [d for d in diff if d[0] not in REPLICATE_KEYS]  # they vary within experiments
    lines = [f"A: {label_a}", f"B: {label_b}", ""]
    if not diff:
        return "\n".join(lines + ["No config differences (paths and names aside)."])
    rows = [[f"`{k}`", show_value(va), show_value(vb)] for k, va, vb in diff]
    return "\n".join(lines + [markdown_table(["Key", "A", "B"], rows)])


# =============================================================================================
# podium runs
def runs_command(cfg: DictConfig) -> int:
    """Print the experiments table (and the runs of the chosen experiments, or a diff)."""
    results = load_results(cfg)
    if cfg.get("diff"):
        print(diff_text(results, cfg.diff))
        return 0
    chosen = select_experiments(results, cfg.get("experiments"))
    n_runs = sum(len(e.runs) for e in chosen)
    print(
        f"{results.competition}: {plural(n_runs, 'run')} in {plural(len(chosen), 'experiment')}"
        f", {plural(len(results.submissions), 'submission')} (ledger {results.path})"
    )
    print(f"CV = each run's best validation {results.metric}.\n")
    print(summary_table(chosen))
    print(f"\n{SPREAD_NOTE}")
    for e in chosen:
        if len(e.config_hashes) > 1:
            print(
                f"Note: the runs of {e.name} use {len(e.config_hashes)} different configs "
                f"({', '.join(e.config_hashes)}); `diff=[RUN,RUN]` shows what differs."
            )
    if cfg.get("experiments"):
        for experiment in chosen:
            print(f"\n{experiment.name}:\n{runs_table(experiment)}")
    if results.submissions:
        print(f"\nSubmissions:\n{submissions_table(results.submissions)}")
    return 0


# =============================================================================================
# podium writeup: the method, from resolved configs
def pretraining(weights: Any) -> str:
    if weights is None:
        return "no pretraining (random initialisation)"
    if str(weights) == "imagenet":
        return "ImageNet-pretrained weights"
    return f"pretrained weights `{weights}`"


def describe_augment(augment: dict, image_size: Any) -> str:
    """The training pipeline exactly as podium.data builds it: transforms and probabilities."""
    from podium.data import build_transforms

    try:
        compose = build_transforms(OmegaConf.create(augment), image_size, train=True)
    except (KeyError, ValueError, TypeError):  # a preset this podium no longer has
        return f"preset `{augment.get('preset')}`"

    def name(t) -> str:
        inner = getattr(t, "transforms", None)
        label = type(t).__name__
        if inner:
            label += "(" + ", ".join(type(x).__name__ for x in inner) + ")"
        p = getattr(t, "p", 1.0)
        return label if p == 1.0 else f"{label} p={p:g}"

    steps = ", ".join(name(t) for t in compose.transforms) or "none"
    return f"preset `{augment.get('preset')}`: {steps}"


def describe_loss(loss: dict) -> str:
    terms = " + ".join(f"{w:g}·{t}" for t, w in (loss.get("weights") or {}).items())
    text = f"`{loss.get('name')}` = {terms}"
    weights = loss.get("weights") or {}
    if "dice" in weights and loss.get("dice"):
        text += (
            f" (soft Dice, reduction {loss['dice'].get('reduction')}, "
            f"smooth {loss['dice'].get('smooth')})"
        )
    if "lovasz" in weights and loss.get("lovasz"):
        text += f" (Lovász hinge, per image {loss['lovasz'].get('per_image')})"
    if "focal" in weights and loss.get("focal"):
        f = loss["focal"]
        text += f" (focal, gamma {f.get('gamma')}, alpha {f.get('alpha')})"
    return text


def _spread(values: Iterable[Any]) -> str:
    distinct = sorted({v for v in values if v is not None}, key=str)
    if not distinct:
        return MISSING
    if len(distinct) == 1:
        return str(distinct[0])
    if all(isinstance(v, (int, float)) for v in distinct):
        return f"{min(distinct)}–{max(distinct)}"
    return ", ".join(map(str, distinct))


def method_facts(experiment: Experiment) -> dict[str, str]:
    """Label -> sentence describing how the experiment trained, from its resolved config and
    its runs' summaries."""
    c = experiment.config
    records = [r.record for r in experiment.runs]
    try:
        facts = _facts_from_config(c, records) if c is not None else None
    except (KeyError, TypeError, IndexError):  # a config from another podium version
        facts = None
    if facts is None:
        first = records[0]
        facts = {
            "Architecture": f"{first.get('arch')} with encoder {first.get('encoder')}",
            "Encoder": pretraining(first.get("encoder_weights")),
            "Loss": f"`{first.get('loss')}`",
            "Details": TODO.format("no readable config.yaml in the run folders; add the settings"),
        }
    if len(experiment.config_hashes) > 1:
        facts["Note"] = (
            f"the runs of this experiment use {len(experiment.config_hashes)} different "
            f"configurations (config hashes {', '.join(experiment.config_hashes)})"
        )
    return facts


def _facts_from_config(c: dict, records: list[dict]) -> dict[str, str]:
    m, t, o, s = c["model"], c["trainer"], c["optimizer"], c["scheduler"]
    comp = c["competition"]
    size = comp.get("image_size")
    architecture = f"{m['arch']} (segmentation_models_pytorch)"
    if m.get("kwargs"):
        architecture += f", arguments {m['kwargs']}"
    size_text = f"resized to {size[0]}×{size[1]}" if size else "native image size"
    optimizer = f"{o['name']}, lr {o['lr']}, weight decay {o['weight_decay']} (not on biases "
    optimizer += "and norm weights)"
    if o.get("betas"):
        optimizer += f", betas {o['betas']}"
    if "momentum" in o:
        optimizer += f", momentum {o['momentum']}, nesterov {o.get('nesterov')}"
    schedule = f"{s['name']}, {s.get('warmup_epochs')} warm-up epochs, minimum lr ratio "
    schedule += f"{s.get('min_lr_ratio')}"
    if s.get("name") == "poly":
        schedule += f", power {s.get('power')}"
    stopping = t.get("early_stopping")
    ema = "none"
    if t.get("ema"):
        ramp = " (warm-up ramp)" if t.get("ema_warmup") else ""
        ema = f"decay {t['ema']}{ramp}; validation and checkpoints use the averaged weights"
    facts = {
        "Architecture": architecture,
        "Encoder": f"`{m['encoder']}`, {pretraining(m.get('encoder_weights'))}",
        "Input": f"{size_text}, {comp.get('in_channels')} channels, normalised with mean "
        f"{m.get('mean')} and std {m.get('std')}, padded to a multiple of the encoder's output "
        f"stride ({m.get('pad_mode')} padding) and cropped back",
        "Augmentation": describe_augment(c["augment"], size),
        "Loss": describe_loss(c["loss"]),
        "Optimizer": optimizer,
        "Batch": f"{_spread(r.get('global_batch') for r in records)} images per optimizer step "
        f"({t['batch_size']} per device × {_spread(r.get('world_size') for r in records)} "
        f"device(s) × {t['accumulate']} accumulation), gradient clipping {t.get('grad_clip')}",
        "Schedule": schedule + ", stepped every optimizer step",
        "Epochs": f"at most {t['max_epochs']}, early stopping "
        + (f"after {stopping} epochs without improvement" if stopping else "off")
        + f"; epochs run {_spread(r.get('epochs_run') for r in records)}, best epoch "
        f"{_spread(r.get('best_epoch') for r in records)}",
        "EMA of the weights": ema,
        "Precision and hardware": f"{_spread(r.get('precision') for r in records)} on "
        f"{_spread(r.get('device') for r in records)}",
        "Validation": f"`{comp.get('metric')}` per image, averaged over the fold's images; "
        f"threshold {t.get('threshold')}; {comp.get('n_folds')} folds (folds_seed "
        f"{comp.get('folds_seed')}), groups kept within a fold",
    }
    return facts


def reproduce_command(experiment: Experiment) -> str | None:
    """`podium train` with the command-line overrides the runs were started with (from Hydra's
    .hydra/overrides.yaml); values that differ across runs become a `-m` sweep, noted when that
    sweep makes more runs than were recorded. None when a run folder lacks the file."""
    values: dict[str, list[str]] = {}
    for run in experiment.runs:
        path = run.run_dir / ".hydra" / "overrides.yaml" if run.run_dir else None
        if path is None or not path.is_file():
            return None
        for override in OmegaConf.to_container(OmegaConf.load(path)) or []:
            key, _, value = str(override).partition("=")
            if key.lstrip("+~").startswith(UNCOMPARED_PREFIXES) or key == "resume":
                continue  # machine-specific paths
            if value not in values.setdefault(key, []):
                values[key].append(value)
    combinations = math.prod(len(v) for v in values.values())
    parts = ["podium", "train", *(["-m"] if combinations > 1 else [])]
    parts += [shlex.quote(f"{k}={','.join(v)}") for k, v in values.items()]
    command = f"`{' '.join(parts)}`"
    if combinations != len(experiment.runs):
        command += f" ({combinations} combinations; {plural(len(experiment.runs), 'run')} recorded)"
    return command


def _read_dict(path: Path) -> dict:
    try:
        data = io.read_json(path)
    except (OSError, ValueError) as e:
        raise PodiumError(f"{path}: not readable JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def _ensemble_text(results: Results, listed: Iterable[Any]) -> str:
    """'4 runs (2 × A, 2 × B)' for run directories as predict.json / tuned.json list them."""
    counts: dict[str, int] = {}
    unknown = 0
    for item in listed:
        run = results.find_run(str(item))
        if run is None:
            unknown += 1
        else:
            counts[run.experiment] = counts.get(run.experiment, 0) + 1
    parts = [f"{n} × {e}" for e, n in counts.items()]
    parts += [f"{unknown} not in the ledger"] if unknown else []
    return f"{plural(sum(counts.values()) + unknown, 'run')} ({', '.join(parts) or MISSING})"


def _postprocess_text(pp: dict) -> str:
    """{"threshold": 0.45, "min_area": 12.0} -> 'threshold 0.45, min_area 12'."""
    shown = (f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in pp.items())
    return ", ".join(shown)


def inference_lines(results: Results, chosen: set[str]) -> list[str]:
    """Bullets for every `podium tune` (tuned.json) and `podium predict` (predict.json) folder
    under the competition's runs folder that used runs of the `chosen` experiments, in the terms
    those files record."""

    def relevant(data: dict) -> bool:
        runs = [results.find_run(str(item)) for item in data.get("runs") or []]
        return any(r is not None and r.experiment in chosen for r in runs)

    lines = []
    for path in sorted(results.folder.glob("**/tuned.json")):
        t = _read_dict(path)
        if not relevant(t):
            continue
        folder = _run_id(str(path.parent), results.folder)
        line = (
            f"- Post-processing tuned on out-of-fold predictions (`{folder}`, "
            f"{t.get('images')} images of {_ensemble_text(results, t.get('runs') or [])}): "
            f"{_postprocess_text(t.get('postprocess') or {})}"
        )
        if t.get("tta"):
            line += f", TTA `{t['tta']}`"
        if t.get("default_score") is not None and t.get("tuned_score") is not None:
            line += (
                f"; OOF {t.get('metric', results.metric)} {t['default_score']:.4f} with the "
                f"defaults ({_postprocess_text(t.get('default') or {})}) -> "
                f"{t['tuned_score']:.4f} tuned"
            )
        lines.append(line + ".")
    for path in sorted(results.folder.glob("**/predict.json")):
        p = _read_dict(path)
        if not relevant(p):
            continue
        folder = _run_id(str(path.parent), results.folder)
        weights = p.get("run_weights") or []
        equal = len(set(weights)) <= 1
        line = (
            f"- Test predictions (`{folder}`): probabilities averaged over "
            f"{_ensemble_text(results, p.get('runs') or [])}"
            + ("" if equal else f" with weights {weights}")
            + f"; TTA `{p.get('tta')}` ({plural(int(p.get('views') or 1), 'view')}"
            + (f", scales {p['tta_scales']}" if (p.get("tta_scales") or [1.0]) != [1.0] else "")
            + f"); post-processing {_postprocess_text(p.get('postprocess') or {})} "
            + (
                f"(tuned in `{_run_id(str(Path(p['tuned']).parent), results.folder)}`)"
                if p.get("tuned")
                else "(not tuned)"
            )
        )
        if p.get("tile_size"):
            line += f"; tiles of {p['tile_size']} pixels"
        if p.get("local_score") is not None:
            line += f"; local score {p['local_score']:.4f}"
        lines.append(line + ".")
    return lines


# =============================================================================================
# Figures (matplotlib's Agg backend through Figure objects: no display, no global state)
def _save(fig, path: Path) -> None:
    with io.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")


def _colours(names: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def plot_learning_curves(experiments: list[Experiment], metric: str, path: Path) -> bool:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4))
    ax_score, ax_loss = fig.subplots(1, 2)
    colours = _colours([e.name for e in experiments])
    drawn = 0
    for e in experiments:
        label = e.name  # once per experiment: the legend names experiments, not runs
        for run in e.runs:
            metrics = run.run_dir / "metrics.csv" if run.run_dir else None
            if metrics is None or not metrics.is_file():
                continue
            rows = io.read_csv_rows(metrics)
            colour = colours[e.name]
            scored = [(int(r["epoch"]), float(r["val_score"])) for r in rows if r["val_score"]]
            if scored:
                ax_score.plot(
                    *zip(*scored, strict=True), "o-", color=colour, alpha=0.7, ms=3, label=label
                )
            losses = [(int(r["epoch"]), float(r["train_loss"])) for r in rows if r["train_loss"]]
            if losses:
                ax_loss.plot(
                    *zip(*losses, strict=True), "o-", color=colour, alpha=0.7, ms=3, label=label
                )
            vals = [(int(r["epoch"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
            if vals:
                ax_loss.plot(*zip(*vals, strict=True), "x--", color=colour, alpha=0.7, ms=4)
            drawn += 1
            label = None
    if not drawn:
        return False
    ax_score.set(xlabel="epoch", ylabel=f"validation {metric}", title="Validation score")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss (train: dots, validation: crosses)")
    for ax in (ax_score, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_cv_vs_lb(submissions: list[Submission], metric: str, path: Path) -> bool:
    from matplotlib.figure import Figure

    points = [s for s in submissions if s.cv is not None and s.public is not None]
    if not points:
        return False
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    names = sorted({" + ".join(s.experiments) for s in points})
    colours = _colours(names)
    for name in names:
        group = [s for s in points if " + ".join(s.experiments) == name]
        ax.scatter(
            [s.cv for s in group],
            [s.public for s in group],
            color=colours[name],
            label=f"{name} (public)",
        )
        private = [s for s in group if s.private is not None]
        if private:
            ax.scatter(
                [s.cv for s in private],
                [s.private for s in private],
                facecolors="none",
                edgecolors=colours[name],
                label=f"{name} (private)",
            )
    for s in points:
        ax.annotate(s.ref, (s.cv, s.public), fontsize=7, xytext=(3, 3), textcoords="offset points")
    values = [v for s in points for v in (s.cv, s.public, s.private) if v is not None]
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.1 or 0.01
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ":", color="grey", lw=1)
    ax.set(
        xlabel=f"CV {metric} (mean of the submission's runs)",
        ylabel=f"leaderboard {metric}",
        title="CV vs leaderboard",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


@dataclass
class Case:
    id: str
    score: float
    prob: np.ndarray  # CxHxW uint8 (p * 255)
    truth: np.ndarray  # as the metric takes it: HxW (binary, multiclass) or CxHxW
    run: Run


def oof_cases(run: Run, competition) -> list[Case]:
    """Every validation image of a run's oof.npz, scored with the competition metric at the
    run's validation threshold (their mean is the run's best_score)."""
    from podium.models import binarize

    path = run.run_dir / "oof.npz"
    task, threshold = competition.task, float(run.config["trainer"]["threshold"])
    cases = []
    with np.load(path, allow_pickle=False) as oof:
        for i, image_id in enumerate(oof["ids"].tolist()):
            prob, mask = oof[f"prob_{i}"], oof[f"mask_{i}"]
            truth = mask[0] if task == "binary" else mask
            score = competition.score_image(binarize(prob / 255.0, task, threshold), truth)
            cases.append(Case(str(image_id), float(score), prob, truth, run))
    return cases


def _label_map(mask: np.ndarray) -> np.ndarray:
    """HxW class indices (0 = nothing) for drawing any task's mask: binary and multiclass masks
    already are; a multilabel CxHxW mask shows its first class present at each pixel."""
    if mask.ndim == 2:
        return mask.astype(np.int64)
    return np.where(mask.any(0), mask.argmax(0) + 1, 0)


def _rgb(image: np.ndarray) -> np.ndarray:
    """HxWx3 for drawing, whatever channels the adapter reads (grey, RGB, more)."""
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]


def _overlay(image: np.ndarray, labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32) / 255.0
    shown = labels > 0
    out[shown] = 0.5 * out[shown] + 0.5 * colours[(labels[shown] - 1) % len(colours)]
    return out


def plot_validation_grid(experiment: Experiment, metric: str, path: Path) -> str | None:
    """Best, median and worst validation images of the experiment (one seed, all its folds):
    image, ground truth and prediction. Returns a caption, or None when nothing can be drawn."""
    import cv2
    from matplotlib.figure import Figure

    from podium.competition import load_competition
    from podium.models import binarize

    usable = [
        r for r in experiment.runs if r.config and r.run_dir and (r.run_dir / "oof.npz").is_file()
    ]
    if not usable:
        return None
    seed = min(r.seed for r in usable)
    runs = list({r.fold: r for r in reversed([r for r in usable if r.seed == seed])}.values())
    competition = load_competition(OmegaConf.create(runs[0].config))
    cases = [c for run in runs for c in oof_cases(run, competition)]
    # On ties (many empty images score 1), prefer a case with something to see.
    cases.sort(key=lambda c: (c.score, bool(c.truth.any())))
    picks = {"best": cases[-1], "median": cases[len(cases) // 2], "worst": cases[0]}
    try:
        samples = {s.id: s for s in competition.train_samples()}
        images = {k: _rgb(competition.read_image(samples[c.id])) for k, c in picks.items()}
    except (PodiumError, OSError, KeyError) as e:
        log.warning("validation grid left out: the training images are not readable (%s)", e)
        return None
    fig = Figure(figsize=(9, 3 * len(picks)))
    axes = fig.subplots(len(picks), 3, squeeze=False)
    palette = np.array([(0.1, 0.9, 0.2), (1.0, 0.2, 0.2), (0.2, 0.4, 1.0), (1.0, 0.8, 0.1)])
    # Binary: truth green, prediction red. Several classes: one colour per class in both.
    predicted = palette[1:] if competition.task == "binary" else palette
    for row, (label, case) in zip(axes, picks.items(), strict=True):
        h, w = case.prob.shape[-2:]
        image = images[label]
        if image.shape[:2] != (h, w):  # trained on resized images: show them at that size
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        threshold = float(case.run.config["trainer"]["threshold"])
        pred = binarize(case.prob / 255.0, competition.task, threshold)
        panels = [
            (image / 255.0, f"{label}: {case.id} (fold {case.run.fold})"),
            (_overlay(image, _label_map(case.truth), palette), "ground truth"),
            (
                _overlay(image, _label_map(pred), predicted),
                f"prediction, {metric} {case.score:.3f}",
            ),
        ]
        for ax, (picture, title) in zip(row, panels, strict=True):
            ax.imshow(picture)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    _save(fig, path)
    return (
        f"Validation images of `{experiment.name}` (seed {seed}, folds "
        f"{int_list(sorted(r.fold for r in runs))}, out-of-fold predictions of each run's best "
        f"epoch): best, median and worst of {len(cases)} by per-image {metric}; ground truth and "
        "prediction overlaid."
    )


# =============================================================================================
# podium writeup
STAMP = (
    "<!-- Drafted by `podium writeup` from the ledger and run folders. Edit freely: once edited, "
    "podium will not overwrite it unless force=true. sha256:{} -->"
)


def writeup_dir(cfg: DictConfig) -> Path:
    """`writeup_dir` when given (+writeup_dir=...), else <paths.root_dir>/writeup."""
    return Path(cfg.get("writeup_dir") or Path(cfg.paths.root_dir) / "writeup")


def writeup_command(cfg: DictConfig) -> int:
    results = load_results(cfg)
    experiments = select_experiments(results, cfg.get("experiments"))
    out = writeup_dir(cfg) / f"{results.competition}.md"
    _check_not_edited(out, bool(cfg.get("force")))
    text = build_writeup(results, experiments, out.parent, cfg)
    body = text.encode()
    io.write_text(out, STAMP.format(hashlib.sha256(body).hexdigest()) + "\n" + text)
    log.info("wrote %s", out)
    print(out)
    return 0


def _check_not_edited(path: Path, force: bool) -> None:
    if force or not path.is_file():
        return
    first, _, rest = path.read_text().partition("\n")
    stamp = re.search(r"sha256:([0-9a-f]{64})", first)
    if not stamp or hashlib.sha256(rest.encode()).hexdigest() != stamp.group(1):
        raise PodiumError(
            f"{path}: edited since podium wrote it; move it away or add force=true to overwrite"
        )


def build_writeup(results: Results, experiments: list[Experiment], folder: Path, cfg) -> str:
    """The Markdown text; writes the figures into `folder` (stale ones are removed)."""
    name, metric = results.competition, results.metric
    figures = {
        "curves": folder / f"{name}_learning_curves.png",
        "cv_lb": folder / f"{name}_cv_vs_lb.png",
        "grid": folder / f"{name}_validation_grid.png",
    }
    folder.mkdir(parents=True, exist_ok=True)
    for figure in figures.values():
        figure.unlink(missing_ok=True)
    chosen = {e.name for e in experiments}
    submissions = [s for s in results.submissions if chosen & set(s.experiments)]
    best = max(experiments, key=lambda e: -1e300 if e.mean is None else e.mean)
    n_runs = sum(len(e.runs) for e in experiments)
    try:  # a path a reader can follow in the project, not this machine's absolute one
        ledger_shown = results.path.resolve().relative_to(Path(cfg.paths.root_dir).resolve())
    except ValueError:
        ledger_shown = results.path

    doc = [f"# {name}: {TODO.format('title')}", ""]
    doc += [
        f"_Draft generated on {time.strftime('%Y-%m-%d')} by `podium writeup` from "
        f"{plural(n_runs, 'run')} in {plural(len(experiments), 'experiment')} (ledger "
        f"`{ledger_shown}`). Every number comes "
        "from the ledger and the run folders; what a person must add is marked "
        f"{TODO.format('...')}._",
        "",
        "## Summary",
        "",
        TODO.format("the approach, the result and what mattered most, in a few sentences"),
        "",
    ]
    doc += ["## Task and data", "", *task_lines(results, experiments, cfg), ""]
    doc += ["## Method", "", *method_lines(results, experiments), ""]
    doc += ["## Results", "", *results_lines(results, experiments, submissions), ""]
    pairs = ablations(experiments)
    doc += ["## Ablations", ""]
    if pairs:
        doc += [
            "Experiments whose configs differ in exactly one setting; Δ CV = changed minus "
            "baseline mean. A difference smaller than the spread across seeds is not evidence.",
            "",
            ablation_table(pairs),
            "",
        ]
    else:
        doc += ["No two experiments differ in exactly one setting.", ""]
    doc += ["## Figures", ""]
    if plot_learning_curves(experiments, metric, figures["curves"]):
        doc += [
            f"![Learning curves]({figures['curves'].name})",
            "",
            f"Learning curves of every run (validation {metric}; losses), coloured by experiment.",
            "",
        ]
    if plot_cv_vs_lb(submissions, metric, figures["cv_lb"]):
        doc += [
            f"![CV vs leaderboard]({figures['cv_lb'].name})",
            "",
            "CV (mean of each submission's runs) against its leaderboard scores; the dotted "
            "line is CV = LB.",
            "",
        ]
    caption = plot_validation_grid(best, metric, figures["grid"])
    if caption:
        doc += [f"![Validation cases]({figures['grid'].name})", "", caption, ""]
    else:
        doc += [
            TODO.format(f"validation images: no oof.npz or training images for {best.name}"),
            "",
        ]
    doc += [
        "## What did not work",
        "",
        TODO.format("ideas tried and dropped, and why"),
        "",
        "## Acknowledgements and links",
        "",
        TODO.format("code link, data licence, people to thank"),
        "",
    ]
    return "\n".join(doc)


def task_lines(results: Results, experiments: list[Experiment], cfg) -> list[str]:
    config = next((e.config for e in experiments if e.config), None)
    comp = (config or {}).get("competition") or OmegaConf.to_container(cfg.competition)
    slug = comp.get("kaggle")
    where = f" ([Kaggle](https://www.kaggle.com/competitions/{slug}))" if slug else ""
    classes = ", ".join(comp.get("classes") or [])
    lines = [
        f"- Competition: `{comp.get('name')}`{where}.",
        f"- Task: {comp.get('task')} segmentation of {classes}; metric `{comp.get('metric')}`, "
        "the mean of a per-image score.",
    ]
    counts = data_counts(config)
    if counts:
        lines.append(
            f"- Data: {counts[0]} training images, {counts[1]} test images; cross-validation "
            f"over {comp.get('n_folds')} folds, images of one group in the same fold."
        )
    else:
        lines.append(f"- Data: {TODO.format('number and kind of images (data not found here)')}")
    lines.append(f"- {TODO.format('what the images show and what makes the task hard')}")
    return lines


def data_counts(config: dict | None) -> tuple[int, int] | None:
    """(train, test) images as the runs' competition adapter lists them, if the data is here."""
    from podium.competition import load_competition

    if config is None:
        return None
    try:
        competition = load_competition(OmegaConf.create(config))
        return len(competition.train_samples()), len(competition.test_samples())
    except (PodiumError, OSError, NotImplementedError):
        return None


def method_lines(results: Results, experiments: list[Experiment]) -> list[str]:
    facts = {e.name: method_facts(e) for e in experiments}
    labels = list(dict.fromkeys(label for f in facts.values() for label in f))
    shared = [lb for lb in labels if len({f.get(lb) for f in facts.values()}) == 1]
    lines = []
    if len(experiments) > 1:
        lines += ["Shared by all experiments:", ""]
    lines += [f"- **{lb}**: {facts[experiments[0].name][lb]}" for lb in shared]
    differing = [lb for lb in labels if lb not in shared]
    if differing:
        lines += ["", "Where the experiments differ:", ""]
        for label in differing:
            lines.append(f"- **{label}**:")
            lines += [f"  - `{e}`: {f.get(label, MISSING)}" for e, f in facts.items()]
    commands = [(e.name, reproduce_command(e)) for e in experiments]
    if any(c for _, c in commands):
        lines += ["", "Commands (the recorded overrides; data and run paths left out):", ""]
        lines += [f"- `{e}`: {c}" for e, c in commands if c]
    lines += ["", "### Inference, ensembling and post-processing", ""]
    inference = inference_lines(results, {e.name for e in experiments})
    if inference:
        lines += inference
    else:
        lines.append(
            TODO.format(
                "TTA, ensembling and post-processing of the submitted files: no `podium predict` "
                f"or `podium tune` folders were found under {results.folder}"
            )
        )
    return lines


def results_lines(
    results: Results, experiments: list[Experiment], submissions: list[Submission]
) -> list[str]:
    metric = results.metric
    lines = [
        f"CV is each run's best validation {metric}; {SPREAD_NOTE} Best LB: the submission with "
        "the best public score among those made only from the experiment's runs.",
        "",
        summary_table(experiments),
        "",
        "### CV per fold and seed",
        "",
    ]
    for e in experiments:
        header = ["Seed", *(f"Fold {f}" for f in e.folds), "Mean over folds"]
        rows = [[s, *(num(e.cell(s, f)) for f in e.folds), num(e.seed_means[s])] for s in e.seeds]
        if len(e.seeds) > 1:
            rows.append(
                [
                    "mean ± std over seeds",
                    *(mean_std(*e.fold_stats(f)) for f in e.folds),
                    mean_std(statistics.fmean(e.seed_means.values()), e.seed_std),
                ]
            )
        lines += [f"`{e.name}`:", "", markdown_table(header, rows), ""]
        n_folds = (e.config or {}).get("competition", {}).get("n_folds")
        if n_folds and len(e.folds) < int(n_folds):
            lines += [f"(CV over {len(e.folds)} of the {n_folds} folds.)", ""]
    lines += ["### Submissions", ""]
    if submissions:
        lines += [submissions_table(submissions), ""]
    else:
        lines += [
            TODO.format("leaderboard scores: no submissions of these experiments in the ledger"),
            "",
        ]
    return lines
