"""Pushing a folder as a private Kaggle dataset (the weights and wheels of a code competition's
bundle), and the checks shared by every push of a folder (metadata, owner, client refusals).

kaggle 2.2.4 makes a failed dataset push look successful, so podium checks:

* ``dataset_create_new`` / ``dataset_create_version`` return ``status "error"`` instead of
  raising;
* a file whose upload failed is silently left out of the dataset, and a stale upload-resume
  state in ``$TMPDIR/.kaggle/uploads`` makes that happen without a single request (reference
  G10). podium uploads with a private, empty resume state and refuses to create a dataset that
  lacks any entry of the folder;
* a new dataset version is usable only once Kaggle has processed it: podium waits for "ready".
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podium.kaggle.client import KaggleError, kaggle_errors, open_session, poll_until, quiet_stdout

if TYPE_CHECKING:
    from podium.kaggle.client import Session

log = logging.getLogger(__name__)

__all__ = ["push_dataset", "read_metadata", "split_ref", "check_owner", "client_refusals"]

_REF = re.compile(r"^[A-Za-z0-9][\w-]*/[A-Za-z0-9][\w.-]*$")


def read_metadata(folder: Path, name: str) -> dict[str, Any]:
    """``folder/name`` (dataset- or kernel-metadata.json), whose "id" must be USER/SLUG."""
    path = Path(folder) / name
    if not Path(folder).is_dir():
        raise KaggleError(f"{folder}: no such folder")
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise KaggleError(f"{path} is missing (the bundle's {name})") from None
    except (OSError, ValueError) as exc:
        raise KaggleError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(meta, dict) or not _REF.match(str(meta.get("id", ""))):
        raise KaggleError(f'{path}: "id" must be "USER/SLUG", got {meta.get("id")!r}')
    return meta


def split_ref(ref: str, what: str) -> tuple[str, str]:
    """(owner, slug) of a USER/SLUG reference, or a KaggleError naming ``what`` it is."""
    if not isinstance(ref, str) or not _REF.match(ref):
        raise KaggleError(f"{what} must be USER/SLUG (as in its URL), got {ref!r}")
    owner, _, slug = ref.partition("/")
    return owner, slug


def check_owner(session: Session, ref: str, path: Path) -> None:
    """Kaggle answers a push to someone else's name with a bare 403: say it plainly first."""
    owner = ref.partition("/")[0]
    if session.username and owner.lower() != session.username.lower():
        raise KaggleError(
            f"{path} pushes to '{ref}', but the Kaggle credentials are for "
            f"'{session.username}': use {session.username}/... as its id"
        )


@contextlib.contextmanager
def client_refusals(what: str) -> Iterator[None]:
    """The client validates folders and metadata with ValueError: one line naming the folder."""
    import requests

    try:
        yield
    except ValueError as exc:
        if isinstance(exc, requests.RequestException):  # InvalidURL & co. are ValueErrors too
            raise
        raise KaggleError(f"the kaggle client refused {what}: {exc}") from None


@contextlib.contextmanager
def _client_output(show: bool) -> Iterator[None]:
    """The client prints upload progress on stdout (and tqdm bars on stderr): shown on stderr
    so podium's own stdout stays its result, or swallowed."""
    if show:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    else:
        with quiet_stdout():
            yield


@contextlib.contextmanager
def _private_upload_state() -> Iterator[None]:
    """The client keeps upload-resume state under tempfile.gettempdir(); a stale entry there
    drops files silently (G10). Give this upload a fresh, private one, removed afterwards."""
    previous = tempfile.tempdir
    private = tempfile.mkdtemp(prefix="podium-upload-")
    tempfile.tempdir = private
    try:
        yield
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(private, ignore_errors=True)


def _upload_entries(api: Any, folder: Path) -> list[str]:
    """The folder's entries the client uploads (files; folders zipped), by its own rules."""
    from kaggle.api.kaggle_api_extended import DEFAULT_IGNORE_PATTERNS, should_ignore

    skipped = {
        api.DATASET_METADATA_FILE,
        api.OLD_DATASET_METADATA_FILE,
        api.KERNEL_METADATA_FILE,
        api.MODEL_METADATA_FILE,
        api.MODEL_INSTANCE_METADATA_FILE,
        *api.DATASET_COVER_IMAGE_FILES,
    }
    return sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.name not in skipped
        and (entry.is_file() or entry.is_dir())
        and not should_ignore(entry.name, entry.is_dir(), DEFAULT_IGNORE_PATTERNS)
    )


