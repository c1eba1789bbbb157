"""The experiment ledger: one append-only JSON-lines file per competition,
`<paths.runs_dir>/<competition>/ledger.jsonl`, with a record per finished run and per submission.

Appends take a file lock (two trainings may finish at once), write one line with a single
`write` call and fsync it. A process killed mid-append can leave at most one torn last line,
which `read` skips, so the ledger always reads back. The lock is an OS lock (flock): it is
released when its holder dies, so a killed writer never blocks the next one.

Records (one JSON object per line, keys sorted):
    {"kind": "run", "time", ...summary.json}    written by `podium train` (see train.py)
    {"kind": "submission", "time", "ref", ...}  written by `record_submission`; a later record
                                                with the same ref adds what became known
                                                (scores, status): `submissions` merges them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path

from filelock import FileLock

from podium.io import PodiumError

__all__ = [
    "ledger_path",
    "append",
    "read",
    "record_run",
    "record_submission",
    "runs",
    "submissions",
    "hash_file",
]

LOCK_TIMEOUT_S = 60


def ledger_path(runs_dir: Path, competition: str) -> Path:
    return Path(runs_dir) / competition / "ledger.jsonl"


def append(path: Path, record: dict) -> None:
    """Append `record` as one line; safe against concurrent writers and kills."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
    with FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S):
        created = not path.exists()
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
        if created:  # make the new directory entry durable too
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def record_run(path: Path, summary: dict) -> None:
    """Add a finished (or resumed-and-finished) run to the ledger at `path`."""
    append(path, {"kind": "run", "time": _now(), **summary})


def hash_file(path: Path) -> str:
    """The sha256 hex digest of a file (read in blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_submission(
    path: Path,
    *,
    ref: str | int,
    file: Path | str | None = None,
    runs: Iterable[str | Path] = (),
    message: str | None = None,
    status: str | None = None,
    public_score: float | None = None,
    private_score: float | None = None,
    submitted_at: str | None = None,
    sha256: str | None = None,
    kernel: str | None = None,
    version: int | None = None,
) -> dict:
    """Add a submission (or news about one: its score, its status) to the ledger at `path`.

    `ref` is the submission's id on the leaderboard (Kaggle's ref). `runs` names what made the
    file: training run directories, run ids (relative to the competition's runs folder),
    experiment names, or a `podium predict` folder (its predict.json lists the ensemble); with no
    `runs`, a file inside a predict folder names it. `podium runs` and `podium writeup` join them
    with the runs' CV. `file` is hashed unless its `sha256` is given. A code-competition
    submission names the `kernel` (USER/SLUG) and its `version` instead of a file. Call again
    with the same `ref` and only the new fields when a score arrives later. Returns the record
    written.
    """
    if ref is None or str(ref).strip() in ("", "0"):
        raise PodiumError(f"{path}: cannot record a submission without a ref (got {ref!r})")
    if sha256 is None and file is not None and Path(file).is_file():
        sha256 = hash_file(Path(file))
    record = {
        "kind": "submission",
        "time": _now(),
        "ref": str(ref),
        "file": None if file is None else str(file),
        "sha256": sha256,
        "runs": [str(r) for r in runs],
        "message": message,
        "status": status,
        "public_score": None if public_score is None else float(public_score),
        "private_score": None if private_score is None else float(private_score),
        "submitted_at": submitted_at,
        "kernel": kernel,
        "version": None if version is None else int(version),
    }
    append(path, record)
    return record


def runs(records: Iterable[dict]) -> list[dict]:
    """The run records, one per run directory: a resumed run's latest record replaces its
    earlier ones (in the earlier one's place, so the order stays chronological)."""
    by_dir: dict[str, dict] = {}
    for record in records:
        if record.get("kind") == "run":
            key = str(record.get("run_dir") or id(record))
            by_dir[key] = record
    return list(by_dir.values())


def submissions(records: Iterable[dict]) -> list[dict]:
    """The submission records merged by ref, in order of first appearance: later records fill
    in or update the fields they carry (None and empty lists carry nothing)."""
    merged: dict[str, dict] = {}
    for record in records:
        if record.get("kind") != "submission" or record.get("ref") is None:
            continue
        current = merged.setdefault(str(record["ref"]), {"first_time": record.get("time")})
        for key, value in record.items():
            if value is not None and value != []:
                current[key] = value
    return list(merged.values())
