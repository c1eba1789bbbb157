"""The data check: every sample is read once, strictly, before anything trains or predicts.

`podium train` (rank 0 only under DDP), `podium predict` (the test images) and `podium download`
(after its layout check) run it. For each sample: the image file decodes strictly (a truncated
JPEG, a PNG with a bad checksum, an empty or corrupt file is caught, not decoded grey-filled),
its size matches what the competition declares, a 16-bit image fits `image_bit_depth`; the mask
source decodes (an RLE string parses and fits the image, a mask file has the image's size) and
its values fit the competition's `mask_encoding`; two samples with one id have the same label.
Without it a bad file fails when a DataLoader worker first loads it, possibly hours into an
epoch, or never fails and trains on an empty mask.

The first problems are printed one line each, then the count, and the command exits non-zero.
Results are cached per sample (its files' path, size and modification time, its RLE text, the
competition's reading settings), in the data folder or, when that is read-only, the workspace:
a second run reads nothing but the cache. First runs check in parallel worker processes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import sys
import time
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from podium import io
from podium.competition import Competition, Sample, load_competition
from podium.io import PodiumError

log = logging.getLogger(__name__)

__all__ = [
    "DataCheckError",
    "DataReport",
    "check_sample",
    "check_samples",
    "require_clean",
    "require_clean_data",
]

CHECK_VERSION = 1  # bump when a check changes: cached verdicts of older checks are redone
SHOWN = 20  # problem lines printed before the count
PARALLEL_FROM = 200  # fewer samples to read are read here (starting workers costs ~1 s)
CHUNK = 32  # samples per task handed to a worker process


class DataCheckError(PodiumError):
    """The data check found problems (listed on stderr before this one-line count)."""


@dataclass
class DataReport:
    """What the check found in one split: a line per problem, and how many samples had one."""

    split: str  # train | test
    total: int  # samples checked
    bad_samples: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    read: int = 0  # samples read this time (the others came from the cache)
    seconds: float = 0.0

    def summary(self) -> str:
        if not self.problems:
            return f"{self.total} {self.split} samples fine"
        if not self.bad_samples:  # a problem of the whole split (e.g. its bit depth)
            return f"the {self.split} data needs a setting"
        has = "has" if self.bad_samples == 1 else "have"
        return f"{self.bad_samples} of {self.total} {self.split} samples {has} problems"


# =============================================================================================
# The entry points.
def require_clean_data(
    competition: Competition, samples: Sequence[Sample], split: str, with_masks: bool = True
) -> None:
    """Check `samples` and raise a DataCheckError (after printing the problems) unless they are
    clean. Under DDP only rank 0 reads the data; the other ranks wait for its verdict and fail
    with the same line."""
    from podium import distributed as dist

    verdict = None
    if dist.is_main():
        try:
            require_clean(check_samples(competition, samples, split, with_masks))
        except PodiumError as e:
            verdict = str(e)
    if dist.is_distributed():
        verdict = dist.broadcast_object(verdict)
    if verdict is not None:
        raise DataCheckError(verdict)


def require_clean(*reports: DataReport) -> None:
    """Log the warnings; print the first problems one line each on stderr, then raise a
    DataCheckError with the count."""
    for report in reports:
        for warning in report.warnings:
            log.warning("data check: %s", warning)
    problems = [line for report in reports for line in report.problems]
    if not problems:
        return
    for line in problems[:SHOWN]:
        print(f"podium: data check: {line}", file=sys.stderr, flush=True)
    unshown = f" ({len(problems) - SHOWN} more lines not shown)" if len(problems) > SHOWN else ""
    counts = "; ".join(report.summary() for report in reports if report.problems)
    raise DataCheckError(f"data check: {counts}{unshown}; fix or remove them (listed above)")


def check_samples(
    competition: Competition,
    samples: Sequence[Sample],
    split: str,
    with_masks: bool = True,
    workers: int | None = None,
) -> DataReport:
    """Check every sample (its cached verdict when its files did not change) and the split as
    a whole. `workers`: processes for a first run (None: the CPUs, at most 16)."""
    started = time.perf_counter()
    samples = list(samples)
    if split == "train" and not samples:
        raise PodiumError(
            f"competition {competition.name}: no training samples in {competition.data_dir} "
            "(is its labels CSV empty?)"
        )
    cache = VerdictCache(competition, split, with_masks)
    keys = [cache.key(sample) for sample in samples]
    pending = [i for i, key in enumerate(keys) if key not in cache.verdicts]
    if len(pending) >= PARALLEL_FROM:
        log.info("data check: reading %d %s samples (once: then cached)", len(pending), split)
    todo = [samples[i] for i in pending]
    for i, verdict in zip(pending, _check_all(competition, todo, with_masks, workers), strict=True):
        cache.verdicts[keys[i]] = verdict
    if pending:
        cache.save(keys)
    report = DataReport(split, len(samples), read=len(pending))
    maxima = []
    for key in keys:
        problems, max16 = cache.verdicts[key]
        report.problems += problems
        report.bad_samples += bool(problems)
        if max16 is not None:
            maxima.append(max16)
    _check_duplicates(samples, report)
    _check_bit_depth(competition, maxima, report)
    report.seconds = time.perf_counter() - started
    if not report.problems:
        cached = report.total - report.read
        how = f"{report.read} read in {report.seconds:.1f} s, {cached} known from the cache"
        log.info("data check: %s (%s)", report.summary(), how)
    return report


# =============================================================================================
# One sample.
def check_sample(
    competition: Competition, sample: Sample, with_masks: bool = True
) -> tuple[list[str], int | None]:
    """(problem lines, the largest value when the image is a 16-bit file) of one sample. An
    adapter's own exception becomes a problem line naming the sample, not a traceback."""
    problems: list[str] = []
    try:
        shape, max16 = _check_image(competition, sample)
    except PodiumError as e:
        return [str(e)], None
    except Exception as e:  # an adapter's bug or surprise: name the sample, keep checking
        return [f"{sample.image}: {type(e).__name__}: {e}"], None
    depth = competition.image_bit_depth
    if max16 is not None and depth != "auto" and max16 > io.bit_depth_max(depth):
        problems.append(
            f"{sample.image}: values reach {max16}, above competition.image_bit_depth={depth} "
            f"(0..{io.bit_depth_max(depth)})"
        )
    if with_masks:
        try:
            _check_mask(competition, sample, shape)
        except PodiumError as e:
            problems.append(str(e))
        except Exception as e:
            problems.append(f"{sample.origin or sample.image}: mask: {type(e).__name__}: {e}")
    return problems, max16


