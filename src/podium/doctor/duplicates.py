"""Duplicates: exact and near-duplicate images, their clusters, and the folds they fall in.

Candidate pairs are perceptual hashes at most `doctor.hash_distance` bits apart (podium.dedup:
bucketed, not all pairs); a candidate counts when its pixels are identical or its 16x16 grey
thumbnails, less the mean thumbnail of the set (what every image shows, such as an endoscope's
frame, would make any two look alike), correlate at `doctor.min_correlation` or more. Hashes
alone collide: TGS Salt has 72 candidate pairs within 10 bits and 3 confirmed, Kvasir-SEG 398
and 5; copies under noise, a brightness shift, JPEG, a 2-pixel crop or a 1-pixel shift
correlated at 0.99 in the tests, unrelated scenes under 0.6. A 10-bit distance (the default)
holds such copies (a 1-2 pixel shift of a 128-pixel scene moved up to 12 bits, 10 in 99%);
12 bits catch more shifted copies and search 100,000 images 5x slower (bench/doctor.py).
Featureless images (grey std under `doctor.min_std`, e.g. TGS's 64 blank patches) are left
out: their hash is noise.

Pairs chain into clusters (connected components); a cluster across folds inflates CV.
`doctor.group_duplicates=true` writes the training images of each cluster to
duplicate_groups.csv beside folds.csv, and folds then keep each cluster in one fold
(podium.data.load_or_make_folds); a folds.csv that splits a cluster is then an error.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from podium import dedup, io
from podium.competition import Competition, Sample
from podium.data import DUPLICATE_GROUPS, make_folds, read_duplicate_groups, read_folds
from podium.doctor.facts import Entry, Pair
from podium.doctor.figures import plot_pairs
from podium.doctor.sections import Section, figure, plural
from podium.io import PodiumError
from podium.tables import render_table

__all__ = ["Pair", "find_pairs", "duplicates_section"]

# Images from which on the mean thumbnail is what they share (in fewer, it is mostly themselves:
# of two images, each one's difference from their mean is the other's, negated).
_SHARED_FROM = 20
_PAIR_COLUMNS = [
    "id_a",
    "split_a",
    "fold_a",
    "group_a",
    "id_b",
    "split_b",
    "fold_b",
    "group_b",
    "distance",
    "correlation",
    "exact",
    "cluster",
    "across_folds",
    "across_groups",
]


def find_pairs(
    readable: list[Entry], max_distance: int, min_correlation: float, min_std: float
) -> tuple[list[Pair], int]:
    """The duplicate pairs among `readable` (exact, or near: hash within `max_distance` bits and
    thumbnails correlating at `min_correlation`), each named by its cluster; and the number of
    featureless images (grey std under `min_std`: their hash is noise) left out."""
    usable = [e for e in readable if e.facts.std >= min_std]
    if len(usable) < 2:
        return [], len(readable) - len(usable)
    found = dedup.near_pairs(np.array([e.facts.phash for e in usable], np.uint64), max_distance)
    thumbs = np.stack([e.facts.thumb for e in usable]).astype(np.float32)
    if len(usable) >= _SHARED_FROM:
        # What every image shows (an endoscope's frame, a fixed overlay) makes any two look
        # alike: compare what differs from the mean thumbnail.
        thumbs -= thumbs.mean(0)
    correlation = dedup.correlations(thumbs, found[:, :2])
    exact = np.array([usable[i].facts.digest == usable[j].facts.digest for i, j, _ in found], bool)
    keep = exact | (correlation >= min_correlation)
    found, correlation, exact = found[keep], correlation[keep], exact[keep]
    labels = dedup.clusters(len(usable), found)
    names: dict[int, str] = {}
    for i in np.unique(found[:, :2]):
        label, image_id = int(labels[i]), usable[i].sample.id
        names[label] = min(names.get(label, image_id), image_id)
    pairs = [
        Pair(usable[i], usable[j], int(d), float(c), bool(x), names[int(labels[i])])
        for (i, j, d), c, x in zip(found, correlation, exact, strict=True)
    ]
    return pairs, len(readable) - len(usable)


def duplicates_section(
    competition: Competition,
    entries: list[Entry],
    readable: list[Entry],
    options: DictConfig,
    files: Path,
) -> Section:
    pairs, featureless = find_pairs(
        readable, int(options.hash_distance), float(options.min_correlation), float(options.min_std)
    )
    train = [e.sample for e in entries if e.split == "train"]
    problems: list[str] = []
    folds, folds_note = _folds(competition, train, pairs, bool(options.group_duplicates), problems)
    _place(pairs, folds, any(s.group is not None for s in train))
    pairs.sort(key=lambda p: (not p.across_folds, p.distance, p.a.sample.id))
    rows = [_csv_row(p) for p in pairs]
    io.write_csv(files / "pairs.csv", rows, _PAIR_COLUMNS)
    problems += _duplicate_problems(pairs)
    exact, clusters = sum(p.exact for p in pairs), len({p.cluster for p in pairs})
    across = [p for p in pairs if p.across_folds]
    body = [
        f"Perceptual hashes (pHash, 64 bits) within {options.hash_distance} bits whose 16x16 "
        f"grey thumbnails (less the set's mean thumbnail) correlate at {options.min_correlation} "
        "or more, or identical pixels. "
        f"{featureless} featureless images (grey std < {options.min_std}) are not compared.",
        "",
        f"**{plural(len(pairs), 'pair')}** ({exact} exact) in "
        f"**{plural(clusters, 'cluster')}**; "
        f"{len(across)} pairs across folds. Folds: {folds_note}.",
        "",
    ]
    listed = int(options.max_listed)
    columns = ("id_a", "fold_a", "id_b", "fold_b", "distance", "correlation", "exact", "cluster")
    shown = [[row[c] for c in columns] for row in rows[:listed]]
    header = ["a", "fold a", "b", "fold b", "bits", "thumb r", "exact", "cluster"]
    body += [render_table(header, shown, right=(4, 5))]
    more = f" ({len(rows) - listed} not listed above)" if len(rows) > listed else ""
    body += ["", f"Every pair{more}: [{files.name}/pairs.csv]({files.name}/pairs.csv)"]
    if pairs:
        plot_pairs(competition, pairs[:6], files / "duplicates.png")
        body += figure(files, "duplicates.png", "duplicate pairs")
    summary = (
        f"duplicates: {plural(len(pairs), 'pair')} ({exact} exact) in "
        f"{plural(clusters, 'cluster')}, {len(across)} across folds; "
        f"{plural(featureless, 'featureless image')} not compared"
    )
    return Section("Duplicates and folds", body, summary, problems)


def _csv_row(p: Pair) -> dict:
    a, b = p.a.sample, p.b.sample
    values = [
        a.id,
        p.a.split,
        p.fold_a,
        a.group or "",
        b.id,
        p.b.split,
        p.fold_b,
        b.group or "",
        p.distance,
        f"{p.correlation:.3f}",
        p.exact,
        p.cluster,
        p.across_folds,
        p.across_groups,
    ]
    return dict(zip(_PAIR_COLUMNS, values, strict=True))


def _place(pairs: list[Pair], folds: dict[str, int] | None, has_groups: bool) -> None:
    """Fill in each pair's folds (a test image's is 'test') and whether it crosses folds or the
    adapter's groups."""
    for p in pairs:
        p.fold_a, p.fold_b = (
            folds.get(e.sample.id, "-") if e.split == "train" and folds else e.split
            for e in (p.a, p.b)
        )
        both = p.a.split == p.b.split == "train"
        p.across_folds = both and folds is not None and p.fold_a != p.fold_b
        p.across_groups = both and has_groups and p.a.sample.group != p.b.sample.group


