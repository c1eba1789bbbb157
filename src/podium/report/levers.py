"""What `podium runs` and the write-up say about the levers pulled after the baseline:
full-data models (fold=all), listed apart from the CV runs, and pseudo-label rounds (which round,
which teachers, which rule), with the warning that CV with pseudo-labels made by teachers that
trained on every fold is optimistic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from podium.report.results import Experiment, Run
from podium.report.tables import MISSING, record_table

__all__ = ["FULL_DATA_COLUMNS", "full_data_lines", "pseudo_lines", "LEAK_WARNING"]

FULL_DATA_COLUMNS: dict[str, Callable[[Run], Any]] = {
    "Experiment": lambda r: r.experiment,
    "Run": lambda r: r.id,
    "Seed": lambda r: r.seed,
    "Epochs": lambda r: r.record.get("epochs_run", MISSING),
    "Images seen": lambda r: r.record.get("images_seen", MISSING),
    "Status": lambda r: r.record.get("status", MISSING),
    "Config": lambda r: r.record.get("config_hash", MISSING),
}

LEAK_WARNING = (
    "**CV with pseudo-labels is optimistic** when the teachers trained on every fold (a fold "
    "ensemble, or full-data models): each teacher saw the student's validation images while "
    "training, and their labels of the unlabelled images carry what they learned there, so a "
    "student's validation score leaks. Compare rounds on the leaderboard or on a held-back "
    "set no teacher trained on."
)


def full_data_lines(experiments: list[Experiment]) -> list[str]:
    """The full-data models of the experiments as a table (no CV: they have no validation)."""
    runs = [r for e in experiments for r in e.full_data_runs]
    if not runs:
        return []
    return [
        "Full-data models (`fold=all`): trained on every labelled image for a fixed number of "
        "epochs; no validation score, not part of the CV above.",
        "",
        record_table(runs, FULL_DATA_COLUMNS, right=["Seed", "Epochs", "Images seen"]),
        "",
    ]


def pseudo_lines(experiments: list[Experiment]) -> list[str]:
    """One line per pseudo-label set the experiments' runs trained with, then the warning."""
    sets: dict[str, tuple[dict, list[Run]]] = {}
    for run in (r for e in experiments for r in e.runs):
        pseudo = run.record.get("pseudo")
        if isinstance(pseudo, dict):
            sets.setdefault(str(pseudo.get("dir")), (pseudo, []))[1].append(run)
    if not sets:
        return []
    lines = []
    for folder, (pseudo, runs) in sets.items():
        rule = pseudo.get("rule") or {}
        teachers = pseudo.get("teachers") or []
        lines.append(
            f"- Pseudo-label round {pseudo.get('round')} (`{folder}`): {len(teachers)} teacher "
            f"runs ({', '.join(f'`{t}`' for t in teachers)}), TTA {pseudo.get('tta')}, on the "
            f"{pseudo.get('source')}; rule {rule.get('mode')}/{rule.get('labels')} "
            f"(confident: p < {rule.get('low')} or p > {rule.get('high')}, kept when at least "
            f"{rule.get('min_confident')} of the pixels are): {pseudo.get('kept')} of "
            f"{pseudo.get('total')} images kept; mixed in at {pseudo.get('ratio')} of each "
            f"batch with loss weight {pseudo.get('weight')}; students: "
            f"{', '.join(sorted({r.experiment for r in runs}))} ({len(runs)} runs)."
        )
    return [*lines, "", LEAK_WARNING, ""]
