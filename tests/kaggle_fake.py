"""A fake Kaggle server on loopback, speaking the wire protocol of kaggle 2.2.4 / kagglesdk 0.1.37.

See /work/shared/reference/kaggle_api.md for the protocol. The REAL ``kaggle`` client is pointed
at it by swapping the PROD entry of ``kagglesdk.kaggle_env._env_to_endpoint`` (seam A):

    with FakeKaggle() as fake:
        monkeypatch.setitem(_env_to_endpoint, KaggleEnv.PROD, fake.url)

or, for a subprocess, by putting ``tests/kaggle_sitecustomize`` on ``PYTHONPATH`` and setting
``PODIUM_FAKE_KAGGLE_URL`` (seam B). Other test modules can reuse the pytest fixtures at the
bottom (``kaggle_home``, ``fake_kaggle``) by importing them.

What it serves: competitions with data files (``DownloadDataFiles`` is a 302 to a zip blob,
``DownloadDataFile`` a 302 to the file or ``<name>.zip``), blob GETs with Content-Length,
Last-Modified, ETag and ``Range`` support, submission upload (``StartSubmissionUpload``, a PUT to
an absolute ``createUrl``, ``CreateSubmission``), token-paginated listings, a leaderboard and
access-token introspection. The code-competition endpoints (datasets, blob uploads, kernels, code
submissions, the competition listing) live in ``kaggle_fake_code`` and are mixed in here.
Knobs on :class:`FakeKaggle` inject the failures podium must handle.
Nothing here ever reaches a real host: the server binds 127.0.0.1 on an ephemeral port.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

try:
    from kaggle_fake_code import CODE_ROUTES, CodeCompetitionHandlers, CodeCompetitionState
    from kaggle_fake_code import ApiError as _ApiError
except ImportError:  # tests/ turned into a package
    from tests.kaggle_fake_code import CODE_ROUTES, CodeCompetitionHandlers, CodeCompetitionState
    from tests.kaggle_fake_code import ApiError as _ApiError

LAST_MODIFIED = "Tue, 14 Nov 2023 22:13:20 GMT"
CREATED = "2023-11-14T22:13:20.000Z"
_ZIP_DATE = (2023, 11, 14, 22, 13, 20)
SERVICE = "competitions.CompetitionApiService"


def make_zip(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    """Deterministic zip bytes (fixed timestamps) so Content-Length and ETag are stable."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.external_attr = 0o120777 << 16  # S_IFLNK: the entry is a symbolic link
            zf.writestr(info, target)
    return buffer.getvalue()


@dataclass
class FakeCompetition:
    slug: str
    title: str
    files: dict[str, bytes]
    rules_accepted: bool = True
    #: names that DownloadDataFile serves as "<name>.zip" (as Kaggle does for large files)
    zipped_files: set[str] = field(default_factory=set)
    #: a hand-made archive served by DownloadDataFiles instead of a zip of ``files``
    archive: bytes | None = None
    #: a submission is scored only if its first line is this header, else it ends in ERROR
    submission_header: str = "id,rle_mask"
    #: (team_id, team_name, score) rows of other teams
    other_teams: list[tuple[int, str, str]] = field(default_factory=list)
    #: submissions come from kernels only (the listing's isKernelsSubmissionsOnly)
    code_competition: bool = False

    def archive_bytes(self) -> bytes:
        return self.archive if self.archive is not None else make_zip(self.files)


@dataclass
class FakeSubmission:
    ref: int
    file_name: str
    description: str
    size: int
    status: str = "PENDING"
    public_score: str = ""
    error_description: str = ""
    polls_left: int = 0  # ListSubmissions answers that still show PENDING
    kernel: str = ""  # a code submission: the kernel (owner/slug) and its version
    kernel_version: int = 0