def _duplicate_problems(pairs: list[Pair]) -> list[str]:
    """A line each: pairs across folds, across the adapter's groups, between train and test."""
    problems = []
    across = [p for p in pairs if p.across_folds]
    if across:
        p, clusters = across[0], len({q.cluster for q in across})
        problems.append(
            f"duplicates: {plural(len(across), 'pair')} across folds in "
            f"{plural(clusters, 'cluster')}, e.g. {p.a.sample.id} ~ {p.b.sample.id} "
            f"({p.distance} bits, folds {p.fold_a}/{p.fold_b}); "
            "doctor.group_duplicates=true keeps each cluster in one fold"
        )
    grouped = [p for p in pairs if p.across_groups]
    if grouped:
        p = grouped[0]
        problems.append(
            f"duplicates: {plural(len(grouped), 'pair')} across the adapter's "
            f"groups, e.g. {p.a.sample.id} ({p.a.sample.group}) ~ {p.b.sample.id} "
            f"({p.b.sample.group})"
        )
    mixed = [p for p in pairs if p.a.split != p.b.split]
    if mixed:
        p = mixed[0]
        problems.append(
            f"duplicates: {plural(len(mixed), 'train-test pair')} (test images "
            f"that look like training images), e.g. {p.a.sample.id} ~ {p.b.sample.id}"
        )
    return problems


def _folds(
    competition: Competition,
    train: list[Sample],
    pairs: list[Pair],
    group_duplicates: bool,
    problems: list[str],
) -> tuple[dict[str, int] | None, str]:
    """The folds pairs fall in — folds.csv when it is there and valid, else those podium train
    would make now — and a note saying which. With `group_duplicates`, first (re)write
    duplicate_groups.csv: the training images of every cluster holding two or more of them."""
    groups_path = competition.data_dir / DUPLICATE_GROUPS
    folds_path = competition.data_dir / "folds.csv"
    if group_duplicates:
        cluster_of = {
            e.sample.id: p.cluster for p in pairs for e in (p.a, p.b) if e.split == "train"
        }
        sizes = Counter(cluster_of.values())
        rows = [{"id": i, "cluster": c} for i, c in sorted(cluster_of.items()) if sizes[c] > 1]
        try:
            io.write_csv(groups_path, rows, ["id", "cluster"])
        except OSError as e:
            problems.append(f"cannot write {groups_path} ({e.strerror or e})")
    try:
        duplicate_groups = read_duplicate_groups(groups_path, train)
    except PodiumError as e:
        problems.append(str(e))
        duplicate_groups = None
    kept = ""
    if duplicate_groups:
        kept = f"; {groups_path.name} keeps {len(set(duplicate_groups.values()))} clusters together"
    if folds_path.is_file():
        try:
            return read_folds(folds_path, train, int(competition.cfg.n_folds), duplicate_groups), (
                f"{folds_path}{kept}"
            )
        except PodiumError as e:
            problems.append(str(e))
    n_folds, seed = int(competition.cfg.n_folds), int(competition.cfg.folds_seed)
    try:
        folds = make_folds(train, n_folds, seed, duplicate_groups)
    except PodiumError as e:
        return None, f"none ({e})"
    return folds, f"folds.csv not made yet: those podium train will make{kept}"
