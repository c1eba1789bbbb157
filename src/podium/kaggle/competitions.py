"""Competition calls: data files, submissions, the leaderboard, and submitting a file.

kaggle 2.2.4 reports a failed upload as a normal return value (``ref 0``) and hides the page token
of several listings; these functions check the one and page through the other.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from podium.kaggle.client import (
    PAGE_SIZE,
    KaggleError,
    Session,
    check_slug,
    competition_api,
    kaggle_errors,
    open_session,
    paged,
    poll_until,
    quiet_stdout,
)
from podium.ledger import hash_file

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# listing


def list_files(slug: str) -> list[dict[str, Any]]:
    """The competition's data files as ``[{"name": str, "size": int}, ...]`` (all pages)."""
    check_slug(slug)
    from kagglesdk.competitions.types.competition_api_service import ApiListDataFilesRequest

    session = open_session()
    with (
        kaggle_errors("listing files", slug, session.creds),
        competition_api(session) as competitions,
    ):
        files = _listing(competitions.list_data_files, ApiListDataFilesRequest, slug, "files")
        return [{"name": f.name, "size": int(f.total_bytes or 0)} for f in files]


def competition_info(slug: str) -> dict[str, Any] | None:
    """What Kaggle's competition listing says about ``slug`` (title, deadline and
    ``code_competition``: submissions come from notebooks only), or None if it is not listed."""
    check_slug(slug)
    from kagglesdk.competitions.types.competition_api_service import ApiListCompetitionsRequest
    from kagglesdk.competitions.types.competition_enums import CompetitionListTab

    session = open_session()
    with (
        kaggle_errors("looking up the competition", slug, session.creds),
        competition_api(session) as competitions,
    ):

        def fetch(token: str) -> tuple[list[Any], str]:
            request = ApiListCompetitionsRequest()
            # As the client does: every tab, so closed and entered competitions are found too.
            request.group = CompetitionListTab.COMPETITION_LIST_TAB_EVERYTHING
            request.search = slug
            request.page_size = PAGE_SIZE
            request.page_token = token
            response = competitions.list_competitions(request)
            return response.competitions, response.next_page_token

        for comp in paged(fetch, max_pages=10):
            # The listing's ref is the competition URL (.../competitions/<slug>).
            if (comp.ref or "").rstrip("/").rpartition("/")[2] == slug:
                return {
                    "title": comp.title,
                    "deadline": _iso(comp.deadline),
                    "code_competition": bool(comp.is_kernels_submissions_only),
                }
    return None


def _listing(method: Any, request_type: type, slug: str, items: str) -> Iterator[Any]:
    """Every item of a token-paged competition listing (``items``: the response's list)."""

    def fetch(token: str) -> tuple[list[Any], str]:
        request = request_type()
        request.competition_name = slug
        request.page_size = PAGE_SIZE
        request.page_token = token
        response = method(request)
        return getattr(response, items), response.next_page_token

    return paged(fetch)


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


def _iter_submissions(session: Session, slug: str) -> Iterator[dict[str, Any]]:
    from kagglesdk.competitions.types.competition_api_service import ApiListSubmissionsRequest

    with competition_api(session) as competitions:

        def fetch(token: str) -> tuple[list[Any], str]:
            request = ApiListSubmissionsRequest()
            request.competition_name = slug
            request.page_size = PAGE_SIZE
            if token:
                request.page_token = token
            else:
                request.page = 1  # what the client sends for the first page
            response = competitions.list_submissions(request)
            return response.submissions, response.next_page_token

        for sub in paged(fetch):
            yield _submission_row(sub)


def submissions(slug: str) -> list[dict[str, Any]]:
    """The current user's submissions to the competition, newest first (all pages).

    Keys: ref, date, file_name, description, status (PENDING/COMPLETE/ERROR), public_score,
    private_score (floats or None), error_description, team_name, submitted_by.
    """
    check_slug(slug)
    session = open_session()
    with kaggle_errors("listing submissions", slug, session.creds):
        return list(_iter_submissions(session, slug))


def leaderboard(slug: str, top: int = 20) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The ``top`` leaderboard rows and the current user's own row (None if not on the board).

    Rows have rank, team_id, team_name, score (float or None) and submission_date. The user's
    team is recognised by the team name on their submissions, else by their username.
    """
    check_slug(slug)
    if top < 0:
        raise KaggleError(f"top must be >= 0, got {top}")
    from kagglesdk.competitions.types.competition_api_service import ApiGetLeaderboardRequest

    session = open_session()
    with kaggle_errors("reading the leaderboard", slug, session.creds):
        own_names = {s["team_name"] for s in _first(_iter_submissions(session, slug), 50)}
        own_names = {n.casefold() for n in own_names if n} or {session.username.casefold()}
        rows: list[dict[str, Any]] = []
        own: dict[str, Any] | None = None
        with competition_api(session) as competitions:
            method = competitions.get_leaderboard
            entries = _listing(method, ApiGetLeaderboardRequest, slug, "submissions")
            for rank, entry in enumerate(entries, start=1):
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
    check_slug(slug)
    file = Path(file)
    if not file.is_file():
        raise KaggleError(f"submission file not found: {file}")
    if file.stat().st_size == 0:
        raise KaggleError(f"submission file is empty: {file}")
    sha256 = hash_file(file)
    session = open_session()
    with kaggle_errors("submitting", slug, session.creds):
        with quiet_stdout() as printed:
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
        info.update(wait_for_score(session, slug, result.ref, poll_interval, timeout))
    return info


class SubmissionFailed(KaggleError):
    """Kaggle scored the submission as ERROR; ``description`` is Kaggle's reason."""

    def __init__(self, slug: str, ref: int, description: str) -> None:
        super().__init__(f"submission {ref} to '{slug}' failed on Kaggle: {description}")
        self.ref, self.description = ref, description


def await_score(
    slug: str, ref: int, poll_interval: float = 5.0, timeout: float = 3600
) -> dict[str, Any]:
    """Wait for an earlier submission (file or code) to be scored; see :func:`wait_for_score`."""
    check_slug(slug)
    return wait_for_score(open_session(), slug, ref, poll_interval, timeout)


def wait_for_score(
    session: Session, slug: str, ref: int, poll_interval: float, timeout: float
) -> dict[str, Any]:
    """Poll the submission listing until submission ``ref`` is scored (status, public_score,
    error_description); ERROR is a :class:`SubmissionFailed` with Kaggle's own description.
    File and code submissions alike end up in this listing."""

    def scored() -> dict[str, Any] | None:
        with kaggle_errors(f"waiting for submission {ref}", slug, session.creds):
            row = next((s for s in _iter_submissions(session, slug) if s["ref"] == ref), None)
        if row is not None and row["status"] == "COMPLETE":
            return {k: row[k] for k in ("status", "public_score", "error_description")}
        if row is not None and row["status"] == "ERROR":
            raise SubmissionFailed(slug, ref, row["error_description"] or "no description given")
        return None

    return poll_until(
        scored,
        poll_interval,
        timeout,
        still=f"submission {ref} to '{slug}' was still pending",
        later=f"check later with: podium submissions competition={slug}",
    )
