"""The Kaggle commands: `podium submit`, `podium submissions`, `podium leaderboard`, and for
code competitions `podium push` and `podium kernel-output`.

A file is validated locally before it is uploaded (a malformed file never costs one of the day's
submissions), and every submission, a file or a kernel version, goes into the competition's
ledger with the runs behind it; `podium submissions` brings the ledger's scores up to date.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from podium import ledger
from podium.competition import load_competition
from podium.config import ConfigError
from podium.io import PodiumError
from podium.kaggle import kernels
from podium.kaggle.client import preflight
from podium.kaggle.competitions import (
    SubmissionFailed,
    await_score,
    leaderboard,
    submissions,
    submit,
)
from podium.kaggle.datasets import push_dataset, read_metadata
from podium.submission import validate_submission
from podium.tables import render_table

__all__ = [
    "submit_command",
    "submissions_command",
    "leaderboard_command",
    "push_command",
    "kernel_output_command",
    "format_table",
]


def submit_command(cfg: DictConfig) -> int:
    """Submit `cfg.file` (validated first) or, for a code competition, version `cfg.version`
    of `cfg.kernel`; record it in the ledger (runs behind it, status, score)."""
    slug = kaggle_slug(cfg)
    if cfg.kernel or cfg.version is not None:
        if cfg.file:
            raise ConfigError("submit takes file=PATH or kernel=USER/SLUG version=N, not both")
        return _submit_kernel(cfg, slug)
    if cfg.competition.code_competition:
        raise ConfigError(
            f"{cfg.competition.name} is a code competition: Kaggle scores a notebook, not a "
            f"file. Export a bundle (podium export), push it (podium push competition="
            f"{cfg.competition.name} bundle=DIR), then submit the kernel version it prints "
            f"(podium submit competition={cfg.competition.name} kernel=USER/KERNEL version=N)"
        )
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
    result = submit(slug, path, cfg.message)
    recorded = {"file": str(path), "sha256": result["sha256"], "runs": [str(r) for r in cfg.runs]}
    outcome = _await_and_record(cfg, slug, result["ref"], recorded)
    _print_submitted(path.name, slug, result["ref"], outcome)
    return 0


def _submit_kernel(cfg: DictConfig, slug: str) -> int:
    bundle = read_bundle(cfg.bundle) if cfg.bundle else None
    kernel = cfg.kernel or (bundle or {}).get("kernel")
    if not kernel:
        raise ConfigError("submit version=N needs kernel=USER/SLUG (or bundle=DIR naming it)")
    version = kernel_version(cfg.version)
    runs = bundle["runs"] if bundle is not None else [str(r) for r in cfg.runs]
    preflight()
    result = kernels.submit_code(slug, kernel, version, cfg.message)
    recorded = {"kernel": kernel, "version": version, "runs": runs}
    outcome = _await_and_record(cfg, slug, result["ref"], recorded)
    _print_submitted(f"{kernel} version {version}", slug, result["ref"], outcome)
    return 0


def _await_and_record(
    cfg: DictConfig, slug: str, ref: int, recorded: dict[str, Any]
) -> dict[str, Any]:
    """With `cfg.wait`, wait for the score; record the submission once, as it ended (scored,
    failed on Kaggle or still pending), even when the wait fails."""
    outcome: dict[str, Any] = {"status": "PENDING", "public_score": None}
    try:
        if cfg.wait:
            timeout = float(cfg.wait_timeout)
            outcome.update(await_score(slug, ref, float(cfg.poll_interval), timeout))
    except SubmissionFailed:
        outcome["status"] = "ERROR"
        raise
    finally:
        ledger.record_submission(
            ledger.ledger_path(cfg.paths.runs_dir, cfg.competition.name),
            ref=ref,
            message=cfg.message,
            status=outcome["status"],
            public_score=outcome["public_score"],
            **recorded,
        )
    return outcome


def _print_submitted(what: str, slug: str, ref: int, outcome: dict[str, Any]) -> None:
    score = outcome["public_score"]
    print(
        f"submitted {what} to {slug}: ref {ref}, status {outcome['status']}"
        + (f", public score {score}" if score is not None else "")
    )


def kernel_version(value: Any) -> int:
    """The `version=` of a code submission: Kaggle takes a whole number, nothing else."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if value is None:
        raise ConfigError(
            "submit kernel=USER/SLUG needs version=N (the number podium push printed)"
        )
    raise ConfigError(
        f"version={value}: the kernel version must be a whole number >= 1, e.g. version=3 "
        "(the number podium push printed)"
    )


