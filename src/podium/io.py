"""File helpers every stage uses: atomic writes, checked image reads, JSON/CSV output.

A killed process must never leave a file that looks complete, so everything podium writes goes to
a temporary file in the same folder first and is renamed into place (rename is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

# Decoding threads fight with DataLoader workers and the training step on small machines.
cv2.setNumThreads(0)
# podium reports unreadable files itself, in one line naming the file.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


_UMASK = os.umask(0)
os.umask(_UMASK)


class PodiumError(Exception):
    """An error with a one-line, user-facing message (the CLI prints it and exits non-zero)."""

    def __init__(self, message: object = "") -> None:
        text = str(message)
        # torch's DataLoader re-raises a worker's error in the main process as
        # `type(error)("Caught ... in DataLoader worker process N.\nOriginal Traceback ...")`;
        # the traceback's last line, "module.PodiumError: <message>", holds the message.
        if "\nOriginal Traceback" in text:
            last = text.rstrip().splitlines()[-1]
            text = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(text)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary sibling of `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_write(path) as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def write_csv(path: str | os.PathLike, rows: list[dict], columns: list[str]) -> None:
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _decode(path: str | os.PathLike, flags: int, what: str) -> np.ndarray:
    """Decode an image file with OpenCV, or raise a PodiumError naming it. The bytes are read
    here, so OpenCV never prints its own "can't open/read file" warning."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise PodiumError(f"{path}: cannot read {what} (file missing)") from None
    except OSError as e:
        raise PodiumError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise PodiumError(f"{path}: cannot read {what} (not a valid image file)")
    return image


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB; a missing or undecodable file is a PodiumError."""
    return cv2.cvtColor(_decode(path, cv2.IMREAD_COLOR, "image"), cv2.COLOR_BGR2RGB)


def read_mask_png(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel binary mask stored as {0,1} or {0,255}; returns HxW uint8 in {0,1}."""
    if Path(path).suffix.lower() == ".gif":
        # OpenCV cannot read GIF (Carvana's masks); Pillow can.
        try:
            from PIL import Image

            with Image.open(path) as im:
                mask = np.asarray(im.convert("L"))
        except FileNotFoundError:
            raise PodiumError(f"{path}: cannot read mask (file missing)") from None
        except (OSError, ValueError):
            raise PodiumError(f"{path}: cannot read mask (not a valid image file)") from None
    else:
        mask = _decode(path, cv2.IMREAD_UNCHANGED, "mask")
    if mask.ndim == 3:
        if not (mask[..., :1] == mask[..., :3]).all():
            raise PodiumError(f"{path}: mask has colour channels that differ; expected a grey mask")
        mask = mask[..., 0]
    return binarize_mask(mask, path)


def binarize_mask(mask: np.ndarray, source: object) -> np.ndarray:
    """Map a {0,1} or {0,255} mask to {0,1}; any other value is an error naming `source`."""
    values = np.unique(mask)
    if np.isin(values, (0, 1)).all():
        return mask.astype(np.uint8)
    if np.isin(values, (0, 255)).all():
        return (mask > 0).astype(np.uint8)
    # Lossy masks (JPEG) carry values near 0 and 255; accept them only when clearly bimodal.
    near = (mask < 32) | (mask > 223)
    if near.mean() > 0.99:
        return (mask > 127).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:6])
    raise PodiumError(f"{source}: mask is not binary (values {shown}...); expected 0/1 or 0/255")


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Read any image as HxW uint8 grey (colour images are converted)."""
    return _decode(path, cv2.IMREAD_GRAYSCALE, "image")


def read_image_gray(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel label image (e.g. class ids) unchanged, as HxW."""
    image = _decode(path, cv2.IMREAD_UNCHANGED, "label image")
    return image if image.ndim == 2 else image[..., 0]


def read_csv_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """All rows of a CSV file as dicts (values are strings; empty cells are '')."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        raise PodiumError(f"{path}: file not found") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise PodiumError(f"{path}: not a readable CSV file ({e})") from None


@contextlib.contextmanager
def progress_bar(
    total: int | None, desc: str, show: bool | None = None, initial: int = 0
) -> Iterator[Callable[[int], object]]:
    """A byte-counting progress bar on stderr; yields the function that advances it.
    `show` None: only when stderr is a terminal (logs and CI stay clean)."""
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(
        total=total or None, initial=initial, desc=desc, unit="B", unit_scale=True, leave=False
    ) as bar:
        yield bar.update


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)
