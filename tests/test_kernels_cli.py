"""`podium push / submit kernel= / kernel-output` end to end: the real podium command in a
subprocess, the real kaggle client, the fake Kaggle server on loopback (seam B). The competition
is TGS Salt, declared a code competition on the command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT, run_podium
from kaggle_fake import FakeCompetition, FakeKaggle
from kaggle_fake_code import write_bundle

from podium import ledger

SLUG = "tgs-salt-identification-challenge"
KEY = "podium-kernels-secret-key-93d0"
KERNEL = "alice/tgs-infer"
FAST = ["poll_interval=0.05"]


@pytest.fixture
def world(kaggle_home, monkeypatch, tmp_path):
    fake = FakeKaggle(key=KEY)
    fake.add_competition(FakeCompetition(SLUG, "TGS Salt", {}, code_competition=True))
    fake.pending_polls = 1
    fake.dataset_pending_polls = 1
    with fake:
        monkeypatch.setenv("KAGGLE_USERNAME", fake.username)
        monkeypatch.setenv("KAGGLE_KEY", KEY)
        monkeypatch.setenv("PODIUM_FAKE_KAGGLE_URL", fake.url)
        monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests" / "kaggle_sitecustomize"))
        yield fake


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    runs = ["baseline/fold0", "baseline/fold1"]
    return write_bundle(tmp_path / "bundle", "alice", SLUG, runs=runs, name="tgs")


def podium(tmp_path: Path, *args: str, check: bool = True):
    common = [
        f"competition={SLUG}",
        "competition.code_competition=true",
        f"paths.runs_dir={tmp_path / 'runs'}",
    ]
    return run_podium(*args, *common, check=check, timeout=120)


def ledger_submissions(tmp_path: Path) -> list[dict]:
    return ledger.submissions(ledger.read(tmp_path / "runs" / SLUG / "ledger.jsonl"))


def error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_push_submit_and_collect(world: FakeKaggle, bundle: Path, tmp_path: Path):
    outputs = []
    pushed = podium(tmp_path, "push", "bundle=" + str(bundle), "message=first", *FAST)
    outputs.append(pushed.stdout + pushed.stderr)
    assert "dataset alice/tgs-bundle version 1 (created), ready" in pushed.stdout
    assert f"kernel {KERNEL} version 1 pushed" in pushed.stdout
    next_step = re.search(r"next: (podium submit .*)", pushed.stdout).group(1)
    assert f"kernel={KERNEL} version=1 wait=true bundle={bundle}" in next_step
    sent = world.kernels[KERNEL].versions[0].request
    assert sent["enableInternet"] is False and sent["datasetDataSources"] == ["alice/tgs-bundle"]

    again = podium(tmp_path, "push", f"bundle={bundle}", "message=v2", "wait=true", *FAST)
    outputs.append(again.stdout + again.stderr)
    assert "version 2 (new version)" in again.stdout and f"{KERNEL} version 2 ran" in again.stdout
    assert world.datasets["alice/tgs-bundle"].versions[1].notes == "v2"

    submitted = podium(
        tmp_path, "submit", f"kernel={KERNEL}", "version=2", "wait=true", f"bundle={bundle}",
        "message=two folds", *FAST,
    )  # fmt: skip
    outputs.append(submitted.stdout + submitted.stderr)
    assert f"submitted {KERNEL} version 2 to {SLUG}: ref 1001" in submitted.stdout
    assert "public score 0.75" in submitted.stdout
    [record] = ledger_submissions(tmp_path)
    assert (record["kernel"], record["version"], record["public_score"]) == (KERNEL, 2, 0.75)
    assert record["runs"] == ["baseline/fold0", "baseline/fold1"]  # from bundle.json
    assert record["status"] == "COMPLETE" and record["message"] == "two folds"

    out = tmp_path / "kernel-out"
    collected = podium(tmp_path, "kernel-output", f"kernel={KERNEL}", f"out={out}", "wait=true")
    outputs.append(collected.stdout + collected.stderr)
    assert "latest run COMPLETE" in collected.stdout
    assert (out / "submission.csv").read_bytes() == world.kernel_outputs["submission.csv"]
    assert (out / "tgs-infer.log").is_file()

    # No credential in anything podium printed or wrote.
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "kaggle-config" not in p.parts]
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path
    assert all(KEY not in text for text in outputs)


@pytest.mark.parametrize(
    "reason", ["Notebook Threw Exception", "Submission CSV Not Found", "Notebook Timeout"]
)
def test_failed_code_submission_is_one_line_and_recorded(
    world: FakeKaggle, bundle: Path, tmp_path: Path, reason: str
):
    podium(tmp_path, "push", f"bundle={bundle}", *FAST)
    world.code_submission_error = reason
    proc = podium(
        tmp_path, "submit", f"kernel={KERNEL}", "version=1", "wait=true", "runs=[r1]", *FAST,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert error_line(proc) == (
        f"podium: error: submission 1001 to '{SLUG}' failed on Kaggle: {reason}"
    )
    [record] = ledger_submissions(tmp_path)
    assert record["status"] == "ERROR" and record["runs"] == ["r1"] and record["version"] == 1


def test_failed_kernel_run_brings_back_its_log(world: FakeKaggle, bundle: Path, tmp_path: Path):
    world.kernel_failure = "ModuleNotFoundError: No module named 'timm'"
    podium(tmp_path, "push", f"bundle={bundle}", *FAST)
    out = tmp_path / "kernel-out"
    proc = podium(
        tmp_path, "kernel-output", f"bundle={bundle}", f"out={out}", "wait=true", *FAST,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert error_line(proc) == (
        f"podium: error: kernel {KERNEL} ended ERROR on Kaggle: "
        "ModuleNotFoundError: No module named 'timm'"
    )
    assert "predicting" in (out / "tgs-infer.log").read_text()  # the log, to see why
    assert "latest run ERROR" in proc.stdout


def test_usage_mistakes_are_one_line(world: FakeKaggle, bundle: Path, tmp_path: Path):
    for version in ("abc", "1.5"):
        proc = podium(tmp_path, "submit", f"kernel={KERNEL}", f"version={version}", check=False)
        assert proc.returncode == 2 and "whole number" in error_line(proc), proc.stderr
    csv = tmp_path / "submission.csv"
    csv.write_text("id,rle_mask\n")
    proc = podium(tmp_path, "submit", f"file={csv}", check=False)
    line = error_line(proc)
    assert proc.returncode == 2 and "is a code competition" in line
    assert "podium push" in line and "kernel=USER/KERNEL version=N" in line
    assert world.calls == []  # nothing reached Kaggle

    meta_file = bundle / "kernel" / "kernel-metadata.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({k: v for k, v in meta.items() if k != "enable_internet"}))
    proc = podium(tmp_path, "push", f"bundle={bundle}", check=False)
    assert proc.returncode == 1 and '"enable_internet": false' in error_line(proc)
    meta_file.write_text(json.dumps(meta))

    world.create_dataset_error = "The requested title is already in use"
    proc = podium(tmp_path, "push", f"bundle={bundle}", *FAST, check=False)
    assert proc.returncode == 1
    assert error_line(proc) == (
        "podium: error: Kaggle refused dataset alice/tgs-bundle: "
        "The requested title is already in use"
    )
    assert world.kernels == {}  # the kernel is not pushed onto a dataset that is not there
