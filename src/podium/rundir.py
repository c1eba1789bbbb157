"""A run directory: the one module that knows its files, how they are written and read.

A training run (`podium train`):

    config.yaml            resolved config, written once before any worker starts
    checkpoints/last.pt    everything needed to resume (model, EMA, optimizer, scheduler, scaler,
    checkpoints/best.pt      RNG states, progress); best = best validation score
    metrics.csv            one row per epoch
    tb/                    TensorBoard events
    oof.npz                out-of-fold probabilities of the best epoch (uint8 p*255) and targets,
                           and the image-level head's P(mask not empty) when the model has one
    summary.json           the run's facts for the ledger and write-ups
    tuned/<ensemble>.json  what `podium tune` chose for an ensemble holding this run (the name
                           is a digest of the ensemble's run folders): `podium predict` on the
                           same runs finds it here, wherever the tune command's own folder is

A `podium tune` folder holds tuned.json, a `podium predict` folder predict.json and
submission.csv. Every file is written atomically (podium.io); the temporary files a killed
process leaves (`.NAME.*.tmp`) are removed by the next command that uses the run.

A run whose checkpoint could not be saved (a full disk) says `"status": "failed"` in its
summary.json: run globs and `runs_of` skip it, like a run with no checkpoint. Checkpoints hold
tensors and plain data only and load with `torch.load(weights_only=True)`: a file that would
run code when loaded is refused.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import pickle
import re
import shutil
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from podium import io, ledger, runlock
from podium.io import PodiumError

log = logging.getLogger(__name__)

__all__ = [
    "CONFIG",
    "SUMMARY",
    "METRICS",
    "OOF",
    "TUNED",
    "PREDICTED",
    "TENSORBOARD",
    "checkpoint_path",
    "is_run",
    "run_problem",
    "check_checkpoint_space",
    "free_bytes",
    "read_config",
    "write_config",
    "read_summary",
    "write_summary",
    "save_checkpoint",
    "load_checkpoint",
    "quantize",
    "write_oof",
    "read_oof",
    "read_oof_nonempty",
    "append_metrics",
    "resolve_runs",
    "record_tuning",
    "find_tuning",
]

CONFIG = "config.yaml"
SUMMARY = "summary.json"
METRICS = "metrics.csv"
OOF = "oof.npz"
TENSORBOARD = "tb"
TUNED = "tuned.json"  # in a `podium tune` folder
PREDICTED = "predict.json"  # in a `podium predict` folder
_TUNINGS = "tuned"  # in a training run: one file per ensemble tuned with it


# -- config, summary, metrics -----------------------------------------------------------------
def is_run(path: Path) -> bool:
    """Whether `path` is a training run's folder (it has a config.yaml)."""
    return (Path(path) / CONFIG).is_file()


def read_config(run_dir: Path) -> DictConfig:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise PodiumError(f"{run_dir}: not a run directory (no {CONFIG} there)")
    return OmegaConf.load(path)


def write_config(run_dir: Path, config: dict | DictConfig) -> None:
    io.write_text(Path(run_dir) / CONFIG, OmegaConf.to_yaml(config))


def read_summary(run_dir: Path) -> dict | None:
    path = Path(run_dir) / SUMMARY
    return io.read_json(path) if path.is_file() else None


def write_summary(run_dir: Path, summary: dict) -> None:
    io.write_json(Path(run_dir) / SUMMARY, summary)


def append_metrics(run_dir: Path, row: dict, columns: Sequence[str]) -> None:
    """Add one epoch's row to metrics.csv (a resumed epoch replaces its old row)."""
    path = Path(run_dir) / METRICS
    rows = io.read_csv_rows(path) if path.is_file() else []
    rows = [r for r in rows if int(r["epoch"]) < int(row["epoch"])] + [row]
    io.write_csv(path, rows, list(columns))


# -- checkpoints ------------------------------------------------------------------------------
def checkpoint_path(run_dir: Path, which: str = "best") -> Path:
    """checkpoints/best.pt or checkpoints/last.pt."""
    if which not in ("best", "last"):
        raise PodiumError(f"checkpoint={which}: expected best | last")
    return Path(run_dir) / "checkpoints" / f"{which}.pt"


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    """Write `checkpoint` atomically: a failed write (a full disk) leaves the previous file
    intact and no temporary file behind, and raises the OSError itself (torch reports a failed
    write as a RuntimeError that names neither the file nor the cause)."""
    with io.atomic_write(path, "wb") as f:
        sink = _Sink(f)
        try:
            torch.save(checkpoint, sink)
        except RuntimeError:
            if sink.error is not None:
                raise sink.error from None
            raise


