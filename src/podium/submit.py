"""Submission files: streaming writer (validation and local scoring come with the adapters)."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from podium import io
from podium.competition import SubmissionFormat

__all__ = ["write_submission"]


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
