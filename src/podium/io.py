"""File helpers every stage uses: atomic writes, checked image reads, JSON/CSV output.

A killed process must never leave a file that looks complete, so everything podium writes goes to
a temporary file in the same folder first and is renamed into place (rename is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import cv2
import numpy as np

# Decoding threads fight with DataLoader workers and the training step on small machines.
cv2.setNumThreads(0)
# podium reports unreadable files itself, in one line naming the file.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

log = logging.getLogger(__name__)


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
    here, so OpenCV never prints its own "can't open/read file" warning, and its decoders'
    error logs (e.g. libtiff's) are silenced: the PodiumError says what went wrong."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise PodiumError(f"{path}: cannot read {what} (file missing)") from None
    except OSError as e:
        raise PodiumError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    if not data.size:
        raise PodiumError(f"{path}: cannot read {what} (empty file, 0 bytes)")
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        image = cv2.imdecode(data, flags)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if image is None:
        raise PodiumError(f"{path}: cannot read {what} (not a valid image file)")
    return image


# -- images -----------------------------------------------------------------------------------
# COLOR converts grey to 3 channels, drops alpha and applies a JPEG's EXIF orientation (as
# podium always read images); ANYDEPTH keeps a 16-bit file's values instead of dividing them by
# 256, which leaves 12-bit data (max 4095) at most 15: near-black.
_IMAGE_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH


def parse_bit_depth(value: object, where: str = "image_bit_depth") -> int | str:
    """`auto` or the bits of an image stored in a 16-bit file (8..16); anything else is an
    error naming `where`."""
    if str(value) == "auto":
        return "auto"
    try:
        bits = int(str(value))
    except ValueError:
        bits = 0
    if not 8 <= bits <= 16:
        raise PodiumError(f"{where}={value}: expected auto or the bits per value, 8..16")
    return bits


def bit_depth_max(bit_depth: int | str) -> int:
    """The 16-bit file value that becomes 255: 2**bits - 1 (`auto`: 65535, the file's range)."""
    return 65535 if bit_depth == "auto" else 2 ** int(bit_depth) - 1


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as HxWx3 BGR, uint8 or, for a 16-bit file, uint16 with its values kept."""
    image = _decode(path, _IMAGE_FLAGS, "image")
    if image.dtype not in (np.uint8, np.uint16):
        raise PodiumError(f"{path}: {image.dtype} pixels are not supported (8- or 16-bit only)")
    return image


def to_rgb8(image: np.ndarray, bit_depth: int | str = "auto") -> np.ndarray:
    """`decode_image`'s BGR array as HxWx3 uint8 RGB. A 16-bit image is scaled by its real bit
    depth: 0..2**bits-1 becomes 0..255 (values above are clipped)."""
    if image.dtype == np.uint16:
        top = bit_depth_max(bit_depth)
        image = cv2.convertScaleAbs(np.minimum(image, top), alpha=255.0 / top)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: str | os.PathLike, bit_depth: int | str = "auto") -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB; a missing or undecodable file is a PodiumError.
    16-bit files are scaled by `bit_depth` (competition.image_bit_depth, see `to_rgb8`)."""
    return to_rgb8(decode_image(path), bit_depth)


@dataclass(frozen=True)
class ImageFileInfo:
    """What a strict read of an image file found (`verify_image_file`)."""

    format: str  # Pillow's name: PNG, JPEG, TIFF, GIF...
    width: int
    height: int
    mode: str  # Pillow's: L, RGB, RGBA, P, I;16...
    orientation: int  # EXIF orientation (1: as stored; OpenCV rotates JPEGs with another)


def verify_image_file(path: str | os.PathLike, what: str = "image") -> ImageFileInfo | None:
    """Read an image file strictly with Pillow: a missing, empty, truncated or corrupt file (bad
    PNG checksum, JPEG that ends early) is a PodiumError naming it. OpenCV, which reads images
    for training, decodes some of these without an error or prints libpng's messages. None
    when Pillow does not know the format (OpenCV may: the caller decodes it with OpenCV)."""
    import warnings

    from PIL import Image, ImageFile, UnidentifiedImageError

    try:
        if os.stat(path).st_size == 0:
            raise PodiumError(f"{path}: cannot read {what} (empty file, 0 bytes)")
    except FileNotFoundError:
        raise PodiumError(f"{path}: cannot read {what} (file missing)") from None
    except OSError as e:
        raise PodiumError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # Pillow's default: a truncated file is an error
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": the error says enough
            with Image.open(path) as image:
                width, height = image.size
                orientation = image.getexif().get(0x0112, 1) if image.format == "JPEG" else 1
                info = ImageFileInfo(image.format or "", width, height, image.mode, orientation)
                if image.format == "PNG":
                    image.verify()  # every chunk's checksum and the end of the file
                else:
                    if image.format == "JPEG":  # decoded at 1/8 scale: still the whole stream
                        image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
                    image.load()
    except (UnidentifiedImageError, Image.DecompressionBombError):
        return None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise PodiumError(f"{path}: cannot read {what} ({e or type(e).__name__})") from None
    return info


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Read any image as HxW uint8 grey (colour images are converted)."""
    return _decode(path, cv2.IMREAD_GRAYSCALE, "image")


def read_image_gray(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel label image (e.g. class ids) unchanged, as HxW."""
    image = _decode(path, cv2.IMREAD_UNCHANGED, "label image")
    return image if image.ndim == 2 else image[..., 0]


def read_image_unchanged(path: str | os.PathLike, what: str = "mask") -> np.ndarray:
    """An image file's values as stored: HxW (grey) or HxWxC in RGB(A) order, 8 or 16 bits.
    GIF (Carvana's masks), which OpenCV cannot read, goes through Pillow."""
    if Path(path).suffix.lower() != ".gif":
        image = _decode(path, cv2.IMREAD_UNCHANGED, what)
        if image.ndim == 3 and image.shape[2] >= 3:
            rgb = cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
            image = cv2.cvtColor(image, rgb)
        return image
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L" if im.mode in ("1", "L") else "RGB"))
    except FileNotFoundError:
        raise PodiumError(f"{path}: cannot read {what} (file missing)") from None
    except (OSError, ValueError):
        raise PodiumError(f"{path}: cannot read {what} (not a valid image file)") from None


# -- CSV --------------------------------------------------------------------------------------
class CsvRowRef(NamedTuple):
    """Where a CSV row is: the file and its row number (the header is row 1), as a spreadsheet
    shows it. Samples carry one (`Sample.origin`) so problems with a label name its row."""

    path: str
    row: int

    def __str__(self) -> str:
        return f"{self.path} row {self.row}"


class CsvRow(dict):
    """One row of a CSV file: column -> value. A column the file lacks is a PodiumError naming
    the file and its header, not a bare KeyError."""

    __slots__ = ("origin",)

    def __missing__(self, column: str) -> str:
        raise PodiumError(
            f"{self.origin.path}: no column {column!r} (the header has: {', '.join(self)})"
        )


def read_csv_rows(
    path: str | os.PathLike, columns: Sequence[str] = (), key: str | Sequence[str] | None = None
) -> list[CsvRow]:
    """All rows of a CSV file as dicts (values are strings; empty cells are ''); each row's
    `origin` says where it is. A UTF-8 byte-order mark (Excel) and CRLF line ends are fine;
    blank rows are skipped. `columns` must be in the header; `key` (a column or several) must
    identify a row: an exact repeat of a row is a warning and used once, a repeated key with
    other values is an error naming both rows. An empty file, a missing column, a row with
    more or fewer values than the header: a PodiumError naming the file (and row)."""
    keys = (key,) if isinstance(key, str) else tuple(key or ())
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [name.strip() for name in next(reader, [])]
            if not any(header):
                raise PodiumError(f"{path}: the file is empty (no header row)")
            _check_header(path, header, [*columns, *keys])
            rows = []
            for cells in reader:
                if not cells or not (cells[0].strip() or any(c.strip() for c in cells)):
                    continue  # a blank row (Excel keeps some at the end)
                if len(cells) != len(header):
                    raise PodiumError(
                        f"{path} row {reader.line_num}: {_values(len(cells))} but the header has "
                        f"{len(header)} columns ({', '.join(header)})"
                    )
                row = CsvRow(zip(header, cells, strict=True))
                row.origin = CsvRowRef(str(path), reader.line_num)
                rows.append(row)
    except FileNotFoundError:
        raise PodiumError(f"{path}: file not found") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise PodiumError(f"{path}: not a readable CSV file ({e})") from None
    return _unique_rows(path, rows, keys) if keys else rows


def _check_header(path: str | os.PathLike, header: list[str], needed: Sequence[str]) -> None:
    repeated = next((name for name in header if header.count(name) > 1), None)
    if repeated is not None:
        raise PodiumError(f"{path}: column {repeated!r} appears twice in the header")
    missing = [name for name in needed if name not in header]
    if missing:
        hint = "; it looks semicolon-separated: save it with commas" if ";" in header[0] else ""
        raise PodiumError(
            f"{path}: no column {missing[0]!r} in the header ({', '.join(header)}){hint}"
        )


def _unique_rows(path: str | os.PathLike, rows: list[CsvRow], keys: tuple[str, ...]):
    """`rows` without exact repeats (a warning); a key repeated with other values is an error."""
    first: dict[tuple, CsvRow] = {}
    kept, repeats = [], []
    for row in rows:
        value = tuple(row[k] for k in keys)
        seen = first.setdefault(value, row)
        if seen is row:
            kept.append(row)
        elif seen == row:
            repeats.append(row)
        else:
            column = next(c for c in row if row[c] != seen[c])
            raise PodiumError(
                f"{path} rows {seen.origin.row} and {row.origin.row}: {'/'.join(keys)} "
                f"{'/'.join(value)} appears twice with different {column} "
                f"({seen[column][:40]!r} and {row[column][:40]!r})"
            )
    if repeats:
        log.warning(
            "%s: %d exact repeat(s) of earlier rows, each used once (first: row %d, %s %s)",
            path, len(repeats), repeats[0].origin.row, "/".join(keys),
            "/".join(repeats[0][k] for k in keys),
        )  # fmt: skip
    return kept


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


def _values(count: int) -> str:
    return f"{count} value" if count == 1 else f"{count} values"
