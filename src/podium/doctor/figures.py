"""The doctor's figures: image sizes, intensity per split, mask coverage, duplicate pairs.

matplotlib draws through Figure objects on its Agg backend (no display, no global state), as
podium.report.figures does; it is imported only when a figure is drawn.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from podium import io

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from podium.competition import Competition
    from podium.doctor.facts import Entry, Facts, Pair

__all__ = ["plot_sizes", "plot_intensity", "plot_coverage", "plot_pairs"]

_SPLIT_COLOURS = {"train": "tab:blue", "test": "tab:orange"}


def _write_png(fig: Figure, path: Path) -> None:
    with io.atomic_write(path, "wb") as out:
        fig.savefig(out, format="png", dpi=100, bbox_inches="tight")


def _finish(ax) -> None:
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # an empty legend is a matplotlib warning
        ax.legend(fontsize=8)


def _shown(image: np.ndarray) -> np.ndarray:
    """What imshow can draw of an adapter's image: its first three channels, or grey."""
    if image.ndim == 3 and image.shape[2] >= 3:
        return image[..., :3]
    return image if image.ndim == 2 else image[..., 0]


def plot_sizes(entries: list[Entry], path: Path) -> None:
    """Image width against height, one dot per distinct size and split, sized by its count."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    for split, colour in _SPLIT_COLOURS.items():
        sizes = Counter((e.facts.width, e.facts.height) for e in entries if e.split == split)
        if sizes:
            (widths, heights), counts = zip(*sizes, strict=True), np.array(list(sizes.values()))
            ax.scatter(
                widths,
                heights,
                s=20 + 200 * np.sqrt(counts / counts.max()),
                alpha=0.5,
                color=colour,
                label=f"{split} ({counts.sum()})",
            )
    ax.set(xlabel="width (px)", ylabel="height (px)", title="Image sizes (dot area: count)")
    _finish(ax)
    _write_png(fig, path)


def plot_intensity(by_split: dict[str, list[Facts]], path: Path) -> None:
    """Histograms of each image's mean grey and grey std, per split (as densities)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.5))
    axes = fig.subplots(1, 2)
    for ax, attr, title in zip(axes, ("mean", "std"), ("mean grey", "grey std"), strict=True):
        for split, facts in by_split.items():
            if facts:
                values = [getattr(f, attr) for f in facts]
                ax.hist(
                    values,
                    bins=40,
                    density=True,
                    alpha=0.5,
                    color=_SPLIT_COLOURS[split],
                    label=f"{split} ({len(values)})",
                )
        ax.set(xlabel=f"{title} of an image", ylabel="density", title=title.capitalize())
        _finish(ax)
    _write_png(fig, path)


def plot_coverage(coverage: np.ndarray, names: list[str], path: Path) -> None:
    """Histogram of each class's coverage over the images that have it."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.5))
    ax = fig.subplots()
    for k, name in enumerate(names):
        present = coverage[:, k][coverage[:, k] > 0]
        if len(present):
            ax.hist(
                present, bins=np.linspace(0, 1, 41), alpha=0.5, label=f"{name} ({len(present)})"
            )
    ax.set(xlabel="share of the image", ylabel="images", title="Mask coverage (non-empty masks)")
    _finish(ax)
    _write_png(fig, path)


def plot_pairs(competition: Competition, pairs: list[Pair], path: Path) -> None:
    """The images of each pair side by side, titled with their ids and folds."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 2.6 * len(pairs)))
    axes = np.asarray(fig.subplots(len(pairs), 2, squeeze=False))
    for row, pair in zip(axes, pairs, strict=True):
        for ax, entry, fold in zip(row, (pair.a, pair.b), (pair.fold_a, pair.fold_b), strict=True):
            image = _shown(competition.read_image(entry.sample))
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
            where = f"fold {fold}" if entry.split == "train" else entry.split
            ax.set_title(f"{entry.sample.id} ({where})", fontsize=8)
            ax.axis("off")
        kind = "exact" if pair.exact else f"{pair.distance} bits, r={pair.correlation:.2f}"
        row[0].text(1.05, -0.08, kind, transform=row[0].transAxes, ha="center", fontsize=8)
    _write_png(fig, path)
