"""What the doctor reads from each image: `Facts` (size, file format, grey intensity,
perceptual hash, thumbnail; for a training image, its mask's raw values, size and coverage).

`scan` reads every sample once through the adapter, as training reads it (threads: decoding
releases the GIL), and caches the facts in one .npz, keyed by the path, size and modification
time of the image and mask files (and a digest of an encoded mask), so a later run reads only
new or changed files. Facts of files that could not be read are not cached.
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path

import cv2
import numpy as np
from omegaconf import OmegaConf

from podium import dedup, io
from podium.competition import Competition, Sample
from podium.data import mask_files
from podium.io import PodiumError

__all__ = ["Facts", "Entry", "mode_format", "scan", "read_facts", "mask_convention"]

CACHE_VERSION = 1
_MAX_VALUES = 32  # raw mask values kept per mask
_LABELS = 8  # a mask with at most this many distinct values holds labels; more are greys


@dataclass(eq=False)
class Facts:
    """What reading one image (and a training image's mask) found; cached between runs."""

    key: str  # image and mask files with their sizes and modification times
    height: int = 0  # the image as the adapter reads it (what a model sees)
    width: int = 0
    file_height: int = 0  # the image file's own size: a mask file must match it
    file_width: int = 0
    mode: str = ""  # the file's pixel format (PIL mode: L, RGB, I;16...)
    mean: float = 0.0  # grey intensity
    std: float = 0.0
    phash: int = 0
    digest: str = ""
    thumb: np.ndarray = field(default_factory=lambda: np.zeros((dedup.THUMB_SIZE,) * 2, np.uint8))
    mask_values: tuple[int, ...] = ()  # distinct raw values of the mask files (first few)
    mask_levels: int = -1  # how many distinct values; -1: no mask file (encoded or none)
    mask_extreme: float = 1.0  # share of mask pixels within 1/8 of black or white
    mask_height: int = -1
    mask_width: int = -1
    coverage: tuple[float, ...] = ()  # foreground share per class, as the adapter decodes it
    error: str = ""  # why the image or its mask could not be read


@dataclass(eq=False)
class Entry:
    """One image of the report: its split, sample and facts."""

    split: str
    sample: Sample
    facts: Facts


def scan(
    competition: Competition, splits: dict[str, list[Sample]], cache: Path, workers: int = 1
) -> list[Entry]:
    """The facts of every sample of `splits` ({split: samples}), from the cache where the files
    are unchanged, else read now (in `workers` threads: decoding releases the GIL)."""
    from tqdm import tqdm

    signature = _signature(competition)
    known = _load_cache(cache, signature)
    jobs = [(split, s, _key(s)) for split, samples in splits.items() for s in samples]
    todo = [job for job in jobs if job[2] not in known]

    def read(job: tuple[str, Sample, str]) -> Facts:
        split, sample, key = job
        return read_facts(competition, sample, key, with_mask=split == "train")

    with ThreadPoolExecutor(max(1, workers)) as pool:
        done = pool.map(read, todo)
        bar = tqdm(done, total=len(todo), desc="doctor", disable=not sys.stderr.isatty())
        known.update((facts.key, facts) for facts in bar)
    entries = [Entry(split, sample, known[key]) for split, sample, key in jobs]
    _save_cache(cache, signature, [e.facts for e in entries if not e.facts.error])
    return entries


def _key(sample: Sample) -> str:
    """The files behind a sample with their sizes and modification times, and a digest of an
    encoded mask: any change makes another key."""
    parts = [_file_key(Path(sample.image))]
    sources = sample.mask if isinstance(sample.mask, (list, tuple)) else [sample.mask]
    for source in sources:
        if isinstance(source, Path):
            parts.append(_file_key(source))
        elif source is not None:
            parts.append(hashlib.blake2b(str(source).encode(), digest_size=8).hexdigest())
    return "|".join(parts)


def _file_key(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return f"{path}:missing"
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


def read_facts(competition: Competition, sample: Sample, key: str, with_mask: bool) -> Facts:
    """Read one image (and its mask when `with_mask`) as the adapter does."""
    facts = Facts(key)
    try:
        image = competition.read_image(sample)
    except Exception as e:  # the doctor reports what an adapter cannot read, whatever the cause
        facts.error = f"image: {_reason(e)}"
        return facts
    grey = image if image.ndim == 2 else cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2GRAY)
    facts.height, facts.width = image.shape[:2]
    facts.file_height, facts.file_width, facts.mode = _header(Path(sample.image), image)
    facts.mean, facts.std = float(grey.mean()), float(grey.std())
    facts.phash, facts.digest = dedup.perceptual_hash(grey), dedup.pixel_digest(image)
    facts.thumb = dedup.thumbnail(grey)
    if with_mask:
        _read_mask_facts(competition, sample, image.shape[:2], facts)
    return facts


def _header(path: Path, image: np.ndarray) -> tuple[int, int, str]:
    """(height, width, PIL mode) of the image file; the decoded image's when PIL cannot tell."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as file:
            return file.height, file.width, file.mode
    except (OSError, UnidentifiedImageError):
        channels = 1 if image.ndim == 2 else image.shape[2]
        return *image.shape[:2], {1: "L", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels}ch")


def _read_mask_facts(competition: Competition, sample: Sample, shape, facts: Facts) -> None:
    """Raw value set and size of the mask files, and the coverage of the mask the adapter
    decodes (a mask it cannot decode is an error of this sample)."""
    counts, total = Counter(), 0
    for path in mask_files(sample):
        try:
            raw = _read_raw(path)
        except Exception as e:
            facts.error = f"mask: {path}: cannot read ({_reason(e)})"
            return
        if facts.mask_height < 0:
            facts.mask_height, facts.mask_width = raw.shape[:2]
        counts.update(_value_counts(raw))
        total += raw.size
    if total:
        top = 65535 if max(counts) > 255 else 255
        margin = top // 8
        near = sum(n for v, n in counts.items() if v <= margin or v >= top - margin)
        facts.mask_values = tuple(sorted(counts)[:_MAX_VALUES])
        facts.mask_levels, facts.mask_extreme = len(counts), near / total
    try:
        mask = competition.read_mask(sample, shape)
    except Exception as e:
        facts.error = f"mask: {_reason(e)}"
        return
    if competition.task == "multiclass":
        shares = [float(np.mean(mask == k)) for k in range(1, len(competition.classes))]
    else:
        shares = [float(np.mean(m > 0)) for m in (mask[None] if mask.ndim == 2 else mask)]
    facts.coverage = tuple(shares)


def _reason(error: Exception) -> str:
    """An error in one line; other than podium's own, with its type (an adapter's bug)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text if isinstance(error, (PodiumError, OSError)) else f"{type(error).__name__}: {text}"