def _check_image(competition: Competition, sample: Sample) -> tuple[tuple[int, int], int | None]:
    """The sample's image size as training sees it, and its largest value if 16-bit."""
    info = io.verify_image_file(sample.image)
    own_reader = type(competition).read_image is not Competition.read_image
    max16 = None
    if info is not None and info.format == "JPEG" and info.orientation == 1 and not own_reader:
        shape = (info.height, info.width)  # decoded strictly above; JPEGs are 8-bit
    else:
        raw = io.decode_image(sample.image)
        max16 = int(raw.max()) if raw.dtype == np.uint16 else None
        shape = raw.shape[:2]
        if own_reader:
            image = competition.read_image(sample)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise PodiumError(
                    f"{sample.image}: the adapter's read_image gave {image.dtype} {image.shape}; "
                    "expected HxWx3 uint8 RGB"
                )
            shape = image.shape[:2]
    expected = tuple(competition.image_shape(sample))
    if expected != tuple(shape):
        turned = f" (EXIF orientation {info.orientation})" if info and info.orientation != 1 else ""
        raise PodiumError(
            f"{sample.image}: image is {shape[1]}x{shape[0]}{turned} but the competition says "
            f"{expected[1]}x{expected[0]} (options.image_shape, or the adapter's image_shape)"
        )
    return (int(shape[0]), int(shape[1])), max16


