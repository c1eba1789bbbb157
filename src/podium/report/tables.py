"""Numbers as the reports show them, and the tables of experiments, runs and submissions (Markdown,
drawn by podium.tables.render_table)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from podium.report.results import Experiment, Run, Submission
from podium.tables import render_table

T = TypeVar("T")

MISSING = "—"  # no value (a table cell, a score never measured)
TODO = "**[TODO: {}]**"  # what a person must add to a write-up
DIGITS = 4  # decimals of every score in tables

SPREAD_NOTE = (
    "std (runs): sample standard deviation (n-1) over all runs of the experiment, folds and "
    "seeds together. std of seed means: sample standard deviation of the per-seed CV (each "
    "seed's mean over its folds), the spread a single-seed result hides. "
    f"{MISSING}: fewer than two values."
)


def num(value: float | None, digits: int = DIGITS) -> str:
    """A score to `digits` decimals, MISSING for None."""
    return MISSING if value is None else f"{value:.{digits}f}"


def mean_std(mean: float | None, std: float | None) -> str:
    """'mean ± std', or the mean alone when there is no spread."""
    if mean is None:
        return MISSING
    return num(mean) if std is None else f"{num(mean)} ± {num(std)}"


def int_list(values: Iterable[int]) -> str:
    """'0, 1, 2', MISSING for none."""
    return ", ".join(str(v) for v in values) or MISSING


def plural(n: int, word: str) -> str:
    """'1 run', '2 runs'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def lb_text(submission: Submission | None) -> str:
    """'public / private' leaderboard scores of a submission."""
    if submission is None:
        return MISSING
    return f"{num(submission.public)} / {num(submission.private)}"


def record_table(
    items: Iterable[T], columns: Mapping[str, Callable[[T], Any]], right: Iterable[str] = ()
) -> str:
    """A Markdown table with a row per item: each column is a header and the cell it takes from
    an item; the columns named in `right` are right-aligned."""
    header = list(columns)
    rows = [[cell(item) for cell in columns.values()] for item in items]
    return render_table(header, rows, right=[header.index(name) for name in right])


# Each table is its columns: the header beside what fills it keeps the two in step.
SUMMARY_COLUMNS: dict[str, Callable[[Experiment], Any]] = {
    "Experiment": lambda e: e.name,
    "Runs": lambda e: len(e.scored),
    "Folds": lambda e: int_list(e.folds),
    "Seeds": lambda e: int_list(e.seeds),
    "CV mean ± std (runs)": lambda e: mean_std(e.mean, e.std),
    "Std of seed means": lambda e: num(e.seed_std),
    "Best LB public / private": lambda e: lb_text(e.best_submission),
}


def _recorded(key: str) -> Callable[[Run], Any]:
    """A column of the ledger's own value, as recorded."""
    return lambda run: run.record.get(key, MISSING)


RUN_COLUMNS: dict[str, Callable[[Run], Any]] = {
    "Run": lambda r: r.id,
    "Fold": lambda r: r.fold,
    "Seed": lambda r: r.seed,
    "CV": lambda r: num(r.score),
    "Best epoch / epochs": lambda r: (
        f"{r.record.get('best_epoch', MISSING)} / {r.record.get('epochs_run', MISSING)}"
    ),
    "Status": _recorded("status"),
    "Duration s": _recorded("duration_s"),
    "Images/s": _recorded("train_images_per_s"),
    "Config": _recorded("config_hash"),
    "Finished": _recorded("time"),
}


def _experiments_text(submission: Submission) -> str:
    text = ", ".join(submission.experiments) or MISSING
    if submission.unresolved:
        text += f" (+{len(submission.unresolved)} unknown)"
    return text


SUBMISSION_COLUMNS: dict[str, Callable[[Submission], Any]] = {
    "Ref": lambda s: s.ref,
    "Submitted": lambda s: s.record.get("submitted_at") or s.record.get("first_time") or MISSING,
    "Experiments": _experiments_text,
    "Runs": lambda s: len(s.runs),
    "Mean CV of its runs": lambda s: num(s.cv),
    "Public LB": lambda s: num(s.public),
    "Private LB": lambda s: num(s.private),
    "Message": lambda s: s.record.get("message") or "",
}


def summary_table(experiments: list[Experiment]) -> str:
    """One row per experiment: runs, folds, seeds, CV with both spreads, best leaderboard."""
    return record_table(experiments, SUMMARY_COLUMNS, right=["Runs"])


def runs_table(experiment: Experiment) -> str:
    """One row per run of the experiment, as the ledger records it."""
    return record_table(
        experiment.runs, RUN_COLUMNS, right=["Fold", "Seed", "Duration s", "Images/s"]
    )


def submissions_table(submissions: list[Submission]) -> str:
    """One row per submission: the experiments and runs behind it, their CV, its scores."""
    return record_table(submissions, SUBMISSION_COLUMNS, right=["Runs"])


def fold_seed_table(experiment: Experiment) -> str:
    """The experiment's CV by seed (rows) and fold (columns), each seed's mean over its folds,
    and, with several seeds, each fold's mean ± std over them."""
    e = experiment
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
    return render_table(header, rows, right=())
