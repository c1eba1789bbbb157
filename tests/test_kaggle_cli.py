"""`podium download / validate / submit / submissions / leaderboard` end to end: the real podium
command in a subprocess, the real kaggle client, a fake Kaggle server on loopback (seam B)."""

from __future__ import annotations

import kaggle_layouts
import pytest
from conftest import ROOT, run_podium
from kaggle_fake import FakeCompetition, FakeKaggle

from podium import ledger

SLUG = "tgs-salt-identification-challenge"
KEY = "podium-cli-secret-key-5f1b"


def tgs_files() -> dict[str, bytes]:
    """TGS Salt as Kaggle serves it: train.zip and test.zip inside the competition archive."""
    return kaggle_layouts.tgs_salt([f"tr{i}" for i in range(6)], [f"te{i}" for i in range(3)])


@pytest.fixture
def kaggle_world(kaggle_home, monkeypatch, tmp_path):
    fake = FakeKaggle(key=KEY)
    fake.add_competition(
        FakeCompetition(SLUG, "TGS Salt", tgs_files(), other_teams=[(2, "Bob", "0.90000")])
    )
    fake.pending_polls = 2
    with fake:
        monkeypatch.setenv("KAGGLE_USERNAME", fake.username)
        monkeypatch.setenv("KAGGLE_KEY", KEY)
        monkeypatch.setenv("PODIUM_FAKE_KAGGLE_URL", fake.url)
        monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests" / "kaggle_sitecustomize"))
        yield fake


def test_kaggle_loop_through_the_podium_command(kaggle_world, tmp_path):
    fake = kaggle_world
    paths = [f"competition={SLUG}", f"paths.data_dir={tmp_path / 'data'}",
             f"paths.runs_dir={tmp_path / 'runs'}"]  # fmt: skip
    outputs = []

    def podium(*args, check=True):
        proc = run_podium(*args, *paths, check=check, timeout=120)
        outputs.append(proc.stdout + proc.stderr)
        return proc

    podium("download")
    data = tmp_path / "data" / SLUG
    assert (data / "train.csv").is_file() and len(
        list((data / "test" / "images").glob("*.png"))
    ) == 3
    podium("download")  # complete: a second call succeeds without breaking anything
    assert (data / "depths.csv").read_text().startswith("id,z")

    good = tmp_path / "good.csv"
    good.write_text("id,rle_mask\nte0,1 5\nte1,\nte2,10 3\n")
    podium("validate", f"file={good}")
    proc = podium("submit", f"file={good}", "message=first try", "wait=true", "poll_interval=0.1")
    assert "public score 0.75" in proc.stdout
    record = [r for r in ledger.read(tmp_path / "runs" / SLUG / "ledger.jsonl")
              if r.get("kind") == "submission"]  # fmt: skip
    assert len(record) == 1 and record[0]["public_score"] == 0.75 and record[0]["ref"]

    # A malformed file is refused before anything is uploaded.
    bad = tmp_path / "bad.csv"
    bad.write_text("id,rle_mask\nte0,1 5\nte1,3\n")
    uploads_before = len(fake.api_calls("StartSubmissionUpload"))
    proc = podium("submit", f"file={bad}", "message=broken", check=False)
    assert proc.returncode != 0 and "not submitted" in proc.stderr
    assert "te2" in proc.stderr or "row" in proc.stderr
    assert len(fake.api_calls("StartSubmissionUpload")) == uploads_before

    listing = podium("submissions").stdout
    assert "first try" in listing and "0.75" in listing

    # Submitted without waiting: `podium submissions` later brings its score into the ledger.
    podium("submit", f"file={good}", "message=no wait")
    for _ in range(3):
        podium("submissions")
        merged = ledger.submissions(ledger.read(tmp_path / "runs" / SLUG / "ledger.jsonl"))
        if merged[-1].get("public_score") is not None:
            break
    assert merged[-1]["message"] == "no wait" and merged[-1]["public_score"] == 0.75
    board = podium("leaderboard").stdout
    assert "Bob" in board and "your position" in board

    # No credential in anything podium printed or wrote.
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "kaggle-config" not in p.parts]
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path
    assert all(KEY not in text for text in outputs)


def test_rules_not_accepted_is_one_line_with_the_rules_url(kaggle_world, tmp_path):
    kaggle_world.competitions[SLUG].rules_accepted = False
    proc = run_podium("download", f"competition={SLUG}", f"paths.data_dir={tmp_path}",
                      check=False, timeout=120)  # fmt: skip
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"kaggle.com/competitions/{SLUG}/rules" in lines[0], proc.stderr