@contextlib.contextmanager
def _every_entry_uploaded(api: Any, folder: Path, expected: list[str]) -> Iterator[None]:
    """Stop before the dataset call if the client left any entry out of it (its tokens are the
    only files the server will see)."""
    original = api.upload_files

    def upload_files(request: Any, *args: Any, **kwargs: Any) -> None:
        before = len(request.files or [])
        original(request, *args, **kwargs)
        sent = len(request.files or []) - before
        if sent != len(expected):
            raise KaggleError(
                f"only {sent} of the {len(expected)} entries of {folder} were uploaded "
                f"({', '.join(expected)}); nothing was created on Kaggle, push again"
            )

    api.upload_files = upload_files
    try:
        yield
    finally:
        del api.upload_files  # back to the class's method


def push_dataset(
    folder: Path,
    message: str = "",
    wait: bool = True,
    poll_interval: float = 10.0,
    timeout: float = 3600.0,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Upload ``folder`` (with its dataset-metadata.json) as a private Kaggle dataset: created
    if new, else a new version with ``message`` as its notes. Folders inside are zipped.

    With ``wait``, returns once Kaggle has processed it ("ready"); a kernel can only mount a
    ready version. ``progress``: show the client's upload progress on stderr (None: when it
    is a terminal). Returns ref, version (int), created (bool), status and url.
    """
    folder = Path(folder)
    meta = read_metadata(folder, "dataset-metadata.json")
    ref = str(meta["id"])
    show = sys.stderr.isatty() if progress is None else progress
    session = open_session()
    check_owner(session, ref, folder / "dataset-metadata.json")
    api = session.api
    with kaggle_errors(f"pushing dataset {ref}", None, session.creds):
        expected = _upload_entries(api, folder)
        if not expected:
            raise KaggleError(f"{folder} holds nothing to upload besides its metadata")
        created = not _dataset_exists(session, ref)
        with (
            client_refusals(str(folder)),
            _private_upload_state(),
            _client_output(show),
            _every_entry_uploaded(api, folder, expected),
        ):
            if created:
                result = api.dataset_create_new(str(folder), quiet=not show, dir_mode="zip")
            else:
                notes = message or "pushed by podium"
                result = api.dataset_create_version(
                    str(folder), notes, quiet=not show, dir_mode="zip"
                )
        if result is None or str(result.status or "").lower() != "ok":
            reason = getattr(result, "error", None) or "no reason given"
            raise KaggleError(f"Kaggle refused dataset {ref}: {reason}")
        log.debug(
            "dataset %s %s, %d entries", ref, "created" if created else "versioned", len(expected)
        )
        status = _wait_until_ready(session, ref, poll_interval, timeout) if wait else "pending"
        version = json.loads(api.dataset_status(ref, format="json(current_version_number)"))
    return {
        "ref": ref,
        "version": int(version["current_version_number"] or 0) or None,
        "created": created,
        "status": status,
        "url": f"https://www.kaggle.com/datasets/{ref}",
    }


def _dataset_exists(session: Session, ref: str) -> bool:
    """GetDatasetStatus answers 404 for a dataset that does not exist yet."""
    import requests

    try:
        session.api.dataset_status(ref)
    except requests.HTTPError as exc:
        if exc.response is not None and exc.response.status_code == 404:
            return False
        raise
    return True


def _wait_until_ready(session: Session, ref: str, poll_interval: float, timeout: float) -> str:
    def ready() -> str | None:
        status = session.api.dataset_status(ref)  # the status name, lower-cased: "ready"...
        if status == "ready":
            return status
        if status in ("failed", "deleted"):
            raise KaggleError(
                f"Kaggle could not process dataset {ref} (status {status}): "
                f"see https://www.kaggle.com/datasets/{ref}"
            )
        return None

    return poll_until(
        ready,
        poll_interval,
        timeout,
        still=f"dataset {ref} was still being processed by Kaggle",
        later=f"push the kernel once https://www.kaggle.com/datasets/{ref} shows it ready",
    )
