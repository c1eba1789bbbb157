"""Safe extraction of the archives competitions ship: zip, tar (.gz/.bz2/.xz), gz and 7z.

Kaggle nests archives: the competition zip holds `train.zip`, `test.zip`, `train_masks.csv.zip`...
Every archive, outer or inner, goes through the same gate:

* every entry is checked before anything is written: absolute paths, `..`, links, devices and
  entries that would land outside the target (through a symlink already there) are refused;
* entries are extracted into a staging folder beside the target and moved into place only once
  the whole archive has been read and every file has its recorded size (zip and 7z also check
  each entry's CRC while reading), so a corrupt or hostile archive leaves nothing behind;
* macOS metadata (`__MACOSX/`, `.DS_Store`) is skipped.

Where a member archive lands (`unpack_target`): `NAME.zip` unpacks into `NAME/`, unless all its
entries already sit under one top folder named `NAME` (then that folder is not doubled);
`X.csv.zip`, `X.csv.gz` holding one file become `X.csv` beside the archive.
"""

from __future__ import annotations

import fnmatch
import gzip
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from podium.io import PodiumError, progress_bar

__all__ = [
    "ArchiveError",
    "CorruptArchive",
    "UnpackRules",
    "archive_suffix",
    "extract_archive",
    "is_archive",
    "safe_relative",
    "unpack",
    "unpack_target",
]

_TAR_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar")
# Longest first: ".tar.gz" must win over ".gz".
ARCHIVE_SUFFIXES = (*_TAR_SUFFIXES, ".zip", ".7z", ".gz")
_JUNK_DIRS = {"__MACOSX"}
_JUNK_FILES = {".DS_Store"}
_CHUNK = 1 << 20


class ArchiveError(PodiumError):
    """An archive is unsafe, corrupt or unreadable; nothing of it was extracted."""


class CorruptArchive(ArchiveError):
    """The archive's bytes are damaged (a failed CRC, a cut or garbled stream) or are not an
    archive of its kind: unlike an unsafe archive, a fresh copy may be fine."""


def archive_suffix(name: str) -> str | None:
    """The archive suffix of a file name (".zip", ".tar.gz"...), or None for other files."""
    lower = name.lower()
    return next((s for s in ARCHIVE_SUFFIXES if lower.endswith(s) and len(lower) > len(s)), None)


def is_archive(path: Path) -> bool:
    return archive_suffix(path.name) is not None


def safe_relative(name: str, reserved: tuple[str, ...] = ()) -> PurePosixPath | str:
    """The relative path an entry or file name stands for, or the reason it is unsafe."""
    normalized = name.replace("\\", "/")
    if "\x00" in name:
        return "contains a NUL byte"
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized):
        return "is an absolute path"
    parts = [p for p in normalized.split("/") if p not in ("", ".")]
    if ".." in parts:
        return "escapes the target directory ('..')"
    if parts and parts[0] in reserved:
        return f"uses the reserved directory {parts[0]}"
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


# -- reading the formats ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    name: str  # as stored in the archive
    size: int  # uncompressed bytes (-1 when the format does not say: gz)
    kind: str  # "file", "dir" or why it cannot be extracted ("is a symbolic link"...)
    handle: Any = None  # the format's own entry object


