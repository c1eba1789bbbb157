"""The Kaggle commands: `podium submit`, `podium submissions`, `podium leaderboard`.

A file is validated locally before it is uploaded (a malformed file never costs one of the day's
submissions), and every submission goes into the competition's ledger with the runs behind it;
`podium submissions` brings the ledger's scores up to date.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from podium import ledger
from podium.competition import load_competition
from podium.config import ConfigError
from podium.io import PodiumError
from podium.kaggle.client import preflight
from podium.kaggle.competitions import leaderboard, submissions, submit
from podium.submission import validate_submission
from podium.tables import render_table

__all__ = ["submit_command", "submissions_command", "leaderboard_command", "format_table"]


def submit_command(cfg: DictConfig) -> int:
    """Validate `cfg.file`, submit it, and record it in the ledger (runs behind it, score)."""
    slug = kaggle_slug(cfg)
    if not cfg.file:
        raise ConfigError("submit needs file=PATH (the submission CSV)")
    path = Path(cfg.file).resolve()
    if not path.is_file():
        raise PodiumError(f"file={cfg.file}: no such file")
    problems = validate_submission(load_competition(cfg), path)
    if problems:
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        raise PodiumError(f"{path}: not submitted, {len(problems)} problem(s) found (listed above)")
    preflight()
    result = submit(
        slug, path, cfg.message, wait=bool(cfg.wait), poll_interval=float(cfg.poll_interval)
    )
    ledger.record_submission(
        ledger.ledger_path(cfg.paths.runs_dir, cfg.competition.name),
        ref=result["ref"],
        file=str(path),
        sha256=result["sha256"],
        message=cfg.message,
        runs=[str(r) for r in cfg.runs],
        status=result["status"],
        public_score=result["public_score"],
    )
    score = result["public_score"]
    print(
        f"submitted {path.name} to {slug}: ref {result['ref']}, status {result['status']}"
        + (f", public score {score}" if score is not None else "")
    )
    return 0


def submissions_command(cfg: DictConfig) -> int:
    """List your submissions, and update the scores the ledger has for them."""
    rows = submissions(kaggle_slug(cfg))
    # Scores arrive after submitting: bring the ledger's submissions up to date.
    path = ledger.ledger_path(cfg.paths.runs_dir, cfg.competition.name)
    known = {str(s["ref"]): s for s in ledger.submissions(ledger.read(path))}
    for row in rows:
        old = known.get(str(row["ref"]))
        news = {k: row[k] for k in ("status", "public_score", "private_score")}
        if old is not None and any(old.get(k) != v for k, v in news.items() if v is not None):
            ledger.record_submission(path, ref=row["ref"], **news)
    columns = ["ref", "date", "status", "public_score", "private_score", "description"]
    print(format_table(rows, columns) if rows else "no submissions yet")
    return 0


def leaderboard_command(cfg: DictConfig) -> int:
    """The top `cfg.top` rows of the leaderboard, and your own position."""
    rows, own = leaderboard(kaggle_slug(cfg), int(cfg.top))
    columns = ["rank", "team_name", "score", "submission_date"]
    print(format_table(rows, columns))
    if own is not None and own not in rows:
        print("...\n" + format_table([own], columns).splitlines()[-1])
    if own is not None:
        print(f"your position: {own['rank']}")
    return 0


def kaggle_slug(cfg: DictConfig) -> str:
    """The competition's Kaggle slug, or a ConfigError saying where to set it."""
    slug = cfg.competition.kaggle
    if not slug:
        raise ConfigError(
            f"competition {cfg.competition.name} has no Kaggle slug "
            "(competition.kaggle in its competition.yaml)"
        )
    return slug


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Kaggle's listings (dicts) as a plain text table of `columns`."""
    return render_table(columns, [[row.get(c) for c in columns] for row in rows], style="plain")
