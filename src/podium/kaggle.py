"""The Kaggle layer: the one module of podium that talks to the official ``kaggle`` client.

Everything that reaches Kaggle goes through here, so the client's traps are handled once:

* ``import kaggle`` authenticates (and may print help or make a network call) at import time, so
  it is imported lazily, inside :func:`_open_session`, with its stdout swallowed.
* The client is only ever pointed through the PROD entry of
  ``kagglesdk.kaggle_env._env_to_endpoint``; tests swap that entry for a loopback fake.
* kaggle 2.2.4 does not unzip, reports a failed upload as a normal return value, hides the
  page token of several listings and keeps retrying some calls for minutes. Podium streams
  downloads itself (temp name, size check, resume, safe unzip, manifest) and turns every failure
  into one :class:`KaggleError` line. Credentials never appear in a message, a log line or a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import stat
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from podium.archives import ArchiveError, UnpackRules, extract_archive, safe_relative, unpack
from podium.io import PodiumError, progress_bar

__all__ = [
    "KaggleCredentialsWarning",
    "KaggleError",
    "download",
    "downloaded",
    "format_table",
    "leaderboard",
    "list_files",
    "preflight",
    "rules_url",
    "submissions",
    "submit",
]

log = logging.getLogger(__name__)

#: (connect, read) seconds for every API call; the client itself sets no timeout at all.
HTTP_TIMEOUT_S: tuple[float, float] = (10.0, 120.0)
#: Waits before each in-call resume of an interrupted download (then the call gives up and a
#: later call resumes from the partial file).
RESUME_DELAYS_S: tuple[float, ...] = (1.0, 4.0)
_PAGE_SIZE = 100
_MAX_PAGES = 1000  # guards against a server that keeps handing out page tokens
_STATE_DIR = ".podium-kaggle"  # inside the download dir: partial files, manifest, staging
_MANIFEST = "manifest.json"
_CHUNK = 1 << 18  # also bounds what an interruption loses
_SLUG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_SETTINGS_URL = "https://www.kaggle.com/settings"


class KaggleError(PodiumError):
    """A Kaggle operation failed; ``str(e)`` is one line meant for the user.

    A PodiumError (itself an Exception), so the CLI prints it as ``podium: error: ...``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class KaggleCredentialsWarning(UserWarning):
    """kaggle.json is readable by other users."""


def rules_url(slug: str) -> str:
    """The page where the competition rules are accepted (the API cannot accept them)."""
    return f"https://www.kaggle.com/competitions/{slug}/rules"


# --------------------------------------------------------------------------------------------
# credentials and the authenticated client


@dataclass(frozen=True)
class _Credentials:
    kind: str  # "key" (username + key, HTTP Basic) or "token" (access token or OAuth, Bearer)
    source: str  # where they came from, for messages; never the secret itself
    username: str | None = None
    key: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.key, self.token) if s)


@dataclass
class _Session:
    api: Any  # the authenticated kaggle KaggleApi (subclass)
    creds: _Credentials
    username: str


def _config_dir() -> Path:
    """The directory where the client looks for kaggle.json, resolved now (not at import)."""
    configured = os.environ.get("KAGGLE_CONFIG_DIR")
    if configured:
        return Path(configured).expanduser()
    home_dir = Path("~/.kaggle").expanduser()
    if sys.platform.startswith("linux") and not home_dir.exists():
        xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
        return Path(xdg) / "kaggle"
    return home_dir


def _access_token() -> tuple[str | None, str | None]:
    """(token, where) from the places the client reads, in the client's own order."""
    from kagglesdk.kaggle_env import get_access_token_from_env

    token, source = get_access_token_from_env()
    where = {
        "KAGGLE_API_TOKEN": "KAGGLE_API_TOKEN",
        "access_token": "~/.kaggle/access_token",
        "KAGGLE_API_V1_TOKEN": "KAGGLE_API_V1_TOKEN",
    }.get(source or "", source)
    return (token or None), where


