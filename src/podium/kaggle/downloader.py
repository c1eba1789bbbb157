"""Downloading competition data: streamed, resumable, checked, unpacked, recorded.

kaggle 2.2.4 does not unzip and re-downloads whatever it cannot prove complete, so podium streams
the blob itself: a ``.part`` file renamed only once its size checks out, resumed after an
interruption, the archive (and the archives inside it) unpacked through :mod:`podium.archives`,
and a manifest in ``<dest>/.podium-kaggle`` so a re-run skips finished work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from podium.archives import (
    ArchiveError,
    CorruptArchive,
    UnpackRules,
    extract_archive,
    safe_relative,
    unpack,
)
from podium.io import progress_bar
from podium.kaggle.client import (
    HTTP_TIMEOUT_S,
    DownloadInterrupted,
    KaggleError,
    Session,
    check_slug,
    competition_api,
    connection_reason,
    kaggle_errors,
    open_session,
)
from podium.kaggle.manifest import STATE_DIR, Manifest, Remote

log = logging.getLogger(__name__)

#: Waits before each in-call resume of an interrupted download (then the call gives up and a
#: later call resumes from the partial file).
RESUME_DELAYS_S: tuple[float, ...] = (1.0, 4.0)
_CHUNK = 1 << 18  # also bounds what an interruption loses


# --------------------------------------------------------------------------------------------
# downloading


def _stream_body(
    response: Any, part: Path, offset: int, remote: Remote, progress: bool | None
) -> None:
    mode = "ab" if offset else "wb"
    with (
        part.open(mode) as fh,
        progress_bar(remote.size, f"downloading {remote.served_name}", progress, offset) as advance,
    ):
        for chunk in response.iter_content(_CHUNK):
            fh.write(chunk)
            advance(len(chunk))


def _range_get(remote: Remote, offset: int) -> tuple[Any, int]:
    """GET the blob again from ``offset``; return the response and the offset it starts at."""
    import requests

    headers = {"Range": f"bytes={offset}-"}
    if remote.validator:
        headers["If-Range"] = remote.validator  # a changed object comes back whole (200)
    # Blob URLs are pre-signed (or, on a fake, unauthenticated): no credentials are sent.
    response = requests.get(remote.url, headers=headers, stream=True, timeout=HTTP_TIMEOUT_S)
    if response.status_code == 206:
        match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == offset:
            return response, offset
        response.close()
        raise DownloadInterrupted("server answered the resume with a wrong range")
    response.raise_for_status()
    return response, 0


def _sidecar(part: Path) -> Path:
    """Where the identity (size, ETag) of the object being written to ``part`` is kept."""
    return part.with_name(part.name + ".json")


def _fetch(response: Any, remote: Remote, part: Path, force: bool, progress: bool | None) -> None:
    """Stream the blob into ``part``, reusing a partial (or complete) file of the same object.

    ``part`` plus its sidecar stay on disk until the caller has put the content in place, so an
    interrupted download resumes and a failed extraction does not cost a second download.
    """
    sidecar = _sidecar(part)
    identity = {"size": remote.size, "validator": remote.validator}
    offset = 0
    if not force and part.is_file() and remote.validator and remote.size:
        try:
            same = json.loads(sidecar.read_text()) == identity
        except (OSError, ValueError):
            same = False
        have = part.stat().st_size
        if same and have == remote.size:
            response.close()
            log.info("%s is already fully downloaded", remote.served_name)
            return
        if same and remote.resumable and 0 < have < remote.size:
            offset = have
            log.info("resuming %s from byte %d", remote.served_name, have)
    if offset == 0:
        part.unlink(missing_ok=True)
        sidecar.write_text(json.dumps(identity))
    body: Any = None if offset else response
    if offset:
        response.close()  # the fresh body is not needed: ask only for the missing bytes
    import requests
    import urllib3

    retries = list(RESUME_DELAYS_S)
    while True:
        try:
            if body is None:
                body, offset = _range_get(remote, offset)
            _stream_body(body, part, offset, remote, progress)
            written = part.stat().st_size
            if remote.size is not None and not remote.encoded and written != remote.size:
                raise DownloadInterrupted(f"got {written} of {remote.size} bytes")
            return
        except (
            requests.RequestException,
            urllib3.exceptions.HTTPError,
            DownloadInterrupted,
        ) as exc:
            if isinstance(exc, requests.HTTPError):
                raise  # an HTTP status answer, not an interruption: report it as such
            written = part.stat().st_size if part.is_file() else 0
            if not retries:
                total = f" of {remote.size}" if remote.size is not None else ""
                raise KaggleError(
                    f"download of {remote.served_name} was interrupted after {written}{total} "
                    f"bytes ({connection_reason(exc)}); run the same command again to resume"
                ) from exc
            delay = retries.pop(0)
            log.warning("download of %s interrupted, retrying in %gs", remote.served_name, delay)
            time.sleep(delay)
            offset = written if (remote.resumable and remote.validator) else 0
        finally:
            if body is not None:
                body.close()
            body = None


@dataclass(frozen=True)
class _Job:
    """One ``download`` call's settings, shared by its steps."""

    session: Session
    slug: str
    dest: Path
    manifest: Manifest
    force: bool
    unpack: UnpackRules
    progress: bool | None

    @property
    def state(self) -> Path:
        return self.dest / STATE_DIR