def read_bundle(folder: str | Path) -> dict[str, Any]:
    """`bundle.json` of a bundle folder (podium export): competition, runs, kernel, dataset."""
    path = Path(folder) / "bundle.json"
    if not path.is_file():
        raise ConfigError(f"bundle={folder}: no bundle.json there (make one with podium export)")
    try:
        bundle = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PodiumError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(bundle, dict):
        raise PodiumError(f"{path}: expected a JSON object")
    bundle["runs"] = [str(r) for r in bundle.get("runs") or []]
    return bundle


def push_command(cfg: DictConfig) -> int:
    """Push a bundle: its dataset (created or versioned, waited for until ready), then its
    kernel; print both versions and the `podium submit` line for the kernel version."""
    slug = kaggle_slug(cfg)
    if not cfg.bundle:
        raise ConfigError("push needs bundle=DIR (a folder made by podium export)")
    bundle_dir = Path(cfg.bundle).resolve()
    bundle = read_bundle(bundle_dir)
    if bundle.get("competition") not in (None, slug, cfg.competition.name):
        raise ConfigError(
            f"bundle={cfg.bundle} was exported for {bundle['competition']}, not {slug}"
        )
    if not cfg.run and cfg.wait:
        raise ConfigError("run=false saves the kernel without running it: nothing to wait for")
    dataset_ref = read_metadata(bundle_dir / "dataset", "dataset-metadata.json")["id"]
    check_offline_kernel(bundle_dir / "kernel", slug, dataset_ref)
    preflight()
    poll, timeout = float(cfg.poll_interval), float(cfg.wait_timeout)
    dataset = push_dataset(bundle_dir / "dataset", cfg.message, True, poll, timeout)
    action = "created" if dataset["created"] else "new version"
    print(f"dataset {dataset['ref']} version {dataset['version']} ({action}), ready")
    kernel = kernels.push_kernel(bundle_dir / "kernel", run=bool(cfg.run))
    ref, version = kernel["ref"], kernel["version"]
    note = "" if cfg.run else " (saved without running it)"
    print(f"kernel {ref} version {version} pushed{note}: {kernel['url']}")
    if cfg.wait:
        kernels.wait_for_kernel(ref, poll, timeout)
        print(f"kernel {ref} version {version} ran: COMPLETE")
    print(
        f"next: podium submit competition={cfg.competition.name} kernel={ref} "
        f"version={version} wait=true bundle={bundle_dir}"
    )
    return 0


def check_offline_kernel(folder: Path, slug: str, dataset_ref: str) -> None:
    """What a code competition demands of the kernel, checked before anything is uploaded:
    internet off (the client turns it on when the key is missing), the competition's data
    attached (the notebook reads the hidden test set from /kaggle/input/<slug>) and the
    bundle's dataset attached (its weights and wheels)."""
    path = folder / "kernel-metadata.json"
    meta = read_metadata(folder, path.name)
    if meta.get("enable_internet") is not False:
        raise PodiumError(
            f'{path}: set "enable_internet": false (code competitions run notebooks offline, '
            "and the kaggle client turns internet on when the key is missing)"
        )
    for key, needed in (("competition_sources", slug), ("dataset_sources", dataset_ref)):
        if needed not in (meta.get(key) or []):
            raise PodiumError(f'{path}: "{key}" must list "{needed}"')


def kernel_output_command(cfg: DictConfig) -> int:
    """The log and output files of a kernel's latest run (with `wait`, once it has finished)."""
    kernel = cfg.kernel or (read_bundle(cfg.bundle).get("kernel") if cfg.bundle else None)
    if not kernel:
        raise ConfigError("kernel-output needs kernel=USER/SLUG")
    preflight()
    if cfg.wait:  # a failed run is waited for too: its log is what explains the failure
        poll, timeout = float(cfg.poll_interval), float(cfg.wait_timeout)
        status = kernels.wait_for_kernel(kernel, poll, timeout, raise_on_failure=False)
    else:
        status = kernels.kernel_status(kernel)
    slug = str(kernel).rpartition("/")[2]
    default_out = Path(cfg.paths.runs_dir) / cfg.competition.name / "kernel-output" / slug
    out = Path(cfg.out) if cfg.out else default_out
    paths = kernels.kernel_output(kernel, out)
    print(f"kernel {kernel}: latest run {status['status']}")
    for path in paths:
        print(f"  {path}")
    if not paths:
        print(f"  no output yet (written to {out} once the run has finished)")
    if status["status"] in kernels.FAILED_STATUSES:
        reason = status["failure_message"] or "no failure message given"
        raise PodiumError(f"kernel {kernel} ended {status['status']} on Kaggle: {reason}")
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