def _find_credentials() -> _Credentials:
    """Credentials in podium's order: env key, kaggle.json, access token, OAuth login."""
    env_user = os.environ.get("KAGGLE_USERNAME") or None
    env_key = os.environ.get("KAGGLE_KEY") or None
    if env_user and env_key:
        return _Credentials("key", "KAGGLE_USERNAME/KAGGLE_KEY", username=env_user, key=env_key)

    config_file = _config_dir() / "kaggle.json"
    if config_file.is_file():
        mode = config_file.stat().st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            warnings.warn(
                f"{config_file} is readable by other users; run: chmod 600 {config_file}",
                KaggleCredentialsWarning,
                stacklevel=3,
            )
        try:
            data = json.loads(config_file.read_text())
            file_user, file_key = data.get("username"), data.get("key")
        except (OSError, ValueError, AttributeError):
            file_user = file_key = None
        if not (file_user and file_key):
            raise KaggleError(
                f"{config_file} is not a valid Kaggle credentials file: it must be JSON with "
                f'"username" and "key" (download a fresh one from {_SETTINGS_URL}, API section)'
            )
        # As in the client, a KAGGLE_USERNAME / KAGGLE_KEY variable overrides its file value.
        return _Credentials(
            "key", str(config_file), username=env_user or file_user, key=env_key or file_key
        )

    token, where = _access_token()
    if token:
        return _Credentials("token", where or "access token", token=token)
    if Path("~/.kaggle/credentials.json").expanduser().is_file():
        return _Credentials("token", "~/.kaggle/credentials.json (kaggle auth login)")

    if env_user or env_key:
        missing = "KAGGLE_KEY" if env_user else "KAGGLE_USERNAME"
        raise KaggleError(
            f"{missing} is not set (only its partner is) and there is no {config_file}: "
            f"set both KAGGLE_USERNAME and KAGGLE_KEY"
        )
    raise KaggleError(
        "no Kaggle credentials found: set KAGGLE_USERNAME and KAGGLE_KEY, or save kaggle.json "
        f"(Create New Token at {_SETTINGS_URL}) as {config_file} with chmod 600, or put an API "
        "token in KAGGLE_API_TOKEN or ~/.kaggle/access_token"
    )


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[io.StringIO]:
    """Swallow what the client prints (auth help, warnings) so only podium talks to the user."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer


_API_CLASS: type | None = None  # built on first use, because it subclasses KaggleApi


def _api_class() -> type:
    """A KaggleApi whose HTTP sessions get a timeout and podium's choice of credentials."""
    global _API_CLASS
    if _API_CLASS is not None:
        return _API_CLASS
    with _quiet_stdout():
        # The first import of `kaggle` authenticates (help text on stdout, maybe a network call).
        from kaggle.api.kaggle_api_extended import KaggleApi
    from requests.adapters import HTTPAdapter

    class _TimeoutAdapter(HTTPAdapter):
        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = HTTP_TIMEOUT_S
            return super().send(request, *args, **kwargs)

    class PodiumKaggleApi(KaggleApi):  # type: ignore[misc,valid-type]
        podium_basic_auth: tuple[str, str] | None = None

        def build_kaggle_client(self) -> Any:
            client = super().build_kaggle_client()
            http = client.http_client()
            if hasattr(http, "_init_session"):
                http._init_session()  # creates the session (and its auth) now, once
            session = getattr(http, "_session", None)
            if session is None:  # a future kagglesdk: keep its defaults
                return client
            adapter = _TimeoutAdapter()
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            if self.podium_basic_auth:
                # The client sends Bearer whenever *any* access token is lying around, even one
                # it rejected; podium's order says the username/key wins, so force Basic.
                session.auth = self.podium_basic_auth
            return client

    _API_CLASS = PodiumKaggleApi
    return _API_CLASS


def _open_session() -> _Session:
    """Find credentials, then build and authenticate a client for them."""
    creds = _find_credentials()
    api = _api_class()()
    # KaggleApi.config_dir is frozen at first import; pin the directory resolved just now.
    api.config_dir = str(_config_dir())
    api.config = os.path.join(api.config_dir, api.config_file)
    if creds.kind == "key":
        # No network call: a wrong key only shows up as a 401 on the first real call.
        api.config_values = {"username": creds.username, "key": creds.key}
        api.podium_basic_auth = (creds.username, creds.key)
        return _Session(api, creds, str(creds.username))
    with _kaggle_errors("authenticating", None, creds), _quiet_stdout():
        try:
            api.authenticate()
        except SystemExit:
            raise KaggleError(
                f"Kaggle did not accept the access token from {creds.source} (expired or "
                f"revoked): create a new one at {_SETTINGS_URL}"
            ) from None
    username = api.config_values.get("username") or ""
    return _Session(api, creds, username)