def _download_one(job: _Job, name: str | None) -> list[Path]:
    """Download the whole archive (``name`` None) or one file, then unzip / move into place."""
    from kagglesdk.competitions.types.competition_api_service import (
        ApiDownloadDataFileRequest,
        ApiDownloadDataFilesRequest,
    )

    key = "*" if name is None else f"file:{name}"
    job.state.mkdir(parents=True, exist_ok=True)
    with competition_api(job.session) as competitions:
        if name is None:
            request = ApiDownloadDataFilesRequest()
            request.competition_name = job.slug
            response = competitions.download_data_files(request)  # 302 -> the blob, streamed
        else:
            request = ApiDownloadDataFileRequest()
            request.competition_name = job.slug
            request.file_name = name
            response = competitions.download_data_file(request)
        remote = Remote.of(response)
        outputs = None if job.force else job.manifest.complete_outputs(key, remote)
        if outputs is not None:
            response.close()
            log.info("%s: %s already complete, skipping", job.slug, name or "all files")
            return outputs
        # One partial file per download key, named after it; the digest keeps names distinct.
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        label = re.sub(r"[^A-Za-z0-9._-]", "_", name or job.slug)[:80]
        part = job.state / f"{label}-{digest}.part"
        log.info("%s: downloading %s", job.slug, name or "all files")
        _fetch(response, remote, part, job.force, job.progress)
    try:
        outputs = _put_in_place(job, part, remote.served_name or f"{job.slug}.zip", name)
    except ArchiveError as exc:
        # Unsafe or corrupt content: keeping it would only hand the same bytes back.
        part.unlink(missing_ok=True)
        _sidecar(part).unlink(missing_ok=True)
        if isinstance(exc, CorruptArchive):
            raise KaggleError(f"{exc}; discarded the damaged download: {_AGAIN}") from None
        raise KaggleError(str(exc)) from None
    part.unlink(missing_ok=True)
    _sidecar(part).unlink(missing_ok=True)
    job.manifest.record(key, remote, outputs)
    return outputs


def _put_in_place(job: _Job, part: Path, served: str, name: str | None) -> list[Path]:
    """Extract the competition archive into ``dest``, or move one downloaded file there."""
    options = {"label": served, "work_dir": job.state, "progress": job.progress}
    if name is None:
        return extract_archive(part, job.dest, reserved=(STATE_DIR,), **options)
    rel = safe_relative(name)
    assert isinstance(rel, PurePosixPath)  # checked by download()
    # Kaggle serves large single files zipped as "<name>.zip": unwrap those.
    if served.endswith(".zip") and not rel.name.endswith(".zip"):
        return extract_archive(part, job.dest / rel.parent, reserved=(STATE_DIR,), **options)
    final = job.dest / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, final)
    return [final]


def _unpack_members(job: _Job, outputs: list[Path]) -> list[Path]:
    """Unpack every archive among ``outputs`` (and the archives inside those) as the rules say,
    each all or nothing and recorded in the manifest; returns the files now in place. A member
    archive is deleted once its extraction is verified, unless the rules keep archives."""
    final: list[Path] = []
    queue = list(outputs)
    while queue:
        path = queue.pop(0)
        rel = path.relative_to(job.dest).as_posix()
        into = job.unpack.target(rel)
        if into is False or not path.is_file():
            final.append(path)
            continue
        done = None if job.force else job.manifest.unpacked_outputs(rel)
        if done is None:
            log.info("%s: unpacking %s", job.slug, rel)
            folder = None if into is True else job.dest / into
            options = {"label": rel, "work_dir": job.state, "progress": job.progress}
            try:
                done = unpack(path, folder, **options)
            except CorruptArchive as exc:
                raise KaggleError(_discard_member(job, rel, exc)) from None
            except ArchiveError as exc:
                raise KaggleError(f"{exc} (the rest of the download is in place)") from None
            job.manifest.record_unpacked(rel, path.stat().st_size, done)
        if not job.unpack.keep_archives:
            path.unlink()
        queue.extend(done)
    return final