class _Reader:
    """One open archive: its entries, and a way to write them out."""

    def __init__(self, path: Path, suffix: str) -> None:
        self.path, self.suffix = path, suffix

    def entries(self) -> list[_Entry]:
        return [_Entry(*self.describe(info), info) for info in self.infos()]

    def infos(self) -> list[Any]:
        """The format's own entry objects."""
        raise NotImplementedError

    def describe(self, info: Any) -> tuple[str, int, str]:
        """(name, size, kind) of one entry object."""
        raise NotImplementedError

    def write(
        self, plan: list[tuple[_Entry, Path]], staging: Path, advance: Callable[[int], None]
    ) -> None:
        """Write each planned entry to its path (inside `staging`)."""
        for entry, out in plan:
            out.parent.mkdir(parents=True, exist_ok=True)
            with self.open(entry) as src, out.open("wb") as dst:
                for chunk in iter(lambda src=src: src.read(_CHUNK), b""):
                    dst.write(chunk)
                    advance(len(chunk))

    def open(self, entry: _Entry) -> IO[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _ZipReader(_Reader):
    def __init__(self, path: Path, suffix: str) -> None:
        super().__init__(path, suffix)
        self.zf = zipfile.ZipFile(path)

    def infos(self) -> list[zipfile.ZipInfo]:
        return self.zf.infolist()

    def describe(self, info: zipfile.ZipInfo) -> tuple[str, int, str]:
        if stat.S_ISLNK(info.external_attr >> 16):
            return info.filename, info.file_size, "is a symbolic link"
        return info.filename, info.file_size, "dir" if info.is_dir() else "file"

    def open(self, entry: _Entry) -> IO[bytes]:
        return self.zf.open(entry.handle)  # checks the CRC when the entry is read to its end

    def close(self) -> None:
        self.zf.close()


class _TarReader(_Reader):
    def __init__(self, path: Path, suffix: str) -> None:
        super().__init__(path, suffix)
        self.tf = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()

    def infos(self) -> list[tarfile.TarInfo]:
        return self.tf.getmembers()

    def describe(self, member: tarfile.TarInfo) -> tuple[str, int, str]:
        if member.isreg():
            kind = "file"
        elif member.isdir():
            kind = "dir"
        elif member.issym() or member.islnk():
            kind = "is a link"
        else:
            kind = "is a device or special file"
        return member.name, member.size, kind

    def open(self, entry: _Entry) -> IO[bytes]:
        handle = self.tf.extractfile(entry.handle)
        assert handle is not None  # regular files always have data
        return handle

    def write(
        self, plan: list[tuple[_Entry, Path]], staging: Path, advance: Callable[[int], None]
    ) -> None:
        super().write(plan, staging, advance)
        # gzip and xz check their CRC at the end of the stream, which tarfile never reads (it
        # stops at the end-of-archive blocks): read it, so damaged bytes cannot pass.
        if self.tf.fileobj is not None and self.suffix != ".tar":
            while self.tf.fileobj.read(_CHUNK):
                pass

    def close(self) -> None:
        self.tf.close()


class _GzipReader(_Reader):
    """A lone gzip file holds one file: the archive's name without ".gz"."""

    def entries(self) -> list[_Entry]:
        return [_Entry(self.path.name[: -len(self.suffix)], -1, "file")]

    def open(self, entry: _Entry) -> IO[bytes]:
        return gzip.open(self.path, "rb")  # checks the CRC and length at the end of the stream


class _SevenZipReader(_Reader):
    def __init__(self, path: Path, suffix: str) -> None:
        super().__init__(path, suffix)
        import py7zr

        self.archive = py7zr.SevenZipFile(path)

    def infos(self) -> list[Any]:
        return self.archive.list()

    def describe(self, info: Any) -> tuple[str, int, str]:
        if info.is_symlink:
            kind = "is a symbolic link"
        elif info.is_directory:
            kind = "dir"
        else:
            kind = "file" if info.is_file else "is a device or special file"
        return info.filename, int(info.uncompressed or 0), kind

    def write(
        self, plan: list[tuple[_Entry, Path]], staging: Path, advance: Callable[[int], None]
    ) -> None:
        # py7zr decodes solid blocks in one pass: extract the planned names into a scratch
        # folder (it verifies CRCs as it goes), then move each to its path.
        scratch = Path(tempfile.mkdtemp(prefix=".7z-", dir=staging))
        try:
            self.archive.reset()
            self.archive.extract(path=scratch, targets=[entry.name for entry, _ in plan])
            for entry, out in plan:
                out.parent.mkdir(parents=True, exist_ok=True)
                os.replace(scratch / entry.name, out)
                advance(max(entry.size, 0))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def close(self) -> None:
        self.archive.close()


_READERS: dict[str, type[_Reader]] = {
    ".zip": _ZipReader,
    ".7z": _SevenZipReader,
    ".gz": _GzipReader,
}


def _format_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [zipfile.BadZipFile, zipfile.LargeZipFile, EOFError]
    errors += [tarfile.TarError, zlib.error, gzip.BadGzipFile, lzma.LZMAError]
    # A garbled zip header reads as an unsupported compression method or version.
    errors += [NotImplementedError]
    try:
        import py7zr

        errors += [py7zr.exceptions.ArchiveError, py7zr.exceptions.Bad7zFile]
    except ImportError:  # pragma: no cover - py7zr is a dependency
        pass
    return tuple(errors)


@contextmanager
def _open(path: Path, label: str) -> Iterator[_Reader]:
    suffix = archive_suffix(path.name) or ".zip"  # the outer archive may be a .part file
    reader_class = _READERS.get(suffix, _TarReader)
    try:
        reader = reader_class(path, suffix)
    except (OSError, *_format_errors()) as exc:
        raise CorruptArchive(f"{label} is not a readable {suffix} archive ({exc})") from None
    try:
        yield reader
    finally:
        reader.close()


def _entries(reader: _Reader, label: str) -> list[_Entry]:
    try:
        return reader.entries()
    except (OSError, *_format_errors()) as exc:
        raise CorruptArchive(f"{label} is corrupt ({exc}); nothing was extracted") from None


# -- planning and extracting ------------------------------------------------------------------
def _is_junk(rel: PurePosixPath) -> bool:
    return bool(_JUNK_DIRS.intersection(rel.parts)) or rel.name in _JUNK_FILES


def _plan(
    entries: list[_Entry], target: Path, label: str, strip: str | None, reserved: tuple[str, ...]
) -> list[tuple[_Entry, PurePosixPath]]:
    """(entry, path relative to target) for every file to extract; ArchiveError on any unsafe
    entry. `strip` drops that top folder from every path."""
    target_resolved = target.resolve()
    plan = []
    for entry in entries:
        rel = safe_relative(entry.name, reserved)
        problem = rel if isinstance(rel, str) else None
        if problem is None and entry.kind not in ("file", "dir"):
            problem = entry.kind
        if problem is None and not _is_junk(rel) and entry.kind == "file" and str(rel) != ".":
            if strip:
                rel = rel.relative_to(strip)
            problem = _placement_problem(target, target_resolved, rel)
            if problem is None:
                plan.append((entry, rel))
        if problem is not None:
            problem = f"entry {entry.name!r} {problem}"
            raise ArchiveError(f"refusing to extract {label}: {problem}; nothing was extracted")
    return plan


def _placement_problem(target: Path, target_resolved: Path, rel: PurePosixPath) -> str | None:
    final = target / rel
    # A symlink already in the target folder could still lead outside it.
    if not final.resolve().is_relative_to(target_resolved):
        return "resolves outside the target directory"
    if final.is_dir():
        return f"would replace the directory {final}"
    for parent in rel.parents:
        if str(parent) != "." and (target / parent).is_file():
            return f"needs a directory where the file {target / parent} is"
    return None


def extract_archive(
    archive: Path,
    target: Path,
    *,
    label: str | None = None,
    work_dir: Path | None = None,
    strip_top: str | None = None,
    reserved: tuple[str, ...] = (),
    progress: bool | None = None,
) -> list[Path]:
    """Extract every regular file of `archive` under `target`; return the paths written.

    All or nothing (see the module docstring). `label` names the archive in messages (default:
    its file name); `work_dir` holds the staging folder (default: `target`'s parent, so the
    final moves are renames); `strip_top` removes that top folder from every entry; `reserved`
    top-level names are refused. `progress` shows a bar on stderr (None: when it is a terminal).
    """
    label = label or archive.name
    work_dir = work_dir or target.parent
    work_dir.mkdir(parents=True, exist_ok=True)  # the target itself only once all is read
    with _open(archive, label) as reader:
        plan = _plan(_entries(reader, label), target, label, strip_top, reserved)
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=work_dir))
        try:
            staged = [(entry, staging / rel) for entry, rel in plan]
            total = sum(max(entry.size, 0) for entry, _ in plan)
            try:
                with progress_bar(total, f"unpacking {label}", progress) as advance:
                    reader.write(staged, staging, advance)
            except (OSError, *_format_errors()) as exc:
                if isinstance(exc, OSError) and exc.errno is not None:  # disk full, permissions
                    raise ArchiveError(
                        f"cannot unpack {label}: {exc}; nothing was extracted"
                    ) from None
                raise CorruptArchive(f"{label} is corrupt ({exc}); nothing was extracted") from None
            _check_sizes(staged, label)
            outputs = []
            for _, rel in plan:
                final = target / rel
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / rel, final)
                outputs.append(final)
            return outputs
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _check_sizes(staged: list[tuple[_Entry, Path]], label: str) -> None:
    for entry, out in staged:
        if entry.size >= 0 and out.stat().st_size != entry.size:
            raise CorruptArchive(
                f"{label} is corrupt: {entry.name} has {out.stat().st_size} of {entry.size} "
                "bytes; nothing was extracted"
            )