def preflight() -> str:
    """Check that credentials exist and authenticate the client; return the Kaggle username."""
    return _open_session().username


# --------------------------------------------------------------------------------------------
# error translation


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    """Remove secrets and URL query strings (signed blob URLs) from a message."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return re.sub(r"(https?://[^\s?'\"]+)\?[^\s'\"]*", r"\1?...", text)


def _connection_reason(exc: BaseException) -> str:
    """A few words on why a connection failed, without urllib3's nested repr."""
    if isinstance(exc, _Interrupted):
        return str(exc)
    text = str(exc)
    if "IncompleteRead" in text or type(exc).__name__ in ("ChunkedEncodingError", "ProtocolError"):
        return "connection closed before the end"
    errno_match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno_match:
        return errno_match.group(1).strip()
    if "NameResolution" in text or "getaddrinfo" in text:
        return "host name could not be resolved"
    if "timed out" in text.lower():
        return "timed out"
    return type(exc).__name__


def _translate(exc: BaseException, action: str, slug: str | None, creds: _Credentials) -> str:
    import requests

    what = f"competition '{slug}'" if slug else "Kaggle"
    if isinstance(exc, requests.exceptions.HTTPError):
        response = exc.response
        status = response.status_code if response is not None else None
        detail = str(exc)
        if status == 401:
            return (
                f"Kaggle rejected the credentials from {creds.source} (401 {detail}) while "
                f"{action}: check the username and key, or create a new token at {_SETTINGS_URL}"
            )
        if status == 403:
            hint = f"accept the rules at {rules_url(slug)} and retry" if slug else "check access"
            return f"Kaggle refused access to {what} (403: {detail}) while {action}: {hint}"
        if status == 404:
            return (
                f"not found (404: {detail}) while {action}: check the competition slug "
                f"'{slug}' (https://www.kaggle.com/competitions/{slug}) and any file names"
            )
        if status == 429:
            return f"Kaggle rate-limited the request (429) while {action}: wait and retry"
        return f"Kaggle answered HTTP {status} while {action} for {what}: {detail}"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"Kaggle did not answer in time while {action}: check your network and retry"
    if isinstance(exc, requests.exceptions.ConnectionError):
        url = getattr(getattr(exc, "request", None), "url", None) or _endpoint()
        host = urlsplit(url).netloc or url
        reason = _connection_reason(exc)
        return f"cannot reach Kaggle at {host} ({reason}) while {action}: check your connection"
    if isinstance(exc, requests.exceptions.RequestException):
        return f"request to Kaggle failed while {action}: {exc}"
    if isinstance(exc, OSError):
        return f"local file error while {action}: {exc}"
    return f"unexpected answer from Kaggle while {action} ({type(exc).__name__}: {exc})"


@contextlib.contextmanager
def _kaggle_errors(action: str, slug: str | None, creds: _Credentials) -> Iterator[None]:
    """Turn anything the client or the network raises into one scrubbed KaggleError line."""
    try:
        yield
    except KaggleError as exc:
        raise KaggleError(_scrub(str(exc), creds.secrets())) from None
    except Exception as exc:
        raise KaggleError(_scrub(_translate(exc, action, slug, creds), creds.secrets())) from exc


def _endpoint() -> str:
    from kagglesdk.kaggle_env import KaggleEnv, get_endpoint

    return get_endpoint(KaggleEnv.PROD)


def _check_slug(slug: str) -> None:
    if not isinstance(slug, str) or not _SLUG_RE.match(slug):
        raise KaggleError(
            f"invalid competition slug {slug!r}: use the name from the competition URL, "
            "e.g. 'carvana-image-masking-challenge'"
        )


@contextlib.contextmanager
def _competitions(session: _Session) -> Iterator[Any]:
    """An open kagglesdk competitions client (with podium's timeout and auth)."""
    with session.api.build_kaggle_client() as client:
        yield client.competitions.competition_api_client