def _value_counts(raw: np.ndarray) -> dict[int, int]:
    """{value: pixels} of a mask file's pixels (bincount for 8 and 16 bits: no sort)."""
    if raw.dtype in (np.bool_, np.uint8, np.uint16):
        counts = np.bincount(raw.ravel().astype(np.int64, copy=False))
        values = np.flatnonzero(counts)
        return dict(zip(values.tolist(), counts[values].tolist(), strict=True))
    values, counts = np.unique(raw, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def _read_raw(path: Path) -> np.ndarray:
    """A mask file's pixels as stored (PIL reads GIF, 16-bit PNG and TIFF alike): HxW or HxWxC."""
    from PIL import Image

    with Image.open(path) as file:
        return np.asarray(file)


def mask_convention(facts: Facts, task: str, n_classes: int) -> str:
    """The encoding one mask follows, by its raw values."""
    values = set(facts.mask_values)
    if facts.mask_levels < 0:
        return "encoded (no mask files)" if facts.coverage else "none"
    if values <= {0}:
        return "empty"
    if task == "multiclass" and max(values) < n_classes:
        return "class ids"
    for pair in ({0, 1}, {0, 255}, {0, 65535}):
        if values <= pair:
            return "0/" + str(max(pair))
    if facts.mask_levels <= _LABELS:
        return "label values"
    return "lossy greys near 0/255 (JPEG)" if facts.mask_extreme >= 0.99 else "grey levels"


# -- the cache ----------------------------------------------------------------------------------
def mode_format(mode: str) -> tuple[int, int]:
    """(channels, bits per channel) of an image file's PIL mode; (0, 0) for one PIL lacks."""
    from PIL import ImageMode

    try:
        info = ImageMode.getmode(mode)
    except KeyError:
        return 0, 0
    bits = 1 if mode == "1" else np.dtype(info.typestr).itemsize * 8
    return len(info.bands), bits


def _signature(competition: Competition) -> str:
    """What else decides the facts: the adapter, its options, task and classes."""
    options = OmegaConf.to_container(competition.options, resolve=True)
    return repr(
        (CACHE_VERSION, type(competition).__name__, competition.task, competition.classes, options)
    )


def _load_cache(path: Path, signature: str) -> dict[str, Facts]:
    """The cached facts by key; nothing when the file is missing, unreadable or made for other
    adapter settings."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["signature"]) != signature:
                return {}
            columns = {
                f.name: list(data[f.name]) if f.name == "thumb" else data[f.name].tolist()
                for f in fields(Facts)
            }
        for name, kind in (("mask_values", int), ("coverage", float)):
            columns[name] = [tuple(kind(v) for v in text.split(",") if v) for text in columns[name]]
        rows = zip(*(columns[f.name] for f in fields(Facts)), strict=True)
        return {row[0]: Facts(*row) for row in rows}
    except (OSError, ValueError, KeyError):
        return {}


def _save_cache(path: Path, signature: str, facts: list[Facts]) -> None:
    """Columns of the facts (one array per field) in one .npz, written atomically."""
    if not facts:
        return
    columns: dict[str, np.ndarray] = {"signature": np.array(signature)}
    for f in fields(Facts):
        values = [getattr(x, f.name) for x in facts]
        if f.name in ("mask_values", "coverage"):
            values = [",".join(map(repr, v)) for v in values]
        dtype = np.uint64 if f.name == "phash" else None
        columns[f.name] = np.stack(values) if f.name == "thumb" else np.array(values, dtype)
    try:
        with io.atomic_write(path, "wb") as out:
            np.savez(out, **columns)
    except OSError as e:  # a read-only workspace: the doctor still reports
        print(
            f"podium: cannot write the doctor's cache {path} ({e.strerror or e})", file=sys.stderr
        )


@dataclass(eq=False)
class Pair:
    """Two images that look the same, and where they fall."""

    a: Entry
    b: Entry
    distance: int  # hash bits apart
    correlation: float  # of their grey thumbnails
    exact: bool  # identical pixels
    cluster: str  # the smallest id of the cluster the pair belongs to
    fold_a: object = None  # the fold of a training image, else its split
    fold_b: object = None
    across_folds: bool = False
    across_groups: bool = False  # two training images of different adapter groups
