"""Submission files: the streaming writer, the validator and the local scorer.

`validate_submission` refuses what Kaggle would refuse (or silently score badly) before it costs
one of the day's submissions: it compares the file with the sample submission (header, exact id
set, duplicates, row count, row order where the competition requires it) and checks every mask
against its image size, in one streaming pass, O(text) — no mask is materialised. Each problem
names the row (the line number in the file, the header being row 1) and the reason.

`score_submission` scores a valid file against a ground truth in the same format (the demo's
hidden solution, a local competition's test labels, or out-of-fold truth) with the competition's
per-image metric, averaged over images.
"""

from __future__ import annotations

import csv
import logging
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from podium import io, metrics
from podium.competition import (
    Competition,
    RowTarget,
    Sample,
    SubmissionFormat,
    load_competition,
)
from podium.io import PodiumError
from podium.rle import RleError, rle_parse

__all__ = [
    "write_submission",
    "validate_submission",
    "score_submission",
    "check_adapter",
    "empty_rows",
    "validate_command",
    "score_command",
]

log = logging.getLogger(__name__)

# Values people write for "no mask" that are not a run-length string.
_EMPTY_LOOKALIKES = {"nan", "none", "null", "-1", "0", "[]", "''", '""', "na", "n/a"}


def write_submission(path: Path, rows: Iterable[tuple[str, str]], fmt: SubmissionFormat) -> int:
    """Write (row id, encoded mask) rows as they come — memory does not grow with the test set —
    to a temporary file renamed to `path` at the end: an interrupted run leaves no submission
    that looks complete. Returns the number of rows."""
    count = 0
    with io.atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow([fmt.id_column, fmt.mask_column])
        for row_id, encoded in rows:
            writer.writerow([row_id, encoded])
            count += 1
    return count


# -- reading ----------------------------------------------------------------------------------
@dataclass
class _Reference:
    """What a submission must look like: header and row ids (id -> row number in `name`)."""

    name: str
    header: list[str]
    rows: dict[str, int]
    ordered: bool = False


