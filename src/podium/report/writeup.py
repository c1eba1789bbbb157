"""`podium writeup`: a Markdown draft of the competition write-up, with its figures.

Every number in the draft comes from the ledger and the run folders; what only a person can say
is marked TODO. The file carries a hash of what podium wrote, so a draft a person has edited is
never overwritten without force=true.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from podium import io
from podium.io import PodiumError
from podium.report.ablations import ablation_table, ablations
from podium.report.figures import plot_cv_vs_lb, plot_learning_curves, plot_validation_grid
from podium.report.levers import full_data_lines, pseudo_lines
from podium.report.method import method_lines
from podium.report.results import (
    Experiment,
    Results,
    Submission,
    load_results,
    select_experiments,
)
from podium.report.tables import (
    SPREAD_NOTE,
    TODO,
    fold_seed_table,
    plural,
    submissions_table,
    summary_table,
)

# The package's logger, as before the split: its name is in every log line.
log = logging.getLogger("podium.report")

STAMP = (
    "<!-- Drafted by `podium writeup` from the ledger and run folders. Edit freely: once edited, "
    "podium will not overwrite it unless force=true. sha256:{} -->"
)
# The sections only a person can write.
CLOSING = [
    "## What did not work",
    "",
    TODO.format("ideas tried and dropped, and why"),
    "",
    "## Acknowledgements and links",
    "",
    TODO.format("code link, data licence, people to thank"),
    "",
]


def writeup_dir(cfg: DictConfig) -> Path:
    """`writeup_dir` when given (+writeup_dir=...), else <paths.root_dir>/writeup."""
    return Path(cfg.get("writeup_dir") or Path(cfg.paths.root_dir) / "writeup")


def writeup_command(cfg: DictConfig) -> int:
    """Write <writeup_dir>/<competition>.md and its figures; print the file's path."""
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
    """Refuse to overwrite a draft whose text no longer matches the hash podium stamped on it."""
    if force or not path.is_file():
        return
    first, _, rest = path.read_text().partition("\n")
    stamp = re.search(r"sha256:([0-9a-f]{64})", first)
    if not stamp or hashlib.sha256(rest.encode()).hexdigest() != stamp.group(1):
        raise PodiumError(
            f"{path}: edited since podium wrote it; move it away or add force=true to overwrite"
        )


def build_writeup(
    results: Results, experiments: list[Experiment], folder: Path, cfg: DictConfig
) -> str:
    """The Markdown text; writes the figures into `folder` (stale ones are removed)."""
    figures = _figure_paths(results.competition, folder)
    chosen = {e.name for e in experiments}
    submissions = [s for s in results.submissions if chosen & set(s.experiments)]
    doc = [
        *intro_lines(results, experiments, cfg),
        *("## Task and data", "", *task_lines(results, experiments, cfg), ""),
        *("## Method", "", *method_lines(results, experiments), ""),
        *("## Results", "", *results_lines(results, experiments, submissions), ""),
        *("## Ablations", "", *ablation_lines(experiments)),
        *("## Figures", "", *figure_lines(results, experiments, submissions, figures)),
        *CLOSING,
    ]
    return "\n".join(doc)


def _figure_paths(competition: str, folder: Path) -> dict[str, Path]:
    """Where the figures go, with none left from an earlier draft: a figure not drawn this time
    must not linger beside a text that no longer links it."""
    figures = {
        "curves": folder / f"{competition}_learning_curves.png",
        "cv_lb": folder / f"{competition}_cv_vs_lb.png",
        "grid": folder / f"{competition}_validation_grid.png",
    }
    folder.mkdir(parents=True, exist_ok=True)
    for figure in figures.values():
        figure.unlink(missing_ok=True)
    return figures


def intro_lines(results: Results, experiments: list[Experiment], cfg: DictConfig) -> list[str]:
    """Title, where the numbers come from, and the summary a person writes."""
    n_runs = sum(len(e.runs) for e in experiments)
    try:  # a path a reader can follow in the project, not this machine's absolute one
        ledger_shown = results.path.resolve().relative_to(Path(cfg.paths.root_dir).resolve())
    except ValueError:
        ledger_shown = results.path
    return [
        f"# {results.competition}: {TODO.format('title')}",
        "",
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


def task_lines(results: Results, experiments: list[Experiment], cfg: DictConfig) -> list[str]:
    """The competition, its task and metric, and its data as the adapter lists it."""
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


def results_lines(
    results: Results, experiments: list[Experiment], submissions: list[Submission]
) -> list[str]:
    """The Results section: CV by experiment, by fold and seed, and the submissions."""
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
        lines += [f"`{e.name}`:", "", fold_seed_table(e), ""]
        n_folds = (e.config or {}).get("competition", {}).get("n_folds")
        if n_folds and len(e.folds) < int(n_folds):
            lines += [f"(CV over {len(e.folds)} of the {n_folds} folds.)", ""]
    levers = [*full_data_lines(experiments), *pseudo_lines(experiments)]
    if levers:
        lines += ["### Full-data models and pseudo-labels", "", *levers]
    lines += ["### Submissions", ""]
    if submissions:
        lines += [submissions_table(submissions), ""]
    else:
        lines += [
            TODO.format("leaderboard scores: no submissions of these experiments in the ledger"),
            "",
        ]
    return lines


def ablation_lines(experiments: list[Experiment]) -> list[str]:
    """The experiments that differ in one setting, or a line saying there are none."""
    pairs = ablations(experiments)
    if not pairs:
        return ["No two experiments differ in exactly one setting.", ""]
    return [
        "Experiments whose configs differ in exactly one setting; Δ CV = changed minus "
        "baseline mean. A difference smaller than the spread across seeds is not evidence.",
        "",
        ablation_table(pairs),
        "",
    ]


def figure_lines(
    results: Results,
    experiments: list[Experiment],
    submissions: list[Submission],
    figures: dict[str, Path],
) -> list[str]:
    """Draw the figures there is data for; their links and captions (a TODO for the grid when it
    cannot be drawn)."""
    metric = results.metric
    lines = []
    if plot_learning_curves(experiments, metric, figures["curves"]):
        lines += [
            f"![Learning curves]({figures['curves'].name})",
            "",
            f"Learning curves of every run (validation {metric}; losses), coloured by experiment.",
            "",
        ]
    if plot_cv_vs_lb(submissions, metric, figures["cv_lb"]):
        lines += [
            f"![CV vs leaderboard]({figures['cv_lb'].name})",
            "",
            "CV (mean of each submission's runs) against its leaderboard scores; the dotted "
            "line is CV = LB.",
            "",
        ]
    best = max(experiments, key=lambda e: -1e300 if e.mean is None else e.mean)
    caption = plot_validation_grid(best, metric, figures["grid"])
    if caption:
        return lines + [f"![Validation cases]({figures['grid'].name})", "", caption, ""]
    todo = TODO.format(f"validation images: no oof.npz or training images for {best.name}")
    return lines + [todo, ""]