def _check_mask(competition: Competition, sample: Sample, shape: tuple[int, int]) -> None:
    sources = sample.mask if isinstance(sample.mask, (list, tuple)) else [sample.mask]
    for source in sources:
        if isinstance(source, Path):
            io.verify_image_file(source, "mask")
    target = competition.read_mask(sample, shape)
    if competition.task == "classification":  # a label vector, read (and checked) above
        return
    if tuple(target.shape[-2:]) != tuple(shape):
        raise PodiumError(
            f"{sample.origin or sample.image}: mask size {target.shape[-1]}x{target.shape[-2]} "
            f"differs from image size {shape[1]}x{shape[0]}"
        )


# =============================================================================================
# The split as a whole.
def _check_duplicates(samples: list[Sample], report: DataReport) -> None:
    """One id listed twice: an error if the two differ in image or label, else a warning."""
    first: dict[str, Sample] = {}
    repeats = 0
    for sample in samples:
        seen = first.setdefault(sample.id, sample)
        if seen is sample:
            continue
        if (str(seen.image), _label(seen.mask)) != (str(sample.image), _label(sample.mask)):
            report.bad_samples += 1
            report.problems.append(
                f"{sample.origin or sample.image}: sample id {sample.id} is listed twice with "
                f"different images or masks (also {seen.origin or seen.image})"
            )
        else:
            repeats += 1
    if repeats:
        report.warnings.append(
            f"{repeats} {report.split} sample(s) repeat an earlier one exactly (id, image and "
            "label): each is used as often as it is listed"
        )


def _check_bit_depth(competition: Competition, maxima: list[int], report: DataReport) -> None:
    """With image_bit_depth=auto, 16-bit data whose values stay below 2**14 is refused: scaled
    as 16-bit it would train near-black (12-bit data: at most 15 of 255)."""
    if not maxima or competition.image_bit_depth != "auto" or max(maxima) >= 2**14:
        return
    top = max(maxima)
    bits = next(b for b in (8, 10, 12, 14) if top < 2**b)
    report.problems.append(
        f"{competition.data_dir}: {len(maxima)} {report.split} images are 16-bit files whose "
        f"values reach only {top}: set competition.image_bit_depth={bits} (0..{2**bits - 1} "
        "becomes 0..255), or 16 to scale 0..65535 as stored"
    )


def _label(source: Any) -> Any:
    if isinstance(source, (list, tuple)):
        return tuple(_label(s) for s in source)
    return str(source) if isinstance(source, Path) else source


# =============================================================================================
# Reading many samples: here, or in worker processes.
def _check_all(
    competition: Competition, samples: list[Sample], with_masks: bool, workers: int | None
) -> list[tuple[list[str], int | None]]:
    if workers is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        workers = min(16, cpus or 1)
    workers = min(workers, math.ceil(len(samples) / CHUNK))
    config = _portable_config(competition)
    if len(samples) < PARALLEL_FROM or workers < 2 or config is None:
        return [check_sample(competition, s, with_masks) for s in samples]
    chunks = [samples[i : i + CHUNK] for i in range(0, len(samples), CHUNK)]
    # spawn: a fork of a process holding torch's threads can hang (README, CPython gh-112275)
    context = multiprocessing.get_context("spawn")
    try:
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=(config,)
        ) as pool:
            with _main_module_hidden():  # workers start as tasks are submitted
                futures = [pool.submit(_check_chunk, chunk, with_masks) for chunk in chunks]
            done = [future.result() for future in futures]
    except Exception as e:  # a worker died, or a sample does not pickle: read them here
        log.warning("data check: worker processes failed (%s); reading here instead", e)
        return [check_sample(competition, s, with_masks) for s in samples]
    return [verdict for chunk in done for verdict in chunk]


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Spawned workers re-import the parent's __main__ module: the CLI (slow: Hydra), or a
    user's script, which runs again unless guarded by `if __name__ == "__main__"`. The workers
    need nothing from it, so they are shown an empty one."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _portable_config(competition: Competition) -> dict | None:
    """The competition's config as plain data a worker process rebuilds the adapter from, or
    None when it cannot be resolved on its own (then the check runs in this process)."""
    try:
        return OmegaConf.to_container(competition.cfg, resolve=True)
    except Exception:
        return None