class _Sink:
    """The file torch.save writes to, keeping the OSError a write raised."""

    def __init__(self, file: Any) -> None:
        self.file, self.error = file, None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


# Checkpoints saved before podium stored the RNG states as plain lists hold numpy's state as a
# uint32 ndarray: exactly what that needs to load (an array of numbers is built; no code runs).
# The third is numpy's _reconstruct, which pickled arrays name.
_NUMPY_ARRAY_GLOBALS = [
    np.ndarray,
    np.dtype,
    np.zeros(0).__reduce__()[0],
    type(np.dtype(np.uint32)),
]


def _numpy_arrays_allowed() -> contextlib.AbstractContextManager:
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return allow(_NUMPY_ARRAY_GLOBALS) if allow else contextlib.nullcontext()


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    """A checkpoint's dict, read with `weights_only=True`: tensors and plain data only. A file
    that needs anything else to load (a pickle that would run code) is refused, one line naming
    it, and nothing in it runs."""
    path = Path(path)
    if not path.is_file():
        raise PodiumError(f"{path}: no checkpoint (did the run finish an epoch?)")
    try:
        with _numpy_arrays_allowed():
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's refusals: "Unsupported global: GLOBAL exec ...", "Can only build Tensor, ...
        # but got <class 'x.Y'>"; anything else is a damaged file.
        wanted = re.search(r"GLOBAL (\S+)|but got <class '([^']+)'>", str(e))
        if wanted is None:
            detail = _first_line(str(e).split("WeightsUnpickler error:")[-1])
            raise PodiumError(f"{path}: not a readable checkpoint ({detail})") from None
        raise PodiumError(
            f"{path}: refused: not a plain checkpoint (it asks for {wanted[1] or wanted[2]}); "
            "nothing in it was run. podium loads tensors and plain data only"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise PodiumError(f"{path}: not a readable checkpoint ({_first_line(e)})") from None
    if not isinstance(checkpoint, dict):
        raise PodiumError(f"{path}: not a podium checkpoint (it holds a {type(checkpoint)})")
    return checkpoint


def _first_line(error: BaseException | str) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def check_checkpoint_space(run_dir: Path, estimated_bytes: int) -> None:
    """Refuse to train when the checkpoints cannot fit: the run would lose its first epoch.
    A first save writes best.pt and last.pt; later saves replace one file at a time, the old
    one staying until the new one is complete. Sizes: last.pt's, else `estimated_bytes`."""
    folder = Path(run_dir) / "checkpoints"
    last = checkpoint_path(run_dir, "last")
    needed = last.stat().st_size if last.is_file() else 2 * estimated_bytes
    free = free_bytes(folder)
    if free < needed:
        raise PodiumError(
            f"{folder}: not enough free disk space for the checkpoints: they need "
            f"~{_megabytes(needed)}, {_megabytes(free)} free there; make room or put the run "
            "elsewhere (hydra.run.dir=...)"
        )


def free_bytes(path: Path) -> int:
    """Free space on the filesystem that holds (or will hold) `path`."""
    existing = next(p for p in (Path(path), *Path(path).parents) if p.exists())
    return shutil.disk_usage(existing).free


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


# -- out-of-fold predictions ------------------------------------------------------------------
def quantize(probs: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Probabilities as uint8 p*255, rounded half to even (4x smaller, error < 0.002): how OOF
    files store them, and how prediction hands them to post-processing, so both see the same
    values. A tensor stays a tensor on its device."""
    if isinstance(probs, torch.Tensor):
        return probs.float().mul(255.0).round_().to(torch.uint8)
    return np.rint(probs * 255.0).astype(np.uint8)


def write_oof(
    run_dir: Path,
    ids: Sequence[str],
    probs: Sequence,
    masks: Sequence,
    nonempty: Sequence[float] | None = None,
) -> None:
    """oof.npz: `ids`, and per image `prob_<i>` (uint8 CxHxW, p*255), `mask_<i>` (the target
    at the same size) and, from a model with the image-level head, `nonempty_<i>` (float32
    P(the mask is not empty)). Streamed into the zip, then renamed into place."""
    with (
        io.atomic_write(Path(run_dir) / OOF, "wb") as f,
        zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf,
    ):
        arrays = {"ids": np.array(list(ids))}
        for i, (p, m) in enumerate(zip(probs, masks, strict=True)):
            arrays[f"prob_{i}"], arrays[f"mask_{i}"] = p, m
        if nonempty is not None:
            if len(nonempty) != len(arrays["ids"]):
                raise ValueError(f"{len(nonempty)} non-empty probabilities for {len(ids)} ids")
            for i, value in enumerate(nonempty):
                arrays[f"nonempty_{i}"] = np.float32(value)
        for name, array in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def read_oof(run_dir: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(image id, uint8 probabilities CxHxW, target) of every out-of-fold image of a run."""
    path = Path(run_dir) / OOF
    if not path.is_file():
        raise PodiumError(f"{path}: no out-of-fold predictions (trainer.save_oof=false?)")
    with np.load(path, allow_pickle=False) as oof:
        for i, image_id in enumerate(oof["ids"].tolist()):
            yield str(image_id), oof[f"prob_{i}"], oof[f"mask_{i}"]


def read_oof_nonempty(run_dir: Path) -> dict[str, float]:
    """Image id -> the image-level head's out-of-fold P(the mask is not empty); empty for a run
    without the head (and for oof.npz files written before podium had it)."""
    path = Path(run_dir) / OOF
    if not path.is_file():
        raise PodiumError(f"{path}: no out-of-fold predictions (trainer.save_oof=false?)")
    with np.load(path, allow_pickle=False) as oof:
        if "nonempty_0" not in oof.files:
            return {}
        ids = oof["ids"].tolist()
        return {str(image_id): float(oof[f"nonempty_{i}"]) for i, image_id in enumerate(ids)}


# -- which runs -------------------------------------------------------------------------------
def run_problem(run_dir: Path) -> str | None:
    """Why the run in `run_dir` cannot be used for predictions, or None: it failed (its
    summary.json says so, with the reason), or it has nothing to use (no checkpoint and no
    out-of-fold predictions: it stopped before its first checkpoint)."""
    run_dir = Path(run_dir)
    try:
        summary = read_summary(run_dir) or {}
    except ValueError:
        summary = {}
    if summary.get("status") == "failed":
        return f"failed: {summary.get('error') or 'see its podium.log'}"
    saved = [checkpoint_path(run_dir, "best"), checkpoint_path(run_dir, "last"), run_dir / OOF]
    if not any(p.is_file() for p in saved):
        return "no checkpoint: it stopped before its first one"
    return None


def resolve_runs(cfg: DictConfig) -> list[tuple[Path, float]]:
    """(run directory, ensemble weight) of every run named by `runs` and `runs_of`.

    `runs` entries are directories or globs, relative to the working directory or else to
    `<paths.runs_dir>/<competition>`; `run_weights` gives one weight per entry (a glob's runs
    share it). `runs_of=E` adds every run the competition's ledger records under
    experiment_name E (the latest usable one of each fold and seed), with weight 1. Globs and
    `runs_of` skip failed runs and runs with no checkpoint (one log line says which); a run
    named on its own that is one of those is an error. Temporary files that a killed process
    left in a run are removed (unless a training holds the run)."""
    competition = cfg.competition.name
    base = Path(cfg.paths.runs_dir) / competition
    entries = [str(e) for e in (cfg.get("runs") or [])]
    weights = cfg.get("run_weights")
    if weights is not None and len(weights) != len(entries):
        raise PodiumError(f"run_weights: {len(weights)} weights for {len(entries)} entries of runs")
    found: dict[Path, float] = {}
    for i, entry in enumerate(entries):
        for path in _usable_runs(entry, _match_runs(entry, base)):
            found.setdefault(path, 1.0 if weights is None else float(weights[i]))
    if cfg.get("runs_of"):
        for path in _experiment_runs(str(cfg.runs_of), Path(cfg.paths.runs_dir), competition):
            found.setdefault(path, 1.0)
    if not found:
        raise PodiumError(
            "no runs given: set runs=[RUN_DIR,...] (globs work) or runs_of=EXPERIMENT"
        )
    for path in found:
        trained_on = read_config(path).competition.name
        if trained_on != competition:
            raise PodiumError(
                f"{path}: trained on competition {trained_on}, not {competition} "
                f"(add competition={trained_on})"
            )
        runlock.remove_temp_files(path)
    return list(found.items())


def _usable_runs(entry: str, matches: list[Path]) -> list[Path]:
    """The runs of `entry` that can be used; an entry naming one unusable run is an error."""
    if not matches:
        raise PodiumError(f"runs: '{entry}' names no run directory (none with a {CONFIG})")
    problems = {path: run_problem(path) for path in matches}
    usable = [path for path, problem in problems.items() if problem is None]
    if not any(c in entry for c in "*?[") and not usable:  # one folder, named on its own
        raise PodiumError(f"runs: {matches[0]}: {problems[matches[0]]}; leave it out of runs")
    skipped = {path: problem for path, problem in problems.items() if problem is not None}
    if skipped:
        _log_skipped(f"runs: '{entry}'", skipped)
    if not usable:
        raise PodiumError(f"runs: '{entry}' names no usable run ({len(skipped)} skipped)")
    return usable


def _log_skipped(source: str, skipped: dict[Path, str]) -> None:
    listed = "; ".join(f"{path.name} ({problem})" for path, problem in skipped.items())
    log.warning("%s: skipped %d run(s): %s", source, len(skipped), listed)


def _match_runs(entry: str, base: Path) -> list[Path]:
    given = Path(entry).expanduser()
    for root in (Path.cwd(), base):
        pattern = str(given if given.is_absolute() else root / given)
        runs = [p for p in sorted(Path(p).resolve() for p in glob.glob(pattern)) if is_run(p)]
        if runs:
            return runs
    return []


def _experiment_runs(experiment: str, runs_dir: Path, competition: str) -> list[Path]:
    path = ledger.ledger_path(runs_dir, competition)
    latest: dict[tuple, Path] = {}
    skipped: dict[Path, str] = {}
    for record in ledger.read(path):
        if record.get("kind") != "run" or record.get("experiment_name") != experiment:
            continue
        run_dir = Path(record.get("run_dir", ""))
        if not is_run(run_dir):
            continue
        problem = run_problem(run_dir)
        if problem is None:
            latest[(record.get("fold"), record.get("seed"))] = run_dir.resolve()
        else:
            skipped[run_dir.resolve()] = problem
    skipped = {p: problem for p, problem in skipped.items() if p not in latest.values()}
    if skipped:
        _log_skipped(f"runs_of={experiment}", skipped)
    if not latest:
        more = f" ({len(skipped)} skipped)" if skipped else ""
        raise PodiumError(f"runs_of={experiment}: no runs of that experiment in {path}{more}")
    return sorted(latest.values())


# -- what `podium tune` chose for an ensemble -------------------------------------------------
def _ensemble_key(runs: Sequence[Path]) -> str:
    names = "\n".join(sorted(str(Path(r).resolve()) for r in runs))
    return hashlib.sha256(names.encode()).hexdigest()[:16]


def record_tuning(runs: Sequence[Path], tuned: dict) -> list[Path]:
    """Keep `tuned` with the runs it was tuned on: tuned/<ensemble>.json in each run folder, so
    `find_tuning` finds it from the runs alone. A read-only run folder is skipped (say so)."""
    key, written = _ensemble_key(runs), []
    for run in runs:
        path = Path(run) / _TUNINGS / f"{key}.json"
        try:
            io.write_json(path, tuned)
            written.append(path)
        except OSError as e:
            log.warning("%s: tuning not recorded in this run folder (%s)", run, e.strerror or e)
    return written


def find_tuning(runs: Sequence[Path]) -> tuple[dict, Path] | None:
    """The latest tuning recorded for exactly this ensemble of runs, and where it was found."""
    key = _ensemble_key(runs)
    candidates = [Path(r) / _TUNINGS / f"{key}.json" for r in runs]
    found = sorted((p for p in candidates if p.is_file()), key=lambda p: p.stat().st_mtime)
    for path in reversed(found):
        try:
            return io.read_json(path), path
        except ValueError:
            log.warning("%s: not valid JSON, skipped", path)
    return None