# -- where a member archive lands -------------------------------------------------------------
# Files with an archive suffix that are data, read as they are (nibabel reads .nii.gz itself).
DATA_NOT_ARCHIVES = ("*.nii.gz",)


@dataclass(frozen=True)
class UnpackRules:
    """How the member archives of a download unpack: competition.yaml's `download:` section.

    `into` maps an archive's path in the data folder (a glob, first match wins) to the folder it
    unpacks into (relative to the data folder), `false` to leave it packed, or `true` for the
    default place. `keep_archives` keeps an archive after its verified extraction (default:
    delete it; a re-run still knows it is done from the download manifest).
    """

    into: Mapping[str, str | bool] = field(default_factory=dict)
    keep_archives: bool = False

    def target(self, rel: str) -> str | bool:
        """Where the file `rel` unpacks: a folder, True (the default place) or False (not an
        archive, or left packed)."""
        for pattern, value in self.into.items():
            if fnmatch.fnmatchcase(rel, pattern):
                return value if isinstance(value, str) else bool(value)
        if archive_suffix(rel) is None:
            return False
        return not any(fnmatch.fnmatchcase(rel.lower(), p) for p in DATA_NOT_ARCHIVES)


@dataclass(frozen=True)
class UnpackTarget:
    """Where one member archive goes: under `folder`, with the top folder `strip` dropped from
    its entries' paths; or, for a wrapped single file (`X.csv.zip`), to `single_file`."""

    folder: Path
    strip: str | None = None
    single_file: Path | None = None


