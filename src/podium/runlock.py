"""Who writes a run directory now, and what a killed writer left in it.

The process training a run holds an exclusive lock on its folder (flock: the kernel drops it
when the process dies, so a killed run frees it); a second training of the same run is refused.
The temporary files of podium.io's atomic writes (`.NAME.*.tmp`) that a kill left behind are
removed when a training starts, and by other commands that use the run while no training holds
it (a training's own temporary files are in use).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from podium.io import PodiumError

log = logging.getLogger(__name__)

__all__ = ["claim_run", "in_use", "remove_temp_files"]


@contextlib.contextmanager
def claim_run(run_dir: Path) -> Iterator[None]:
    """Hold the run for the process training it: a second training of it is an error, and
    other commands leave its temporary files alone meanwhile. The temporary files a killed
    process left are removed now."""
    with _folder_lock(run_dir) as held:
        if not held:
            raise PodiumError(f"{run_dir}: another podium train is writing this run right now")
        _remove_temp_files(run_dir)
        yield


def in_use(run_dir: Path) -> bool:
    """Whether a training process holds the run now (see `claim_run`)."""
    with _folder_lock(run_dir) as held:
        return not held


def remove_temp_files(run_dir: Path) -> None:
    """Delete the temporary files a killed process left in `run_dir` (unless a training holds
    the run: those are its own, in use)."""
    with _folder_lock(run_dir) as held:
        if held:
            _remove_temp_files(run_dir)


def _remove_temp_files(run_dir: Path) -> None:
    removed, size = 0, 0
    for path in Path(run_dir).rglob(".*.tmp"):  # podium.io.atomic_write's temporary files
        with contextlib.suppress(OSError):  # a read-only run folder stays as it is
            bytes_ = path.stat().st_size
            path.unlink()
            removed, size = removed + 1, size + bytes_
    if removed:
        what = f"{removed} temporary file(s) ({size / 2**20:.1f} MB)"
        log.info("%s: removed %s that an interrupted command left", run_dir, what)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[bool]:
    """Try the exclusive lock on `folder` (flock: it dies with its process, so a killed run
    frees it); yields whether this process holds it. A folder that is missing, or on a
    filesystem without locks, counts as free: nothing else can be known."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except OSError as e:
            held = e.errno not in (errno.EWOULDBLOCK, errno.EACCES)
        yield held
    finally:
        os.close(fd)  # releases the lock
