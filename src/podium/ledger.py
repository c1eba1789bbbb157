"""The experiment ledger: one append-only JSON-lines file per competition,
`<paths.runs_dir>/<competition>/ledger.jsonl`, with a record per finished run and per submission.

Appends take a file lock (two trainings may finish at once), write one line with a single
`write` call and fsync it. A process killed mid-append can leave at most one torn last line,
which `read` skips, so the ledger always reads back.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from filelock import FileLock

__all__ = ["ledger_path", "append", "read", "record_run"]


def ledger_path(runs_dir: Path, competition: str) -> Path:
    return Path(runs_dir) / competition / "ledger.jsonl"


def append(path: Path, record: dict) -> None:
    """Append `record` as one line; safe against concurrent writers and kills."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
    with FileLock(str(path) + ".lock", timeout=60):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # A previous writer killed mid-line left no newline: start on a fresh line.
            size = os.fstat(fd).st_size
            if size:
                with open(path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def read(path: Path) -> list[dict]:
    """All intact records, oldest first (torn or corrupt lines are skipped)."""
    if not Path(path).is_file():
        return []
    records = []
    with open(path, "rb") as f:
        for raw in f:
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def record_run(path: Path, summary: dict) -> None:
    """Add a finished (or resumed-and-finished) run to the ledger at `path`."""
    append(path, {"kind": "run", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **summary})