def unpack_target(archive: Path, into: Path | None = None) -> UnpackTarget:
    """Where `archive` unpacks: into `into`, else the folder named like the archive beside it,
    without doubling a top folder of that name; a one-file `X.csv.zip` or any `X.gz` becomes
    the file `X.csv` / `X` beside the archive."""
    suffix = archive_suffix(archive.name)
    if suffix is None:
        raise ArchiveError(f"{archive}: not an archive")
    stem = archive.name[: -len(suffix)]
    folder = into if into is not None else archive.parent / stem
    with _open(archive, archive.name) as reader:
        entries = _entries(reader, archive.name)
    paths = [
        PurePosixPath(e.name.replace("\\", "/").strip("/")) for e in entries if e.kind != "dir"
    ]
    paths = [p for p in paths if not _is_junk(p)]
    wrapped = suffix == ".gz" or (PurePosixPath(stem).suffix and suffix not in _TAR_SUFFIXES)
    if into is None and wrapped and len(paths) == 1:
        return UnpackTarget(archive.parent, single_file=archive.parent / stem)
    if paths and all(len(p.parts) > 1 and p.parts[0] == folder.name for p in paths):
        return UnpackTarget(folder, strip=folder.name)
    return UnpackTarget(folder)


def unpack(
    archive: Path,
    into: Path | None = None,
    *,
    label: str | None = None,
    work_dir: Path | None = None,
    progress: bool | None = None,
) -> list[Path]:
    """Unpack a member archive where `unpack_target` says; return the paths written. All or
    nothing, like `extract_archive`; the archive itself is left in place."""
    target = unpack_target(archive, into)
    label = label or archive.name
    if target.single_file is None:
        options = {"label": label, "work_dir": work_dir, "progress": progress}
        return extract_archive(archive, target.folder, strip_top=target.strip, **options)
    if target.single_file.is_dir():
        raise ArchiveError(f"cannot unpack {label}: {target.single_file} is a directory")
    scratch = Path(tempfile.mkdtemp(prefix=".unpack-", dir=work_dir or archive.parent))
    try:
        (written,) = extract_archive(
            archive, scratch, label=label, work_dir=scratch, progress=progress
        )
        os.replace(written, target.single_file)
        return [target.single_file]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