class FakeKaggle(CodeCompetitionState):
    """The fake server plus its state; a context manager that starts and stops it."""

    def __init__(
        self,
        username: str = "alice",
        key: str = "fake-key",
        token: str | None = None,
        team_name: str = "Alice Team",
        max_lifetime_s: float = 900.0,  # a bound for a leak, not for a slow test (128 s seen)
    ) -> None:
        self.username, self.key, self.token, self.team_name = username, key, token, team_name
        self.max_lifetime_s = max_lifetime_s
        self.competitions: dict[str, FakeCompetition] = {}
        self.submissions: list[FakeSubmission] = []
        self.uploads: dict[str, bytes] = {}
        self.upload_names: dict[str, str] = {}
        # Knobs (tests set these to inject failures).
        self.max_page_size = 20  # the server's cap, like the real one; forces pagination
        self.truncate_blob_gets = 0  # the next N blob GETs send half the body, then hang up
        self.corrupt_blob_gets = 0  # the next N blob GETs flip 16 bytes mid-body (same size)
        self.fail_uploads = False  # createUrl PUTs answer 500: the upload fails
        self.pending_polls = 1  # listings a new submission stays PENDING for
        self.score = "0.75000"  # public score of a submission with the right header
        # Observations.
        self.calls: list[dict[str, Any]] = []  # one per API call: method, auth, body
        self.blob_gets: list[dict[str, Any]] = []  # path, range, status
        self.puts: list[dict[str, Any]] = []
        self.init_code_state()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Timer | None = None

    # ---- setup helpers
    def add_competition(self, competition: FakeCompetition) -> FakeCompetition:
        self.competitions[competition.slug] = competition
        return competition

    @property
    def url(self) -> str:
        assert self._server is not None, "start the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def api_calls(self, method: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["method"] == method]

    def new_submission(self, file_name: str, description: str, size: int) -> FakeSubmission:
        """A PENDING submission with the next ref (call with the lock held)."""
        sub = FakeSubmission(
            ref=1001 + len(self.submissions),
            file_name=file_name,
            description=description,
            size=size,
            polls_left=self.pending_polls,
        )
        self.submissions.append(sub)
        return sub

    # ---- lifecycle
    def start(self) -> FakeKaggle:
        fake = self

        class Handler(_Handler):
            state = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        # Bounded: even if a test never stops it, the server shuts itself down.
        self._watchdog = threading.Timer(self.max_lifetime_s, self.stop)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.cancel()
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeKaggle:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(CodeCompetitionHandlers, BaseHTTPRequestHandler):
    state: FakeKaggle
    timeout = 5  # a stalled client cannot hold a handler thread for long
    server_version = "FakeKaggle/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output clean

    # ---- plumbing
    def _base(self) -> str:
        return f"http://{self.headers.get('Host')}"

    def _send_json(self, payload: dict[str, Any], status: int = 200) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, path: str) -> None:
        self.send_response(302)
        # Real blob URLs are signed; the query string stands in for the signature.
        self.send_header("Location", f"{self._base()}{path}?X-Goog-Signature=fakesig")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _auth(self) -> str:
        header = self.headers.get("Authorization", "")
        fake = self.state
        if header.startswith("Basic "):
            try:
                user, _, key = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                raise _ApiError(401, "Unauthenticated") from None
            if user == fake.username and key == fake.key:
                return "basic"
        elif header.startswith("Bearer ") and fake.token and header[7:] == fake.token:
            return "bearer"
        raise _ApiError(401, "Unauthenticated")

    # ---- HTTP verbs
    def do_POST(self) -> None:
        match = re.fullmatch(r"(?:/api)?/v1/([\w.]+)/(\w+)", self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if not match:
            self._send_json({"code": 404, "message": f"no route {self.path}"}, 404)
            return
        service, method = match.groups()
        call = {"service": service, "method": method, "body": body, "auth": None}
        with self.state._lock:
            self.state.calls.append(call)
        try:
            if (service, method) == ("security.OAuthService", "IntrospectToken"):
                # Never 401 here: the client treats that as fatal (G6).
                token = body.get("token")
                active = bool(self.state.token) and token == self.state.token
                self._send_json({"active": active, "username": self.state.username})
                return
            call["auth"] = self._auth()
            handler = getattr(self, f"api_{method}", None)
            if service != CODE_ROUTES.get(method, SERVICE) or handler is None:
                raise _ApiError(501, f"{service}/{method} is not implemented by the fake")
            handler(body)
        except _ApiError as err:
            self._send_json({"code": err.code, "message": err.message}, err.code)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        fake = self.state
        if path.startswith("/_kernel_output/"):
            self._send_blob(self.kernel_output_bytes(path))
            return
        match = re.fullmatch(r"/_blobs/([\w-]+)/(all|file)/(.+)", path)
        if not match or match.group(1) not in fake.competitions:
            self.send_error(404)
            return
        comp = fake.competitions[match.group(1)]
        if match.group(2) == "all":
            data = comp.archive_bytes()
        else:
            name = match.group(3)
            if name.endswith(".zip") and name[:-4] in comp.zipped_files:
                data = make_zip({Path(name[:-4]).name: comp.files[name[:-4]]})
            elif name in comp.files:
                data = comp.files[name]
            else:
                self.send_error(404)
                return
        etag = '"' + hashlib.sha1(data).hexdigest() + '"'
        start, status = 0, 200
        range_header = self.headers.get("Range")
        range_match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if range_match and self.headers.get("If-Range") in (None, etag, LAST_MODIFIED):
            start, status = int(range_match.group(1)), 206
        with fake._lock:
            truncate = fake.truncate_blob_gets > 0
            fake.truncate_blob_gets -= int(truncate)
            fake.blob_gets.append({"path": path, "range": range_header, "truncated": truncate})
            corrupt = fake.corrupt_blob_gets > 0
            fake.corrupt_blob_gets -= int(corrupt)
        body = data[start:]
        if corrupt:  # damaged in transit: the length and the ETag still match
            middle = len(body) // 2
            body = (
                body[:middle]
                + bytes(b ^ 0xFF for b in body[middle : middle + 16])
                + body[middle + 16 :]
            )
        self.send_response(status)
        self.send_header("Content-Type", "application/zip" if path.endswith(".zip") else "text/csv")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", LAST_MODIFIED)
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if truncate:
            # Promise the whole body, send half, hang up: a dropped connection mid-download.
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.close_connection = True
            return
        self.wfile.write(body)

    def _send_blob(self, data: bytes | None) -> None:
        """A plain 200 GET answer (no auth: blob URLs are pre-signed, G9), or 404."""
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Last-Modified", LAST_MODIFIED)
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        fake = self.state
        token = self.path.split("?")[0].rpartition("/")[2]
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length)
        with fake._lock:
            fake.puts.append(
                {"token": token, "bytes": len(data), "auth": "Authorization" in self.headers}
            )
        announced = fake.blob_sizes.get(token, len(data))
        if fake.fail_uploads or token not in fake.upload_names or len(data) != announced:
            self._send_json({"code": 500, "message": "upload failed"}, 500)
            return
        fake.uploads[token] = data
        self._send_json({}, 200)

    # ---- API methods (named after the RPC)
    def _competition(self, body: dict[str, Any], need_rules: bool = False) -> FakeCompetition:
        slug = body.get("competitionName", "")
        comp = self.state.competitions.get(slug)
        if comp is None:
            raise _ApiError(404, f"Competition '{slug}' not found")
        if need_rules and not comp.rules_accepted:
            raise _ApiError(
                403,
                "You must accept this competition's rules before you'll be able to download files.",
            )
        return comp

    def _page(self, body: dict[str, Any], items: list[Any]) -> tuple[list[Any], str]:
        size = min(int(body.get("pageSize") or 20), self.state.max_page_size)
        start = int(body.get("pageToken") or 0)
        end = start + size
        return items[start:end], (str(end) if end < len(items) else "")

    def api_ListDataFiles(self, body: dict[str, Any]) -> None:
        comp = self._competition(body)
        files = [
            {"name": name, "totalBytes": len(data), "creationDate": CREATED}
            for name, data in comp.files.items()
        ]
        page, token = self._page(body, files)
        self._send_json({"files": page, "nextPageToken": token})

    def api_DownloadDataFiles(self, body: dict[str, Any]) -> None:
        comp = self._competition(body, need_rules=True)
        self._redirect(f"/_blobs/{comp.slug}/all/{comp.slug}.zip")

    def api_DownloadDataFile(self, body: dict[str, Any]) -> None:
        comp = self._competition(body, need_rules=True)
        name = body.get("fileName", "")
        if name not in comp.files:
            raise _ApiError(404, f"File '{name}' not found in competition '{comp.slug}'")
        served = f"{name}.zip" if name in comp.zipped_files else name
        self._redirect(f"/_blobs/{comp.slug}/file/{served}")

    def api_StartSubmissionUpload(self, body: dict[str, Any]) -> None:
        self._competition(body, need_rules=True)
        fake = self.state
        with fake._lock:
            token = f"blob{len(fake.upload_names) + 1}"
            fake.upload_names[token] = body.get("fileName", "")
        # createUrl must be absolute (G8): built from the Host header.
        self._send_json({"token": token, "createUrl": f"{self._base()}/_upload/{token}"})

    def api_CreateSubmission(self, body: dict[str, Any]) -> None:
        comp = self._competition(body, need_rules=True)
        fake = self.state
        token = body.get("blobFileTokens", "")
        data = fake.uploads.get(token)
        if data is None:
            raise _ApiError(400, f"Unknown blob token '{token}'")
        with fake._lock:
            sub = fake.new_submission(
                fake.upload_names[token], body.get("submissionDescription", ""), len(data)
            )
            header = data.decode(errors="replace").splitlines()[0] if data else ""
            if header.strip() == comp.submission_header:
                sub.public_score = fake.score
            else:
                sub.error_description = (
                    f"Submission file has header '{header}', expected '{comp.submission_header}'"
                )
        self._send_json({"message": f"Successfully submitted to {comp.title}", "ref": sub.ref})

    def api_ListSubmissions(self, body: dict[str, Any]) -> None:
        self._competition(body)
        fake = self.state
        rows = []
        with fake._lock:
            for sub in reversed(fake.submissions):  # newest first
                if sub.status == "PENDING":
                    if sub.polls_left > 0:
                        sub.polls_left -= 1
                    else:
                        sub.status = "ERROR" if sub.error_description else "COMPLETE"
                rows.append(
                    {
                        "ref": sub.ref,
                        "fileName": sub.file_name,
                        "date": CREATED,
                        "description": sub.description,
                        "status": sub.status,
                        "publicScore": sub.public_score if sub.status == "COMPLETE" else "",
                        "privateScore": "",
                        "totalBytes": sub.size,
                        "errorDescription": sub.error_description if sub.status == "ERROR" else "",
                        "teamName": fake.team_name,
                        "submittedBy": fake.username,
                    }
                )
        page, token = self._page(body, rows)
        self._send_json({"submissions": page, "nextPageToken": token})

    def api_GetLeaderboard(self, body: dict[str, Any]) -> None:
        comp = self._competition(body)
        fake = self.state
        rows = [(team_id, name, score) for team_id, name, score in comp.other_teams]
        scored = [float(s.public_score) for s in fake.submissions if s.status == "COMPLETE"]
        if scored:
            rows.append((1, fake.team_name, f"{max(scored):.5f}"))
        rows.sort(key=lambda row: -float(row[2]))
        entries = [
            {"teamId": team_id, "teamName": name, "submissionDate": CREATED, "score": score}
            for team_id, name, score in rows
        ]
        page, token = self._page(body, entries)
        self._send_json({"submissions": page, "nextPageToken": token})

    def api_GetSubmissionLimits(self, body: dict[str, Any]) -> None:
        self._competition(body)
        self._send_json({"numToday": 0, "numTotal": 0, "numAllowedNow": 5})


