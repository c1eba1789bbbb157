"""The authenticated Kaggle client, and Kaggle's failures as one-line errors.

``import kaggle`` authenticates (and may print help or make a network call) at import time, so it
is imported lazily, inside :func:`open_session`, with its stdout swallowed. Credentials are found
in podium's order (environment key, kaggle.json, access token, OAuth login), every HTTP call gets
a timeout, and :func:`kaggle_errors` turns whatever the client or the network raises into one
:class:`KaggleError` line with secrets and signed URLs scrubbed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import stat
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from podium.io import PodiumError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: (connect, read) seconds for every API call; the client itself sets no timeout at all.
HTTP_TIMEOUT_S: tuple[float, float] = (10.0, 120.0)
PAGE_SIZE = 100
_MAX_PAGES = 1000  # guards against a server that keeps handing out page tokens
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
class Credentials:
    kind: str  # "key" (username + key, HTTP Basic) or "token" (access token or OAuth, Bearer)
    source: str  # where they came from, for messages; never the secret itself
    username: str | None = None
    key: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.key, self.token) if s)


@dataclass
class Session:
    api: Any  # the authenticated kaggle KaggleApi (subclass)
    creds: Credentials
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


def _find_credentials() -> Credentials:
    """Credentials in podium's order: env key, kaggle.json, access token, OAuth login."""
    env_user = os.environ.get("KAGGLE_USERNAME") or None
    env_key = os.environ.get("KAGGLE_KEY") or None
    if env_user and env_key:
        return Credentials("key", "KAGGLE_USERNAME/KAGGLE_KEY", username=env_user, key=env_key)

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
        return Credentials(
            "key", str(config_file), username=env_user or file_user, key=env_key or file_key
        )

    token, where = _access_token()
    if token:
        return Credentials("token", where or "access token", token=token)
    if Path("~/.kaggle/credentials.json").expanduser().is_file():
        return Credentials("token", "~/.kaggle/credentials.json (kaggle auth login)")

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
def quiet_stdout() -> Iterator[io.StringIO]:
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
    with quiet_stdout():
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


def open_session() -> Session:
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
        return Session(api, creds, str(creds.username))
    with kaggle_errors("authenticating", None, creds), quiet_stdout():
        try:
            api.authenticate()
        except SystemExit:
            raise KaggleError(
                f"Kaggle did not accept the access token from {creds.source} (expired or "
                f"revoked): create a new one at {_SETTINGS_URL}"
            ) from None
    username = api.config_values.get("username") or ""
    return Session(api, creds, username)


def preflight() -> str:
    """Check that credentials exist and authenticate the client; return the Kaggle username."""
    return open_session().username


# --------------------------------------------------------------------------------------------
# error translation


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    """Remove secrets and URL query strings (signed blob URLs) from a message."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return re.sub(r"(https?://[^\s?'\"]+)\?[^\s'\"]*", r"\1?...", text)


class DownloadInterrupted(Exception):
    """A download stopped before its last byte (podium's own check, not an HTTP error)."""


def connection_reason(exc: BaseException) -> str:
    """A few words on why a connection failed, without urllib3's nested repr."""
    if isinstance(exc, DownloadInterrupted):
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


def _translate(exc: BaseException, action: str, slug: str | None, creds: Credentials) -> str:
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
        if status == 404 and not slug:  # a dataset or kernel: the action names it
            return f"not found (404: {detail}) while {action}: check the owner/slug"
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
        reason = connection_reason(exc)
        return f"cannot reach Kaggle at {host} ({reason}) while {action}: check your connection"
    if isinstance(exc, requests.exceptions.RequestException):
        return f"request to Kaggle failed while {action}: {exc}"
    if isinstance(exc, OSError):
        return f"local file error while {action}: {exc}"
    return f"unexpected answer from Kaggle while {action} ({type(exc).__name__}: {exc})"


@contextlib.contextmanager
def kaggle_errors(action: str, slug: str | None, creds: Credentials) -> Iterator[None]:
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


def check_slug(slug: str) -> None:
    if not isinstance(slug, str) or not _SLUG_RE.match(slug):
        raise KaggleError(
            f"invalid competition slug {slug!r}: use the name from the competition URL, "
            "e.g. 'carvana-image-masking-challenge'"
        )


@contextlib.contextmanager
def sdk_client(session: Session) -> Iterator[Any]:
    """An open kagglesdk ``KaggleClient`` (with podium's timeout and auth)."""
    with session.api.build_kaggle_client() as client:
        yield client


@contextlib.contextmanager
def competition_api(session: Session) -> Iterator[Any]:
    """An open kagglesdk competitions client (with podium's timeout and auth)."""
    with sdk_client(session) as client:
        yield client.competitions.competition_api_client


def poll_until(
    check: Callable[[], T | None], poll_interval: float, timeout: float, still: str, later: str
) -> T:
    """Call ``check`` every ``poll_interval`` seconds until it returns something (it raises
    KaggleError itself for a final failure); after ``timeout`` seconds, one KaggleError line:
    "<still> after <timeout> s; <later>"."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KaggleError(f"{still} after {timeout:g} s; {later}")
        time.sleep(min(poll_interval, remaining))


def paged(fetch: Any, max_pages: int = _MAX_PAGES) -> Iterator[Any]:
    """Yield the items of a token-paginated listing; ``fetch(token)`` returns (items, next)."""
    token, seen = "", set()
    for _ in range(max_pages):
        items, token = fetch(token)
        yield from items or []
        if not token or token in seen:
            return
        seen.add(token)
