"""The write-up's figures: learning curves, CV against leaderboard, and a grid of validation images.

matplotlib draws through Figure objects on its Agg backend: no display, no global state; it is
imported only when a figure is drawn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import OmegaConf

from podium import io, rundir
from podium.io import PodiumError
from podium.report.results import Experiment, Run, Submission
from podium.report.tables import int_list

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from podium.competition import Competition

# The package's logger, as before the split: its name is in every log line.
log = logging.getLogger("podium.report")


def _save(fig: Figure, path: Path) -> None:
    with io.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")


def _colours(names: list[str]) -> dict[str, Any]:
    """A tab10 colour per name, in order (cycling after ten)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def plot_learning_curves(experiments: list[Experiment], metric: str, path: Path) -> bool:
    """Validation score and losses by epoch of every run, coloured by experiment; False (and no
    file) when no run folder has a metrics.csv."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4))
    ax_score, ax_loss = fig.subplots(1, 2)
    colours = _colours([e.name for e in experiments])
    drawn = 0
    for e in experiments:
        label = e.name  # once per experiment: the legend names experiments, not runs
        for run in e.runs:
            metrics = run.run_dir / rundir.METRICS if run.run_dir else None
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
    """Each submission's CV against its public (and private) leaderboard score; False (and no
    file) when no submission has both."""
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
    """One validation image of a run, scored as the run's validation scored it."""

    id: str
    score: float
    prob: np.ndarray  # CxHxW uint8 (p * 255)
    truth: np.ndarray  # as the metric takes it: HxW (binary, multiclass) or CxHxW
    run: Run


def oof_cases(run: Run, competition: Competition) -> list[Case]:
    """Every validation image of a run's oof.npz, scored with the competition metric at the
    run's validation threshold (their mean is the run's best_score)."""
    from podium.models import binarize

    task, threshold = competition.task, float(run.config["trainer"]["threshold"])
    cases = []
    for image_id, prob, mask in rundir.read_oof(run.run_dir):
        truth = mask[0] if task == "binary" else mask
        score = competition.score_image(binarize(prob / 255.0, task, threshold), truth)
        cases.append(Case(image_id, float(score), prob, truth, run))
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
    """The image (0-1 floats) with each labelled pixel half its class's colour."""
    out = image.astype(np.float32) / 255.0
    shown = labels > 0
    out[shown] = 0.5 * out[shown] + 0.5 * colours[(labels[shown] - 1) % len(colours)]
    return out


def plot_validation_grid(experiment: Experiment, metric: str, path: Path) -> str | None:
    """Best, median and worst validation images of the experiment (one seed, all its folds):
    image, ground truth and prediction. Returns a caption, or None when nothing can be drawn."""
    from podium.competition import load_competition

    usable = [
        r for r in experiment.runs if r.config and r.run_dir and (r.run_dir / rundir.OOF).is_file()
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
    _draw_cases(picks, images, competition.task, metric, path)
    return (
        f"Validation images of `{experiment.name}` (seed {seed}, folds "
        f"{int_list(sorted(r.fold for r in runs))}, out-of-fold predictions of each run's best "
        f"epoch): best, median and worst of {len(cases)} by per-image {metric}; ground truth and "
        "prediction overlaid."
    )


def _draw_cases(
    picks: dict[str, Case], images: dict[str, np.ndarray], task: str, metric: str, path: Path
) -> None:
    """A row per picked case: the image, its ground truth and the run's prediction."""
    import cv2
    from matplotlib.figure import Figure

    from podium.models import binarize

    fig = Figure(figsize=(9, 3 * len(picks)))
    axes = fig.subplots(len(picks), 3, squeeze=False)
    palette = np.array([(0.1, 0.9, 0.2), (1.0, 0.2, 0.2), (0.2, 0.4, 1.0), (1.0, 0.8, 0.1)])
    # Binary: truth green, prediction red. Several classes: one colour per class in both.
    predicted = palette[1:] if task == "binary" else palette
    for row, (label, case) in zip(axes, picks.items(), strict=True):
        h, w = case.prob.shape[-2:]
        image = images[label]
        if image.shape[:2] != (h, w):  # trained on resized images: show them at that size
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        threshold = float(case.run.config["trainer"]["threshold"])
        pred = binarize(case.prob / 255.0, task, threshold)
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