def demo_competitions() -> list[FakeCompetition]:
    """A small default world: one open competition and one whose rules are not accepted."""
    files = {
        "train.csv": b"id,rle_mask\n1,1 3\n2,\n",
        "sample_submission.csv": b"id,rle_mask\n1,\n2,\n",
        "train/images/0001.png": b"\x89PNG fake image bytes " * 40,
    }
    return [
        FakeCompetition(
            "demo-seg",
            "Demo Segmentation",
            files,
            zipped_files={"train.csv"},
            other_teams=[(2, "Bob", "0.90000"), (3, "Carol", "0.80000"), (4, "Dan", "0.10000")],
        ),
        FakeCompetition("locked-comp", "Locked Competition", dict(files), rules_accepted=False),
    ]


# ---- reusable pytest fixtures (import them into a test module to use them)


@pytest.fixture
def kaggle_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean Kaggle environment: own HOME, KAGGLE_CONFIG_DIR and TMPDIR; no stray KAGGLE_*."""
    import os
    import sys
    import tempfile

    for name in list(os.environ):
        if name.startswith("KAGGLE_") or name.upper() in ("HTTP_PROXY", "HTTPS_PROXY"):
            monkeypatch.delenv(name, raising=False)
    home, config, tmp = tmp_path / "home", tmp_path / "kaggle-config", tmp_path / "tmp"
    for path in (home, config, tmp):
        path.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    # KaggleApi.config_dir / .config are class attributes frozen at the first import (G2).
    module = sys.modules.get("kaggle.api.kaggle_api_extended")
    if module is not None:
        monkeypatch.setattr(module.KaggleApi, "config_dir", str(config))
        monkeypatch.setattr(module.KaggleApi, "config", str(config / "kaggle.json"))
    return tmp_path


@pytest.fixture
def fake_kaggle(kaggle_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKaggle]:
    """A running fake with the demo competitions, the client pointed at it, and credentials
    for its user in KAGGLE_USERNAME / KAGGLE_KEY."""
    from kagglesdk.kaggle_env import KaggleEnv, _env_to_endpoint

    fake = FakeKaggle(key="podium-test-key-" + hashlib.sha1(str(kaggle_home).encode()).hexdigest())
    for competition in demo_competitions():
        fake.add_competition(competition)
    with fake:
        monkeypatch.setitem(_env_to_endpoint, KaggleEnv.PROD, fake.url)
        monkeypatch.setenv("KAGGLE_USERNAME", fake.username)
        monkeypatch.setenv("KAGGLE_KEY", fake.key)
        yield fake
