"""The doctor's report sections on images, masks and train vs test: each a `Section` (markdown
lines, one terminal line, the problems it found), from the facts of every image."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from podium.competition import Competition
from podium.doctor.facts import Entry, Facts, mask_convention, mode_format
from podium.doctor.figures import plot_coverage, plot_intensity, plot_sizes
from podium.tables import render_table

__all__ = [
    "Section",
    "images_section",
    "masks_section",
    "splits_section",
    "count_values",
    "figure",
    "plural",
]

_DIFFERENT = 0.5  # standardised mean difference (Cohen's d) that flags train vs test


@dataclass
class Section:
    """A part of the report: markdown lines, one terminal line, and the problems it found."""

    title: str
    body: list[str]
    summary: str
    problems: list[str] = field(default_factory=list)


def count_values(values: Iterable, top: int = 8) -> str:
    """'101x101 (3200), 96x96 (12)': the most common values with their counts."""
    counter = Counter(values)
    shown = ", ".join(f"{v} ({n})" for v, n in counter.most_common(top))
    return shown + (f" and {len(counter) - top} more" if len(counter) > top else "")


def plural(count: int, noun: str) -> str:
    """'1 pair', '3 pairs'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _size(facts: Facts) -> str:
    return f"{facts.width}x{facts.height}"


def _mode(mode: str) -> str:
    channels, bits = mode_format(mode)
    return f"{mode} ({channels}x{bits}-bit)" if channels else mode


def figure(files: Path, name: str, caption: str) -> list[str]:
    return ["", f"![{caption}]({files.name}/{name})"]


# -- images -----------------------------------------------------------------------------------
def images_section(entries: list[Entry], readable: list[Entry], files: Path) -> Section:
    rows, problems = [], []
    for split in ("train", "test"):
        mine = [e.facts for e in readable if e.split == split]
        failed = [
            e.facts for e in entries if e.split == split and e.facts.error.startswith("image")
        ]
        if failed:
            problems.append(
                f"images: {plural(len(failed), split + ' image')} cannot be read, "
                f"e.g. {failed[0].error.removeprefix('image: ')}"
            )
        if mine or failed:
            rows.append(
                [
                    split,
                    len(mine),
                    count_values(map(_size, mine)),
                    count_values(_mode(f.mode) for f in mine),
                ]
            )
    plot_sizes(readable, files / "sizes.png")
    body = [render_table(["split", "images", "sizes (WxH)", "file formats"], rows)]
    body += figure(files, "sizes.png", "image sizes")
    counts = ", ".join(f"{n} {split}" for split, n, *_ in rows)
    sizes = count_values((_size(e.facts) for e in readable), top=3)
    return Section("Images", body, f"images: {counts}; sizes {sizes}", problems)


# -- masks ------------------------------------------------------------------------------------
def masks_section(competition: Competition, train: list[Entry], files: Path) -> Section:
    """Mask conventions, odd masks, size mismatches, empty fraction and coverage per class
    (`train`: the readable training images)."""
    task, classes = competition.task, competition.classes
    conventions = [mask_convention(e.facts, task, len(classes)) for e in train]
    named = Counter(c for c in conventions if c not in ("empty", "none"))
    usual = named.most_common(1)[0][0] if named else "none"
    odd = [e for e, c in zip(train, conventions, strict=True) if c not in (usual, "empty", "none")]
    wrong = [
        e
        for e in train
        if e.facts.mask_height >= 0
        and (e.facts.mask_height, e.facts.mask_width) != (e.facts.file_height, e.facts.file_width)
    ]
    failed = [e for e in train if e.facts.error]
    problems = []
    if odd:
        examples = "; ".join(f"{e.sample.id}: {_value_set(e.facts)}" for e in odd[:3])
        problems.append(
            f"masks: {plural(len(odd), 'mask')} off the {usual} convention of the others, "
            f"e.g. {examples}"
        )
    if failed:
        problems.append(
            f"masks: {plural(len(failed), 'mask')} the adapter cannot decode, e.g. "
            f"{failed[0].sample.id}: {failed[0].facts.error.removeprefix('mask: ')}"
        )
    if wrong:
        f = wrong[0].facts
        problems.append(
            f"masks: {plural(len(wrong), 'mask')} of another size than the image, "
            f"e.g. {wrong[0].sample.id}: mask {f.mask_width}x{f.mask_height}, image "
            f"{f.file_width}x{f.file_height}"
        )
    value_sets = count_values(_value_set(e.facts) for e in train if e.facts.mask_levels >= 0)
    body = [
        f"Convention: **{usual}** ({count_values(conventions)}).",
        "",
        f"Raw value sets of the mask files: {value_sets or 'no mask files'}.",
        "",
    ]
    names = classes[1:] if task == "multiclass" else classes
    coverage = [
        e.facts.coverage for e in train if len(e.facts.coverage) == len(names) and not e.facts.error
    ]
    table, summary = _coverage(np.array(coverage, np.float64).reshape(-1, len(names)), names, files)
    body += table
    for title, listed in (("Masks off the convention", odd), ("Masks of another size", wrong)):
        if listed:
            body += ["", f"{title}: " + ", ".join(e.sample.id for e in listed[:50])]
    return Section("Masks", body, f"masks: {usual}; {summary}", problems)


