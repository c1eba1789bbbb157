"""Config differences: `podium runs diff=[A,B]`, and ablations (experiments whose configs differ
in exactly one setting)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

from podium.config import REPLICATE_KEYS, changes_result
from podium.io import PodiumError
from podium.report.results import Experiment, Results
from podium.report.tables import DIGITS, mean_std, num, record_table
from podium.tables import render_table

# A config group whose name differs is one setting (loss bce_dice -> dice), not many keys.
GROUP_IDENTITY = {
    "loss": "loss.name",
    "optimizer": "optimizer.name",
    "scheduler": "scheduler.name",
    "augment": "augment.preset",
}


class Ablation(NamedTuple):
    """Two experiments whose configs differ in one setting: `key`, from `before` to `after`."""

    baseline: Experiment
    changed: Experiment
    key: str
    before: Any
    after: Any


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) for every key that can change a result (podium.config)
    whose values differ; None where a side lacks the key."""
    keys = [k for k in dict.fromkeys([*a, *b]) if changes_result(k)]
    return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]


def setting_changes(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """`config_diff` in settings: a config group whose name changed is one setting (its other
    keys follow the name)."""
    diff = config_diff(a, b)
    renamed = {g for g, key in GROUP_IDENTITY.items() if a.get(key) != b.get(key)}
    return [
        d
        for d in diff
        if d[0].split(".")[0] not in renamed or d[0] == GROUP_IDENTITY[d[0].split(".")[0]]
    ]


def show_value(value: Any) -> str:
    """A setting's value as a reader wants it: strings unquoted, several values joined by
    ' / ', '(absent)' for a key a side lacks."""
    if value is None:
        return "(absent)"
    if isinstance(value, tuple):
        return " / ".join(show_value(v) for v in value)
    decoded = json.loads(value) if isinstance(value, str) else value
    return decoded if isinstance(decoded, str) else str(value)


def ablations(experiments: list[Experiment]) -> list[Ablation]:
    """Pairs of experiments whose configs differ in exactly one setting (earlier one first)."""
    pairs = []
    for i, a in enumerate(experiments):
        for b in experiments[i + 1 :]:
            if not a.settings or not b.settings or a.mean is None or b.mean is None:
                continue
            changes = setting_changes(a.settings, b.settings)
            if len(changes) == 1:
                pairs.append(Ablation(a, b, *changes[0]))
    return pairs


ABLATION_COLUMNS: dict[str, Callable[[Ablation], Any]] = {
    "Setting": lambda p: f"`{p.key}`",
    "Baseline": lambda p: show_value(p.before),
    "Changed to": lambda p: show_value(p.after),
    "Baseline experiment": lambda p: p.baseline.name,
    "Changed experiment": lambda p: p.changed.name,
    "CV baseline": lambda p: mean_std(p.baseline.mean, p.baseline.std),
    "CV changed": lambda p: mean_std(p.changed.mean, p.changed.std),
    "Δ CV": lambda p: f"{p.changed.mean - p.baseline.mean:+.{DIGITS}f}",
}


def ablation_table(pairs: list[Ablation]) -> str:
    """The ablations with both experiments' CV and the change in it."""
    return record_table(pairs, ABLATION_COLUMNS)


def diff_text(results: Results, targets: Any) -> str:
    """`podium runs diff=[A,B]`: the config differences of two runs or experiments."""
    if isinstance(targets, str) or len(targets) != 2:
        raise PodiumError(f"diff={targets}: give two runs or experiments, e.g. diff=[A,B]")
    (label_a, a), (label_b, b) = [_diff_side(results, str(t)) for t in targets]
    diff = config_diff(a, b)
    if label_a.startswith("experiment") or label_b.startswith("experiment"):
        diff = [d for d in diff if d[0] not in REPLICATE_KEYS]  # they vary within experiments
    lines = [f"A: {label_a}", f"B: {label_b}", ""]
    if not diff:
        return "\n".join(lines + ["No config differences (paths and names aside)."])
    rows = [[f"`{k}`", show_value(va), show_value(vb)] for k, va, vb in diff]
    return "\n".join(lines + [render_table(["Key", "A", "B"], rows, right=())])


def _diff_side(results: Results, target: str) -> tuple[str, dict[str, tuple[str, ...]]]:
    """(label, settings) of a run (id or folder) or an experiment named on the command line."""
    run = results.find_run(target)
    if run is not None:
        if run.settings is None:
            raise PodiumError(f"diff: run {run.id}: no config.yaml in {run.run_dir}")
        settings = {k: (v,) for k, v in run.settings.items()}
        return f"run {run.id} ({run.experiment}, CV {num(run.score)})", settings
    if target in results.experiments:
        e = results.experiments[target]
        if not e.settings:
            raise PodiumError(f"diff: experiment {target}: none of its run folders remain")
        label = f"experiment {e.name} ({len(e.scored)} runs, CV {mean_std(e.mean, e.std)})"
        return label, e.settings
    raise PodiumError(
        f"diff: '{target}' is neither a run (id or folder) nor an experiment in "
        f"{results.path} (experiments: {', '.join(results.experiments) or 'none'})"
    )