class _Problems(list):
    """The first `limit` problems, and a count of the rest."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.more = max(1, limit), 0

    def add(self, message: str) -> None:
        if len(self) < self.limit:
            self.append(message)
        else:
            self.more += 1

    def result(self) -> list[str]:
        tail = [f"... and {self.more} more problems"] if self.more else []
        return list(self) + tail


class _Unreadable(PodiumError):
    """The submission file itself cannot be read (missing, not UTF-8, broken quoting)."""


def _records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(row number, fields) of every non-blank CSV record; the row number is the line on which
    the record starts. Unreadable files raise PodiumError naming the row."""
    if not Path(path).is_file():
        raise _Unreadable(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8-sig") as f:  # a BOM is harmless: strip it
        reader = csv.reader(f, strict=True)
        line = 1
        try:
            for fields in reader:
                if fields:  # pandas (and Kaggle) skip blank lines
                    yield line, fields
                line = reader.line_num + 1
        except UnicodeDecodeError:  # decoding runs ahead by blocks: find the line itself
            raise _Unreadable(f"{path}: row {_first_non_utf8_line(path)}: not UTF-8 text") from None
        except csv.Error as e:
            raise _Unreadable(f"{path}: row {line}: malformed CSV ({e})") from None


def _first_non_utf8_line(path: Path) -> int:
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def _column(header: list[str], name: str, path: Path, key: str) -> int:
    if name not in header:
        raise PodiumError(
            f"{path}: no column '{name}' (columns: {','.join(header)}); "
            f"check competition.submission.{key}"
        )
    return header.index(name)


def _read_reference(path: Path, fmt: SubmissionFormat) -> tuple[list[str], dict[str, tuple]]:
    """Header and {row id: (row number, mask value)} of a sample submission or solution."""
    records = _records(path)
    first = next(records, None)
    if first is None:
        raise PodiumError(f"{path}: the file is empty")
    header = first[1]
    id_col = _column(header, fmt.id_column, path, "id_column")
    mask_col = _column(header, fmt.mask_column, path, "mask_column")
    rows: dict[str, tuple] = {}
    for row, fields in records:
        if len(fields) != len(header):
            raise PodiumError(f"{path}: row {row}: {len(fields)} fields, expected {len(header)}")
        row_id = fields[id_col]
        if row_id in rows:
            raise PodiumError(f"{path}: row {row}: duplicate id '{row_id}'")
        rows[row_id] = (row, fields[mask_col])
    return header, rows


def _expected(competition: Competition) -> _Reference:
    """The reference a submission is compared with: the sample submission when the competition
    has one, else the rows of its test samples."""
    fmt = competition.submission
    ordered = bool(competition.options.get("ordered_rows", False))
    path = competition.sample_submission_path()
    if path.is_file():
        header, rows = _read_reference(path, fmt)
        return _Reference(path.name, header, {k: v[0] for k, v in rows.items()}, ordered)
    layout = competition.submission_layout(competition.test_samples())
    if not layout:
        raise PodiumError(
            f"competition {competition.name}: no {path.name} in {path.parent} and no test samples; "
            "nothing to validate against"
        )
    rows = {row_id: index + 2 for index, row_id in enumerate(layout)}
    return _Reference("the test samples", [fmt.id_column, fmt.mask_column], rows, ordered)


class _Shapes:
    """The image size behind each row id: a fixed `options.image_shape`, else looked up in the
    test samples (then the training samples, for out-of-fold truth) and read from the image
    header once per image."""

    def __init__(self, competition: Competition):
        self.competition = competition
        fixed = competition.options.get("image_shape")
        self.fixed = (int(fixed[0]), int(fixed[1])) if fixed else None
        self.layout: dict[str, RowTarget] | None = None
        self.with_train = False
        self.cache: dict[str, tuple[int, int]] = {}

    def target(self, row_id: str) -> RowTarget:
        if self.layout is None:
            self.layout = self.competition.submission_layout(self.competition.test_samples())
        if row_id not in self.layout and not self.with_train:
            self.with_train = True
            self.layout.update(self.competition.submission_layout(self.competition.train_samples()))
        if row_id not in self.layout:
            raise PodiumError(
                f"competition {self.competition.name}: no test or training image for row id "
                f"'{row_id}' (does the adapter's test_samples() match the sample submission?)"
            )
        return self.layout[row_id]

    def __call__(self, row_id: str) -> tuple[int, int]:
        if self.fixed:
            return self.fixed
        sample = self.target(row_id).sample
        if sample.id not in self.cache:
            self.cache[sample.id] = self.competition.image_shape(sample)
        return self.cache[sample.id]


# -- validation -------------------------------------------------------------------------------
def _check_mask(value: str, fmt: SubmissionFormat, shape: tuple[int, int]) -> str | None:
    """Why `value` is not a valid mask of an image of `shape`, or None."""
    text = value.strip()
    if fmt.is_empty(text):
        return None
    if not text:
        return f"empty value; this competition writes an empty mask as {fmt.empty!r}"
    if text.lower() in _EMPTY_LOOKALIKES:
        return f"{value!r} is not a mask; an empty mask is written {fmt.empty!r}"
    try:
        rle_parse(text, shape, fmt.base)
    except RleError as e:
        return str(e)
    return None


def _check_rows(
    competition: Competition,
    path: Path,
    reference: _Reference,
    shapes: _Shapes,
    problems: _Problems,
) -> None:
    fmt = competition.submission
    records = _records(path)
    first = next(records, None)
    if first is None:
        problems.add(f"row 1: the file is empty; expected the header {','.join(reference.header)}")
        return
    header = first[1]
    if header != reference.header:
        message = f"row 1: header is '{','.join(header)}', expected '{','.join(reference.header)}'"
        delimiter = next((d for d in ";\t| " if len(header) == 1 and d in header[0]), None)
        if delimiter:
            message += f" (wrong delimiter {delimiter!r}: use commas)"
        problems.add(message)
        return  # the columns of the rows cannot be trusted
    id_col, mask_col = header.index(fmt.id_column), header.index(fmt.mask_column)
    expected_order = iter(reference.rows) if reference.ordered else None
    seen: dict[str, int] = {}
    count = 0
    for row, fields in records:
        count += 1
        expected_here = next(expected_order, None) if expected_order else None
        if len(fields) != len(header):
            problems.add(
                f"row {row}: {len(fields)} fields, expected {len(header)} "
                "(a wrong delimiter, or an unquoted comma?)"
            )
            continue
        row_id = fields[id_col]
        if row_id != row_id.strip():
            problems.add(f"row {row}: id {row_id!r} has blanks around it")
            continue
        if row_id in seen:
            problems.add(f"row {row}: duplicate id '{row_id}' (first at row {seen[row_id]})")
            continue
        seen[row_id] = row
        if row_id not in reference.rows:
            what = "empty id" if not row_id else f"id '{row_id}' is not in {reference.name}"
            problems.add(f"row {row}: {what}")
            continue
        if expected_here is not None and row_id != expected_here:
            problems.add(
                f"row {row}: id '{row_id}' is out of order ({reference.name} has "
                f"'{expected_here}' here; this competition requires its order)"
            )
            expected_order = None  # one report is enough: everything after is shifted
        reason = _check_mask(fields[mask_col], fmt, shapes(row_id))
        if reason:
            problems.add(f"row {row} (id '{row_id}'): {reason}")
    missing = [row_id for row_id in reference.rows if row_id not in seen]
    for row_id in missing:
        problems.add(f"id '{row_id}' (row {reference.rows[row_id]} of {reference.name}) is missing")
    if count != len(reference.rows):
        problems.add(f"{count} rows, expected {len(reference.rows)} (as in {reference.name})")


def validate_submission(competition: Competition, path: Path, max_problems: int = 20) -> list[str]:
    """The problems of submission file `path` (an empty list: valid), at most `max_problems`
    plus a count of the rest. Each names the row (file line) and the reason."""
    problems = _Problems(max_problems)
    reference, shapes = _expected(competition), _Shapes(competition)
    try:
        _check_rows(competition, Path(path), reference, shapes, problems)
    except _Unreadable as e:  # what was found so far, then why reading stopped
        problems.add(str(e).removeprefix(f"{path}: "))
    return problems.result()


# -- scoring ----------------------------------------------------------------------------------
@dataclass
class Score:
    """A local score: the competition metric (mean over images) and any extra metrics."""

    metric: str
    score: float
    images: int
    extra: dict[str, float]


def score_submission(competition: Competition, path: Path, solution_path: Path) -> float:
    """The competition metric of submission `path` against `solution_path` (a ground truth in
    the submission's format): the mean per-image score. An invalid submission is an error."""
    return score_details(competition, path, solution_path).score


def score_details(
    competition: Competition, path: Path, solution_path: Path, extra: Iterable[str] = ()
) -> Score:
    """`score_submission` with the image count and the `extra` metrics (names in METRICS)."""
    path, solution_path = Path(path), Path(solution_path)
    fmt = competition.submission
    extra_fns = {name: metrics.get_metric(name) for name in extra}
    header, truth = _read_reference(solution_path, fmt)
    sample_path = competition.sample_submission_path()
    expected_header = (
        _records_header(sample_path) if sample_path.is_file() else [fmt.id_column, fmt.mask_column]
    )
    reference = _Reference(solution_path.name, expected_header, {k: v[0] for k, v in truth.items()})
    shapes = _Shapes(competition)
    problems = _Problems(3)
    _check_rows(competition, path, reference, shapes, problems)
    if problems:
        raise PodiumError(
            f"{path}: not a valid submission for {solution_path.name}: "
            f"{'; '.join(problems.result())} (podium validate lists every problem)"
        )
    # Rows of one image (one per class) are scored together once all have been read.
    rows_per_image: dict[str, int] = {}
    for row_id in truth:
        sample_id = shapes.target(row_id).sample.id if fmt.per_class else row_id
        rows_per_image[sample_id] = rows_per_image.get(sample_id, 0) + 1
    pending: dict[str, tuple[dict, dict]] = {}
    scores, extras = [], {name: [] for name in extra_fns}
    id_col, mask_col = expected_header.index(fmt.id_column), expected_header.index(fmt.mask_column)
    records = _records(path)
    next(records)
    for _, fields in records:
        row_id = fields[id_col]
        key, class_index = row_id, None
        if fmt.per_class:
            target = shapes.target(row_id)
            key, class_index = target.sample.id, target.class_index
        shape = shapes(row_id)
        preds, truths = pending.setdefault(key, ({}, {}))
        preds[class_index] = competition.decode_mask(fields[mask_col], shape)
        try:
            truths[class_index] = competition.decode_mask(truth[row_id][1], shape)
        except RleError as e:
            raise PodiumError(f"{solution_path}: row {truth[row_id][0]}: {e}") from None
        if len(preds) < rows_per_image[key]:
            continue
        del pending[key]
        pred, true = (
            competition.assemble_mask(preds, shape),
            competition.assemble_mask(truths, shape),
        )
        scores.append(competition.score_image(pred, true))
        for name, fn in extra_fns.items():
            extras[name].append(fn(pred, true, task=competition.task))
    if not scores:
        raise PodiumError(f"{solution_path}: no rows to score")
    return Score(
        metric=str(competition.cfg.metric),
        score=float(np.mean(scores)),
        images=len(scores),
        extra={name: float(np.mean(values)) for name, values in extras.items()},
    )


def _records_header(path: Path) -> list[str]:
    first = next(_records(path), None)
    if first is None:
        raise PodiumError(f"{path}: the file is empty")
    return first[1]


# -- adapter self-check -----------------------------------------------------------------------
def check_adapter(competition: Competition, max_samples: int = 8) -> dict:
    """Run an adapter end to end on its data: list the samples, decode a few training masks
    (and re-encode them through the submission format), make the folds and check no group
    crosses them, write a submission for the test set and validate it. Returns a summary;
    any failure is a PodiumError naming the step."""
    from podium.data import make_folds

    train = competition.train_samples()
    if not train:
        raise PodiumError(f"competition {competition.name}: train_samples() is empty")
    ids = [s.id for s in train]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise PodiumError(f"competition {competition.name}: training id '{dup}' is listed twice")
    step = max(1, len(train) // max_samples)
    checked = train[::step][:max_samples]
    foreground = 0
    for sample in checked:
        shape = competition.image_shape(sample)
        mask = competition.read_mask(sample, shape)
        if mask.shape[-2:] != shape:
            raise PodiumError(f"sample {sample.id}: mask shape {mask.shape} for image {shape}")
        foreground += int(np.count_nonzero(mask))
        rows = dict(competition.submission_rows(sample, mask))
        layout = competition.submission_layout([sample])
        decoded = {
            target.class_index: competition.decode_mask(rows[row_id], shape)
            for row_id, target in layout.items()
        }
        if competition.task != "binary" and not competition.submission.per_class:
            continue  # one foreground row per image: nothing class-wise to compare
        if not np.array_equal(competition.assemble_mask(decoded, shape), mask):
            raise PodiumError(f"sample {sample.id}: the mask does not survive encode/decode")
    n_folds, seed = int(competition.cfg.n_folds), int(competition.cfg.folds_seed)
    folds = make_folds(train, n_folds, seed)
    group_folds: dict[str, set[int]] = {}
    for sample in train:
        group_folds.setdefault(sample.group or sample.id, set()).add(folds[sample.id])
    crossing = [g for g, f in group_folds.items() if len(f) > 1]
    if crossing:
        raise PodiumError(f"group '{crossing[0]}' is split across folds {group_folds[crossing[0]]}")
    summary = {
        "train": len(train),
        "groups": len(group_folds),
        "fold_sizes": [sum(1 for f in folds.values() if f == k) for k in range(n_folds)],
        "masks_checked": len(checked),
        "foreground_pixels": foreground,
        "test": 0,
        "problems": [],
    }
    test = competition.test_samples()
    summary["test"] = len(test)
    if test:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "submission.csv"
            write_submission(path, _probe_rows(competition, test), competition.submission)
            summary["problems"] = validate_submission(competition, path)
        if summary["problems"]:
            raise PodiumError(
                "a submission written by the adapter is invalid: " + summary["problems"][0]
            )
    return summary


def _probe_rows(competition: Competition, test: list) -> Iterator[tuple[str, str]]:
    """Submission rows for every test image: a centred box for the first few (exercising the
    encoder at each image's size), the empty token for the rest (cheap on 100k images)."""
    for index, sample in enumerate(test):
        if index < 4:
            shape = competition.image_shape(sample)
            pred = np.zeros(shape, np.uint8)
            pred[shape[0] // 4 : shape[0] // 2, shape[1] // 4 : shape[1] // 2] = 1
            if competition.task == "multilabel":
                pred = np.stack([pred] * len(competition.classes))
            yield from competition.submission_rows(sample, pred)
        else:
            yield from empty_rows(competition, [sample])


def empty_rows(competition: Competition, samples: Iterable[Sample]) -> Iterator[tuple[str, str]]:
    """Submission rows saying "empty" for every row of `samples` (the empty token)."""
    for sample in samples:
        for row_id in competition.submission_layout([sample]):
            yield row_id, competition.submission.empty


# -- commands ---------------------------------------------------------------------------------
def validate_command(cfg: DictConfig) -> int:
    """`podium validate competition=X file=F`: print every problem (first 20) with its row;
    exit 1 if any. Without `file`, check the competition's adapter end to end instead."""
    competition = load_competition(cfg)
    if not cfg.get("file"):
        summary = check_adapter(competition)
        written = ", a submission for them validates" if summary["test"] else ""
        print(
            f"{competition.name}: adapter OK: {summary['train']} training images in "
            f"{summary['groups']} groups, folds {summary['fold_sizes']}, "
            f"{summary['masks_checked']} masks decoded and re-encoded, "
            f"{summary['test']} test images{written}"
        )
        return 0
    path = Path(cfg.file)
    return print_verdict(path, validate_submission(competition, path), competition.name)


def print_verdict(path: Path, problems: list[str], competition: str) -> int:
    """`podium validate`'s output: each problem of the file at `path`, or that it is valid.
    Returns the exit code (1: invalid)."""
    if problems:
        for problem in problems:
            print(f"{path}: {problem}")
        print(f"{path}: INVALID ({len(problems)} problems shown)")
        return 1
    print(f"{path}: valid submission for {competition}")
    return 0


def score_command(cfg: DictConfig) -> int:
    """`podium score competition=X file=F [solution=S]`: the local score, printed last."""
    competition = load_competition(cfg)
    if not cfg.get("file"):
        raise PodiumError("podium score: pass file=SUBMISSION.csv")
    solution = cfg.get("solution") or competition.solution_path()
    if solution is None:
        raise PodiumError(
            f"competition {competition.name} has no local solution; pass solution=PATH "
            "(a ground truth in the submission's format, e.g. out-of-fold truth)"
        )
    if not Path(solution).is_file():
        raise PodiumError(f"{solution}: solution file not found")
    extra = [str(m) for m in competition.options.get("extra_metrics", []) or []]
    result = score_details(competition, Path(cfg.file), Path(solution), extra)
    for name, value in result.extra.items():
        print(f"{name}: {value:.6f}")
    print(f"{cfg.file}: {result.images} images scored against {solution}")
    print(f"{result.metric}: {result.score:.6f}")
    return 0