def _value_set(facts: Facts) -> str:
    if facts.mask_levels > len(facts.mask_values):
        return f"{facts.mask_levels} grey levels"
    return "{" + ",".join(map(str, facts.mask_values)) + "}"


def _coverage(coverage: np.ndarray, names: list[str], files: Path) -> tuple[list[str], str]:
    """Markdown (empty share, a table per class, a figure) and a summary of the coverage (one row
    per decoded mask, one column per class)."""
    if not len(coverage):
        return ["No decoded masks."], "no decoded masks"
    empty = float((coverage.sum(1) == 0).mean())
    rows, summary = [], [f"{empty:.1%} empty"]
    for k, name in enumerate(names):
        present = coverage[:, k][coverage[:, k] > 0]
        mean = f"{present.mean():.3f}" if len(present) else "-"
        median = f"{np.median(present):.3f}" if len(present) else "-"
        rows.append([name, f"{len(present) / len(coverage):.1%}", mean, median])
        summary.append(f"{name} in {rows[-1][1]} (mean coverage {mean} there)")
    plot_coverage(coverage, names, files / "coverage.png")
    header = ["class", "images with it", "mean coverage there", "median there"]
    body = [f"Empty masks: **{empty:.1%}** of {len(coverage)}.", "", render_table(header, rows)]
    return body + figure(files, "coverage.png", "coverage"), "; ".join(summary[:4])


# -- train vs test ----------------------------------------------------------------------------
def splits_section(readable: list[Entry], files: Path) -> Section:
    by_split = {s: [e.facts for e in readable if e.split == s] for s in ("train", "test")}
    rows = []
    for split, facts in by_split.items():
        if facts:
            means, stds = np.array([f.mean for f in facts]), np.array([f.std for f in facts])
            rows.append(
                [
                    split,
                    len(facts),
                    f"{means.mean():.1f} ± {means.std():.1f}",
                    f"{stds.mean():.1f} ± {stds.std():.1f}",
                ]
            )
    plot_intensity(by_split, files / "intensity.png")
    header = ["split", "images", "mean grey (± sd over images)", "grey std (± sd)"]
    body = [render_table(header, rows), *figure(files, "intensity.png", "intensity")]
    train, test = by_split["train"], by_split["test"]
    if len(train) < 2 or len(test) < 2:
        return Section("Train vs test", body, "train vs test: no test images to compare")
    problems = _split_differences(train, test)
    flags = "; ".join(p.split(": ", 1)[1] for p in problems) or "no clear difference"
    body += ["", f"Flags (|d| > {_DIFFERENT} on intensity, unseen sizes or formats): {flags}."]
    return Section("Train vs test", body, f"train vs test: {flags}", problems)


def _split_differences(train: list[Facts], test: list[Facts]) -> list[str]:
    """Sizes and formats test has and train lacks; intensity that differs clearly (Cohen's d)."""
    problems = []
    sizes, modes = {_size(f) for f in train}, {f.mode for f in train}
    unseen = [_size(f) for f in test if _size(f) not in sizes]
    if unseen:
        problems.append(
            f"train vs test: {len(unseen)} test images have sizes no training "
            f"image has: {count_values(unseen, top=3)}"
        )
    formats = [_mode(f.mode) for f in test if f.mode not in modes]
    if formats:
        problems.append(
            f"train vs test: test images in formats training lacks: {count_values(formats)}"
        )
    for what, attr in (("mean grey", "mean"), ("grey std (contrast)", "std")):
        a = np.array([getattr(f, attr) for f in train])
        b = np.array([getattr(f, attr) for f in test])
        d = (b.mean() - a.mean()) / max(np.sqrt((a.var() + b.var()) / 2), 1e-6)
        if abs(d) > _DIFFERENT:
            problems.append(
                f"train vs test: {what} differs: {a.mean():.1f} vs {b.mean():.1f} "
                f"(d = {d:+.2f} standard deviations)"
            )
    return problems