_AGAIN = "the next run downloads it again"


def _discard_member(job: _Job, rel: str, exc: CorruptArchive) -> str:
    """A damaged member archive: delete it, so the next run fetches it again (the manifest
    counts a download complete only while its files, or what they unpacked into, are there)
    instead of failing on the same bytes. Returns the message."""
    (job.dest / rel).unlink(missing_ok=True)
    alone = job.manifest.data["downloads"].get(f"file:{rel}")
    if alone and rel in alone["files"]:  # downloaded on its own: damaged on the way
        return f"{exc}; deleted the damaged download: {_AGAIN}"
    # It came out of an archive whose own checks passed: Kaggle's copy may be the damaged one.
    return (
        f"{exc}; deleted it: it came out of an intact download, so Kaggle's copy may be "
        f"damaged; {_AGAIN} (the rest of the download is in place)"
    )


def _check_file_names(files: list[str]) -> list[str]:
    names = list(dict.fromkeys(files))  # keep order, drop duplicates
    for name in names:
        rel = safe_relative(name or "", reserved=(STATE_DIR,))
        if isinstance(rel, str):
            raise KaggleError(f"invalid file name {name!r}: it {rel}")
        if str(rel) == ".":
            raise KaggleError(f"invalid file name {name!r}: it is empty")
    return names


def _download_keys(files: list[str] | None) -> list[str | None]:
    """None stands for "the whole competition archive"."""
    return [None] if files is None else [*_check_file_names(files)]


def download(
    slug: str,
    dest: Path,
    files: list[str] | None = None,
    force: bool = False,
    unpack: UnpackRules | None = None,
    progress: bool | None = None,
) -> list[Path]:
    """Download the competition data (all files, or ``files``) into ``dest``, unpacked.

    The competition archive is extracted, then every archive it holds (``train.zip``,
    ``train_masks.csv.zip``...) is unpacked as ``unpack`` says (default: ``NAME.zip`` into
    ``NAME/``, ``X.csv.zip`` to ``X.csv``, archives deleted once verified; see
    :mod:`podium.archives`). Idempotent: what a manifest in ``dest/.podium-kaggle`` records as
    complete (same remote size and ETag/Last-Modified, same local sizes, unpacked archives) is
    skipped; ``force`` redoes it all. Bytes go to a ``.part`` file that is renamed only once its
    size checks out; an interrupted download is resumed by the next call. ``progress`` shows
    bars on stderr (None: when it is a terminal). Returns the paths of the files now in place.
    """
    from filelock import FileLock, Timeout

    check_slug(slug)
    dest = Path(dest)
    names = _download_keys(files)
    session = open_session()
    (dest / STATE_DIR).mkdir(parents=True, exist_ok=True)
    # Two downloads into one directory would share partial files and the manifest.
    lock = FileLock(str(dest / STATE_DIR / "lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("waiting for another podium download into %s", dest)
        lock.acquire()
    try:
        job = _Job(session, slug, dest, Manifest(dest), force, unpack or UnpackRules(), progress)
        outputs: list[Path] = []
        for name in names:
            action = f"downloading {name}" if name else "downloading the data"
            with kaggle_errors(action, slug, session.creds):
                outputs.extend(_download_one(job, name))
        with kaggle_errors("unpacking the data", slug, session.creds):
            return _unpack_members(job, outputs)
    finally:
        lock.release()


def download_blob(url: str, target: Path, work_dir: Path, progress: bool | None = None) -> Path:
    """GET a pre-signed blob URL (a kernel's output file) into ``target``, through a checked
    ``.part`` file in ``work_dir`` that is resumed after an interruption. No credentials sent."""
    import requests

    response = requests.get(url, stream=True, timeout=HTTP_TIMEOUT_S)
    response.raise_for_status()
    remote = Remote.of(response)
    work_dir.mkdir(parents=True, exist_ok=True)
    part = work_dir / f"{hashlib.sha256(str(target).encode()).hexdigest()[:16]}.part"
    _fetch(response, remote, part, force=True, progress=progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, target)
    _sidecar(part).unlink(missing_ok=True)
    return target


def downloaded(dest: Path, files: list[str] | None = None) -> list[Path] | None:
    """The files a previous :func:`download` completed in ``dest``, or None if any is missing.

    Local only (no credentials, no network): it checks the manifest and the sizes on disk,
    not whether Kaggle has changed the data since.
    """
    dest = Path(dest)
    manifest = Manifest(dest)
    outputs: list[Path] = []
    for name in _download_keys(files):
        found = manifest.local_outputs("*" if name is None else f"file:{name}")
        if found is None:
            return None
        outputs.extend(found)
    return outputs