def _paged(fetch: Any, max_pages: int = _MAX_PAGES) -> Iterator[Any]:
    """Yield the items of a token-paginated listing; ``fetch(token)`` returns (items, next)."""
    token, seen = "", set()
    for _ in range(max_pages):
        items, token = fetch(token)
        yield from items or []
        if not token or token in seen:
            return
        seen.add(token)


# --------------------------------------------------------------------------------------------
# listing


def list_files(slug: str) -> list[dict[str, Any]]:
    """The competition's data files as ``[{"name": str, "size": int}, ...]`` (all pages)."""
    _check_slug(slug)
    from kagglesdk.competitions.types.competition_api_service import ApiListDataFilesRequest

    session = _open_session()

    def fetch(token: str) -> tuple[list[Any], str]:
        request = ApiListDataFilesRequest()
        request.competition_name = slug
        request.page_size = _PAGE_SIZE
        request.page_token = token
        response = competitions.list_data_files(request)
        return response.files, response.next_page_token

    with (
        _kaggle_errors("listing files", slug, session.creds),
        _competitions(session) as competitions,
    ):
        return [{"name": f.name, "size": int(f.total_bytes or 0)} for f in _paged(fetch)]


def _score(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


def _submission_row(sub: Any) -> dict[str, Any]:
    return {
        "ref": sub.ref,
        "date": _iso(sub.date),
        "file_name": sub.file_name,
        "description": sub.description,
        "status": sub.status.name,
        "public_score": _score(sub.public_score),
        "private_score": _score(sub.private_score),
        "error_description": sub.error_description,
        "team_name": sub.team_name,
        "submitted_by": sub.submitted_by,
    }


def _iter_submissions(session: _Session, slug: str) -> Iterator[dict[str, Any]]:
    from kagglesdk.competitions.types.competition_api_service import ApiListSubmissionsRequest

    with _competitions(session) as competitions:

        def fetch(token: str) -> tuple[list[Any], str]:
            request = ApiListSubmissionsRequest()
            request.competition_name = slug
            request.page_size = _PAGE_SIZE
            if token:
                request.page_token = token
            else:
                request.page = 1  # what the client sends for the first page
            response = competitions.list_submissions(request)
            return response.submissions, response.next_page_token

        for sub in _paged(fetch):
            yield _submission_row(sub)


def submissions(slug: str) -> list[dict[str, Any]]:
    """The current user's submissions to the competition, newest first (all pages).

    Keys: ref, date, file_name, description, status (PENDING/COMPLETE/ERROR), public_score,
    private_score (floats or None), error_description, team_name, submitted_by.
    """
    _check_slug(slug)
    session = _open_session()
    with _kaggle_errors("listing submissions", slug, session.creds):
        return list(_iter_submissions(session, slug))


def leaderboard(slug: str, top: int = 20) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The ``top`` leaderboard rows and the current user's own row (None if not on the board).

    Rows have rank, team_id, team_name, score (float or None) and submission_date. The user's
    team is recognised by the team name on their submissions, else by their username.
    """
    _check_slug(slug)
    if top < 0:
        raise KaggleError(f"top must be >= 0, got {top}")
    from kagglesdk.competitions.types.competition_api_service import ApiGetLeaderboardRequest

    session = _open_session()
    with _kaggle_errors("reading the leaderboard", slug, session.creds):
        own_names = {s["team_name"] for s in _first(_iter_submissions(session, slug), 50)}
        own_names = {n.casefold() for n in own_names if n} or {session.username.casefold()}
        rows: list[dict[str, Any]] = []
        own: dict[str, Any] | None = None
        with _competitions(session) as competitions:

            def fetch(token: str) -> tuple[list[Any], str]:
                request = ApiGetLeaderboardRequest()
                request.competition_name = slug
                request.page_size = _PAGE_SIZE
                request.page_token = token
                response = competitions.get_leaderboard(request)
                return response.submissions, response.next_page_token

            for rank, entry in enumerate(_paged(fetch), start=1):
                row = {
                    "rank": rank,
                    "team_id": entry.team_id,
                    "team_name": entry.team_name,
                    "score": _score(entry.score),
                    "submission_date": _iso(entry.submission_date),
                }
                if rank <= top:
                    rows.append(row)
                if own is None and entry.team_name.casefold() in own_names:
                    own = row
                if rank >= top and own is not None:
                    break  # stop paging once both are known
        return rows, own


def _first(items: Iterator[Any], n: int) -> list[Any]:
    """The first ``n`` items; closes the generator (and the client it holds open)."""
    out: list[Any] = []
    with contextlib.closing(items):  # type: ignore[type-var]
        for item in items:
            out.append(item)
            if len(out) >= n:
                break
    return out


# --------------------------------------------------------------------------------------------
# submitting


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def submit(
    slug: str,
    file: Path,
    message: str,
    wait: bool = False,
    poll_interval: float = 5.0,
    timeout: float = 3600,
) -> dict[str, Any]:
    """Upload ``file`` as a submission; with ``wait``, poll until Kaggle has scored it.

    Returns ref, status, public_score, error_description, sha256, file and the server message.
    Raises KaggleError if the upload fails (kaggle 2.2.4 only returns ``ref 0`` then), if the
    scored submission ends in ERROR (with Kaggle's error description), or on timeout.
    """
    _check_slug(slug)
    file = Path(file)
    if not file.is_file():
        raise KaggleError(f"submission file not found: {file}")
    if file.stat().st_size == 0:
        raise KaggleError(f"submission file is empty: {file}")
    sha256 = _sha256(file)
    session = _open_session()
    with _kaggle_errors("submitting", slug, session.creds):
        with _quiet_stdout() as printed:
            result = session.api.competition_submit(str(file), message, slug, quiet=True)
        failed_message = session.api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE
        if not result.ref or result.message == failed_message:
            lines = [line for line in printed.getvalue().splitlines() if line.strip()]
            detail = f": {lines[-1][:200]}" if lines else ""
            raise KaggleError(
                f"upload of {file.name} to '{slug}' failed, nothing was submitted "
                f"({result.message or 'no submission ref returned'}{detail})"
            )
    info: dict[str, Any] = {
        "ref": result.ref,
        "status": "PENDING",
        "public_score": None,
        "error_description": "",
        "sha256": sha256,
        "file": str(file),
        "message": result.message,
    }
    log.info("submitted %s to %s as ref %s", file.name, slug, result.ref)
    if wait:
        info.update(_wait_for_score(session, slug, result.ref, poll_interval, timeout))
    return info


def _wait_for_score(
    session: _Session, slug: str, ref: int, poll_interval: float, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        with _kaggle_errors(f"waiting for submission {ref}", slug, session.creds):
            row = next((s for s in _iter_submissions(session, slug) if s["ref"] == ref), None)
        if row is not None and row["status"] == "COMPLETE":
            return {k: row[k] for k in ("status", "public_score", "error_description")}
        if row is not None and row["status"] == "ERROR":
            reason = row["error_description"] or "no error description given"
            raise KaggleError(f"submission {ref} to '{slug}' failed on Kaggle: {reason}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KaggleError(
                f"submission {ref} to '{slug}' was still pending after {timeout:g} s; "
                f"check later with: podium submissions {slug}"
            )
        time.sleep(min(poll_interval, remaining))


# --------------------------------------------------------------------------------------------
# downloading


@dataclass(frozen=True)
class _Remote:
    url: str  # the final (post-redirect) blob URL
    size: int | None
    validator: str | None  # ETag or Last-Modified: proves a partial file is of this object
    resumable: bool
    encoded: bool  # Content-Encoding set: the byte count cannot be checked against the length

    @classmethod
    def of(cls, response: Any) -> _Remote:
        headers = response.headers
        length = headers.get("Content-Length")
        return cls(
            url=response.url,
            size=int(length) if length and length.isdigit() else None,
            validator=headers.get("ETag") or headers.get("Last-Modified"),
            resumable=headers.get("Accept-Ranges") == "bytes",
            encoded=bool(headers.get("Content-Encoding")),
        )

    @property
    def served_name(self) -> str:
        return PurePosixPath(urlsplit(self.url).path).name


class _Manifest:
    """What a download completed, in ``<dest>/.podium-kaggle/manifest.json``.

    ``downloads``: per download key, the remote identity (size, ETag/Last-Modified) and the
    files it put in place. ``unpacked``: per member archive (path in ``dest``), its size and the
    files it unpacked into. An archive deleted after its verified extraction still counts as
    present while everything it unpacked into is.
    """

    def __init__(self, dest: Path) -> None:
        self.path = dest / _STATE_DIR / _MANIFEST
        self.dest = dest
        try:
            self.data = json.loads(self.path.read_text())
            if not isinstance(self.data.get("downloads"), dict):
                raise ValueError("no downloads")
        except (OSError, ValueError, AttributeError):
            self.data = {"version": 1, "downloads": {}}
        self.data.setdefault("unpacked", {})

    def complete_outputs(self, key: str, remote: _Remote) -> list[Path] | None:
        """The outputs of ``key`` if they were fully written from this same remote object."""
        entry = self.data["downloads"].get(key)
        if not entry or entry.get("size") != remote.size:
            return None
        if entry.get("validator") != remote.validator:
            return None
        return self.local_outputs(key)

    def local_outputs(self, key: str) -> list[Path] | None:
        """The recorded outputs of ``key`` if all are still on disk with their sizes (an
        unpacked archive stands for what it unpacked into)."""
        entry = self.data["downloads"].get(key)
        return self._present(entry["files"]) if entry else None

    def unpacked_outputs(self, rel: str) -> list[Path] | None:
        """What the member archive ``rel`` unpacked into, if all of it is on disk and the
        archive (where it was kept) is the one that was unpacked."""
        entry = self.data["unpacked"].get(rel)
        archive = self.dest / rel
        if not entry or (archive.is_file() and archive.stat().st_size != entry["size"]):
            return None
        return self._present(entry["files"])

    def _present(self, files: dict[str, int]) -> list[Path] | None:
        outputs: list[Path] = []
        for rel, size in files.items():
            path = self.dest / rel
            if path.is_file() and path.stat().st_size == size:
                outputs.append(path)
                continue
            unpacked = self.unpacked_outputs(rel) if not path.exists() else None
            if unpacked is None:
                return None
            outputs.extend(unpacked)
        return outputs

    def record(self, key: str, remote: _Remote, outputs: list[Path]) -> None:
        files = self._sizes(outputs)
        self.data["downloads"][key] = {
            "size": remote.size,
            "validator": remote.validator,
            "files": files,
        }
        for rel in files:  # freshly downloaded archives have not been unpacked yet
            self.data["unpacked"].pop(rel, None)
        self._save()

    def record_unpacked(self, rel: str, size: int, outputs: list[Path]) -> None:
        self.data["unpacked"][rel] = {"size": size, "files": self._sizes(outputs)}
        self._save()

    def _sizes(self, outputs: list[Path]) -> dict[str, int]:
        return {p.relative_to(self.dest).as_posix(): p.stat().st_size for p in outputs}

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)  # atomic: never a half-written manifest


class _Interrupted(Exception):
    pass


def _stream_body(
    response: Any, part: Path, offset: int, remote: _Remote, progress: bool | None
) -> None:
    mode = "ab" if offset else "wb"
    with (
        part.open(mode) as fh,
        progress_bar(remote.size, f"downloading {remote.served_name}", progress, offset) as advance,
    ):
        for chunk in response.iter_content(_CHUNK):
            fh.write(chunk)
            advance(len(chunk))


def _range_get(remote: _Remote, offset: int) -> tuple[Any, int]:
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
        raise _Interrupted("server answered the resume with a wrong range")
    response.raise_for_status()
    return response, 0


def _sidecar(part: Path) -> Path:
    """Where the identity (size, ETag) of the object being written to ``part`` is kept."""
    return part.with_name(part.name + ".json")


def _fetch(response: Any, remote: _Remote, part: Path, force: bool, progress: bool | None) -> None:
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
                raise _Interrupted(f"got {written} of {remote.size} bytes")
            return
        except (requests.RequestException, urllib3.exceptions.HTTPError, _Interrupted) as exc:
            if isinstance(exc, requests.HTTPError):
                raise  # an HTTP status answer, not an interruption: report it as such
            written = part.stat().st_size if part.is_file() else 0
            if not retries:
                total = f" of {remote.size}" if remote.size is not None else ""
                raise KaggleError(
                    f"download of {remote.served_name} was interrupted after {written}{total} "
                    f"bytes ({_connection_reason(exc)}); run the same command again to resume"
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

    session: _Session
    slug: str
    dest: Path
    manifest: _Manifest
    force: bool
    unpack: UnpackRules
    progress: bool | None

    @property
    def state(self) -> Path:
        return self.dest / _STATE_DIR


def _download_one(job: _Job, name: str | None) -> list[Path]:
    """Download the whole archive (``name`` None) or one file, then unzip / move into place."""
    from kagglesdk.competitions.types.competition_api_service import (
        ApiDownloadDataFileRequest,
        ApiDownloadDataFilesRequest,
    )

    key = "*" if name is None else f"file:{name}"
    job.state.mkdir(parents=True, exist_ok=True)
    with _competitions(job.session) as competitions:
        if name is None:
            request = ApiDownloadDataFilesRequest()
            request.competition_name = job.slug
            response = competitions.download_data_files(request)  # 302 -> the blob, streamed
        else:
            request = ApiDownloadDataFileRequest()
            request.competition_name = job.slug
            request.file_name = name
            response = competitions.download_data_file(request)
        remote = _Remote.of(response)
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
        raise KaggleError(str(exc)) from None
    part.unlink(missing_ok=True)
    _sidecar(part).unlink(missing_ok=True)
    job.manifest.record(key, remote, outputs)
    return outputs


def _put_in_place(job: _Job, part: Path, served: str, name: str | None) -> list[Path]:
    """Extract the competition archive into ``dest``, or move one downloaded file there."""
    options = {"label": served, "work_dir": job.state, "progress": job.progress}
    if name is None:
        return extract_archive(part, job.dest, reserved=(_STATE_DIR,), **options)
    rel = safe_relative(name)
    assert isinstance(rel, PurePosixPath)  # checked by download()
    # Kaggle serves large single files zipped as "<name>.zip": unwrap those.
    if served.endswith(".zip") and not rel.name.endswith(".zip"):
        return extract_archive(part, job.dest / rel.parent, reserved=(_STATE_DIR,), **options)
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
            except ArchiveError as exc:
                raise KaggleError(f"{exc} (the rest of the download is in place)") from None
            job.manifest.record_unpacked(rel, path.stat().st_size, done)
        if not job.unpack.keep_archives:
            path.unlink()
        queue.extend(done)
    return final


def _check_file_names(files: list[str]) -> list[str]:
    names = list(dict.fromkeys(files))  # keep order, drop duplicates
    for name in names:
        rel = safe_relative(name or "", reserved=(_STATE_DIR,))
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

    _check_slug(slug)
    dest = Path(dest)
    names = _download_keys(files)
    session = _open_session()
    (dest / _STATE_DIR).mkdir(parents=True, exist_ok=True)
    # Two downloads into one directory would share partial files and the manifest.
    lock = FileLock(str(dest / _STATE_DIR / "lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("waiting for another podium download into %s", dest)
        lock.acquire()
    try:
        job = _Job(session, slug, dest, _Manifest(dest), force, unpack or UnpackRules(), progress)
        outputs: list[Path] = []
        for name in names:
            action = f"downloading {name}" if name else "downloading the data"
            with _kaggle_errors(action, slug, session.creds):
                outputs.extend(_download_one(job, name))
        with _kaggle_errors("unpacking the data", slug, session.creds):
            return _unpack_members(job, outputs)
    finally:
        lock.release()


def downloaded(dest: Path, files: list[str] | None = None) -> list[Path] | None:
    """The files a previous :func:`download` completed in ``dest``, or None if any is missing.

    Local only (no credentials, no network): it checks the manifest and the sizes on disk,
    not whether Kaggle has changed the data since.
    """
    dest = Path(dest)
    manifest = _Manifest(dest)
    outputs: list[Path] = []
    for name in _download_keys(files):
        found = manifest.local_outputs("*" if name is None else f"file:{name}")
        if found is None:
            return None
        outputs.extend(found)
    return outputs


# --------------------------------------------------------------------------------------------
# presentation


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain text table: a header, a rule, one line per row; numbers right-aligned."""

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.6g}"
        return str(value).replace("\n", " ")

    cells = [[cell(row.get(col)) for col in columns] for row in rows]
    numeric = [
        all(isinstance(row.get(col), (int, float)) or row.get(col) is None for row in rows)
        and any(isinstance(row.get(col), (int, float)) for row in rows)
        for col in columns
    ]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(list(columns)), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)