_WORKER_COMPETITION: Competition | None = None


def _start_worker(config: dict) -> None:
    global _WORKER_COMPETITION
    _WORKER_COMPETITION = load_competition(OmegaConf.create({"competition": config}))


def _check_chunk(samples: list[Sample], with_masks: bool) -> list[tuple[list[str], int | None]]:
    return [check_sample(_WORKER_COMPETITION, sample, with_masks) for sample in samples]


# =============================================================================================
# The cache of verdicts.
class VerdictCache:
    """Each sample's verdict under a key made of what it depends on: the files' path, size and
    modification time, the label text, and the competition's reading settings. One JSON file
    per split, in the data folder (or the workspace when that is read-only)."""

    def __init__(self, competition: Competition, split: str, with_masks: bool):
        self.path = _cache_path(competition, split)
        self.with_masks = with_masks
        self.settings = _settings_digest(competition)
        self.verdicts: dict[str, list] = {}  # key -> [problem lines, 16-bit maximum or None]
        try:
            stored = io.read_json(self.path) if self.path and self.path.is_file() else {}
        except (OSError, ValueError):
            stored = {}  # a damaged cache is only a slower check
        if isinstance(stored, dict) and stored.get("settings") == self.settings:
            self.verdicts = stored["verdicts"]

    def key(self, sample: Sample) -> str:
        parts = [sample.id, _stamp(sample.image), json.dumps(sample.meta, default=str)]
        if self.with_masks:
            parts.append(_source_stamp(sample.mask))
        return hashlib.sha1(repr(parts).encode()).hexdigest()

    def save(self, keys: list[str]) -> None:
        """Keep the clean verdicts of these samples: a sample with a problem is read again next
        time (so a fix is seen even if the file's stamp did not change), and files no longer
        listed are forgotten."""
        if self.path is None:
            return
        verdicts = {k: self.verdicts[k] for k in keys if not self.verdicts[k][0]}
        try:
            io.write_json(self.path, {"settings": self.settings, "verdicts": verdicts})
        except OSError as e:
            log.debug("data check: cache not written (%s)", e)


def _cache_path(competition: Competition, split: str) -> Path | None:
    data_dir = competition.data_dir
    if _writable(data_dir):
        return data_dir / f".podium-datacheck-{split}.json"
    from podium.workspace import workspace_root

    try:
        root = workspace_root()
    except PodiumError:
        return None
    digest = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return root / "data" / ".podium-datacheck" / f"{competition.name}-{digest}-{split}.json"


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def _settings_digest(competition: Competition) -> str:
    """What the verdicts depend on besides the files: the competition's settings (except its
    training ones), its adapter's code and this check's version."""
    try:  # resolved: the same settings give the same digest in any command and process
        cfg = OmegaConf.to_container(competition.cfg, resolve=True)
    except Exception:
        cfg = OmegaConf.to_container(competition.cfg, resolve=False)
    for unrelated in ("image_size", "n_folds", "folds_seed", "metric", "encoder_weights"):
        cfg.pop(unrelated, None)
    adapter = Path(str(competition.cfg.get("dir", ""))) / "adapter.py"
    code = _stamp(adapter) if adapter.is_file() else type(competition).__qualname__
    text = json.dumps([CHECK_VERSION, cfg, code], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def _stamp(path: Path) -> list:
    try:
        stat = os.stat(path)
    except OSError:
        return [str(path)]
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _source_stamp(source: Any) -> Any:
    if isinstance(source, (list, tuple)):
        return [_source_stamp(s) for s in source]
    if isinstance(source, Path):
        return _stamp(source)
    return None if source is None else str(source)
