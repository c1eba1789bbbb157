"""The training loop end to end on the tiny demo: run directory, resume, kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import torch
from conftest import ROOT, TINY_DEMO, TINY_TRAIN, podium_env, run_podium

from podium import cli, ledger

SUMMARY_FIELDS = {
    "competition", "fold", "seed", "metric", "best_score", "best_epoch", "epochs_run",
    "train_images_per_s", "duration_s", "git_sha", "podium_version", "experiment_name",
}  # fmt: skip
CHECKPOINT_KEYS = {"model", "ema", "optimizer", "scheduler", "scaler", "rng", "state", "config"}


def test_train_writes_the_run_directory(demo_paths, demo_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_podium(
        "train", *TINY_DEMO, *TINY_TRAIN, *demo_paths, "trainer.max_epochs=3",
        "trainer.limit_train_batches=2", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    for name in ("config.yaml", "metrics.csv", "oof.npz", "summary.json", "podium.log"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary.keys() >= SUMMARY_FIELDS
    assert summary["epochs_run"] == 3 and summary["competition"] == "demo_shapes"
    assert 0.0 <= summary["best_score"] <= 1.0 and 1 <= summary["best_epoch"] <= 3
    for name in ("last", "best"):
        checkpoint = torch.load(run_dir / "checkpoints" / f"{name}.pt", weights_only=True)
        assert checkpoint.keys() >= CHECKPOINT_KEYS
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["state"]["epoch"] == 3
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("epoch,")
    # OOF covers exactly the validation fold, in order, with probabilities as uint8.
    folds = dict(line.split(",") for line in (demo_data_dir / "folds.csv").read_text().split()[1:])
    oof = np.load(run_dir / "oof.npz")
    assert sorted(oof["ids"].tolist()) == sorted(i for i, f in folds.items() if f == "0")
    assert oof["prob_0"].dtype == np.uint8 and oof["prob_0"].shape == (1, 64, 64)
    # The resolved config has absolute paths and the ledger got the run.
    assert str(demo_data_dir) in (run_dir / "config.yaml").read_text()
    runs_dir = demo_paths[1].split("=", 1)[1]
    records = ledger.read(ledger.ledger_path(runs_dir, "demo_shapes"))
    assert any(r["run_dir"] == str(run_dir) and r["kind"] == "run" for r in records)


def final_weights(run_dir):
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    return checkpoint["model"], checkpoint["ema"], checkpoint["optimizer"]["state"]


def assert_identical(a_dir, b_dir):
    for a, b in zip(final_weights(a_dir), final_weights(b_dir), strict=True):
        flat_a, flat_b = _tensors(a), _tensors(b)
        assert flat_a.keys() == flat_b.keys()
        for key in flat_a:
            assert torch.equal(flat_a[key], flat_b[key]), key


def _tensors(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out |= _tensors(value, f"{prefix}/{key}")
    return out


def test_resume_gives_bit_identical_weights(demo_paths, tmp_path):
    """2 epochs straight == 1 epoch, then `resume` to 2. The constant schedule keeps the first
    epoch's learning rates independent of max_epochs (a cosine schedule stretches with it)."""
    common = [*TINY_DEMO, *TINY_TRAIN, *demo_paths, "trainer.deterministic=true",
              "scheduler=constant", "trainer.limit_train_batches=2"]  # fmt: skip
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert cli.main(["train", *common, "trainer.max_epochs=2", f"hydra.run.dir={straight}"]) == 0
    assert cli.main(["train", *common, "trainer.max_epochs=1", f"hydra.run.dir={split}"]) == 0
    assert cli.main(["train", f"resume={split}", "trainer.max_epochs=2"]) == 0
    summary = json.loads((split / "summary.json").read_text())
    assert summary["epochs_run"] == 2
    assert len((split / "metrics.csv").read_text().splitlines()) == 3
    assert_identical(straight, split)


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(demo_paths, tmp_path):
    common = [*TINY_DEMO, *TINY_TRAIN, *demo_paths, "trainer.deterministic=true",
              "trainer.max_epochs=3", "trainer.limit_train_batches=null"]  # fmt: skip
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run_podium("train", *common, f"hydra.run.dir={reference}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "podium.cli", "train", *common, f"hydra.run.dir={killed}"],
        env=podium_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "last.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before epoch 1 ended"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # now inside epoch 2
    assert proc.wait() == -signal.SIGKILL
    epoch = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)["state"]["epoch"]
    assert epoch < 3, "the kill came too late to interrupt training"
    run_podium("train", f"resume={killed}")
    assert_identical(reference, killed)


def test_experiment_name_defaults_to_the_overrides(demo_paths, tmp_path):
    run_dir = tmp_path / "named"
    overrides = [o for o in TINY_DEMO if o != "experiment=demo"]
    cli.main(["train", *overrides, *TINY_TRAIN, *demo_paths, "model=unet_mobilenet",
              "model.encoder_weights=null", "trainer.limit_train_batches=1",
              f"hydra.run.dir={run_dir}", "seed=3"])  # fmt: skip
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["seed"] == 3
    assert "model=unet_mobilenet" in summary["experiment_name"]
    assert "seed" not in summary["experiment_name"]  # seeds and folds do not split experiments


def test_multirun_sweeps_seeds_into_separate_runs(demo_paths, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_podium(
        "train", "-m", "seed=0,1", *TINY_DEMO, *TINY_TRAIN, *demo_paths,
        "trainer.limit_train_batches=1", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert [s["seed"] for s in summaries] == [0, 1], proc.stdout
    assert len({s["run_dir"] for s in summaries}) == 2
    assert len({s["config_hash"] for s in summaries}) == 1  # one experiment: seeds aside


def test_train_without_data_says_to_download_it(tmp_path, capsys):
    code = cli.main(["train", *TINY_DEMO, *TINY_TRAIN, f"paths.data_dir={tmp_path / 'none'}",
                     f"hydra.run.dir={tmp_path / 'run'}"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "no data for competition demo_shapes; run `podium download competition=" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # a run that never started leaves no folder behind


def test_cpu_training_keeps_freed_memory_on_glibc():
    import platform

    from podium.run_state import retain_freed_memory

    assert retain_freed_memory() == (platform.libc_ver()[0] == "glibc")
