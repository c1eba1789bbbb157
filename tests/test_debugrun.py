"""`podium train debug=true`: every stage of the loop on a few images of the tiny demo, timed,
written where the results of real runs never see it; and it stops at the stage that is broken."""

from __future__ import annotations

import json
import re

import pytest
from conftest import TINY_DEMO, TINY_TRAIN, run_podium

from podium.config import ConfigError, compose_config, expand_flag_groups

STAGES = ("train", "tune", "predict", "validate")
# TINY_TRAIN without its amounts: the debug group decides those
DEBUG_TRAIN = [a for a in TINY_TRAIN if not a.startswith(("trainer.max_epochs", "trainer.limit"))]


def debug_command(demo_paths, root, *extra: str):
    """The debug run on the tiny demo's data, with everything else under `root` (its runs/,
    its debug_runs/)."""
    data_dir = demo_paths[0]
    return run_podium(
        "train", "debug=true", *TINY_DEMO, *DEBUG_TRAIN, data_dir, f"paths.root_dir={root}",
        *extra, check=False,
    )  # fmt: skip


def stage_times(stdout: str) -> dict[str, tuple[float, str]]:
    found = re.findall(r"^debug: (\w+) +([\d.]+) s(.*)$", stdout, flags=re.M)
    return {name: (float(seconds), note.strip()) for name, seconds, note in found}


@pytest.mark.slow
def test_debug_runs_every_stage_timed_outside_the_runs_folder(demo_paths, tmp_path):
    proc = debug_command(demo_paths, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    times = stage_times(proc.stdout)
    assert list(times) == [*STAGES, "total"], proc.stdout
    assert "FAILED" not in proc.stdout
    assert times["total"][0] >= sum(times[s][0] for s in STAGES) - 0.5  # a total, not a stage
    assert "2 steps, 1 validation on 4 images" in times["train"][1]

    # The run is under debug_runs/, with its own ledger; runs/ (podium runs, globs) is untouched.
    assert not (tmp_path / "runs").exists()
    (run_dir,) = (tmp_path / "debug_runs" / "demo_shapes").glob("*_f0_s0")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["experiment_name"] == "debug" and summary["epochs_run"] == 1
    ledger = (tmp_path / "debug_runs" / "demo_shapes" / "ledger.jsonl").read_text()
    assert str(run_dir) in ledger
    # Two optimizer steps of one epoch, one validation of one batch (batch_size=4)
    metrics = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 2 and metrics[1].split(",")[1] == "2"
    assert (run_dir / "tune" / "tuned.json").is_file()
    predicted = json.loads((run_dir / "predict" / "predict.json").read_text())
    assert predicted["predicted_images"] == 4 and predicted["images"] == 8
    assert predicted["tta"] == "flip" and predicted["tuned"] == str(run_dir / "tune" / "tuned.json")
    rows = (run_dir / "predict" / "submission.csv").read_text().splitlines()
    assert len(rows) == 1 + 8  # every test row: the 4 not predicted are written empty


@pytest.mark.slow
def test_debug_stops_at_the_stage_a_real_run_would_fail_hours_later(demo_paths, tmp_path):
    # Training is fine; the submission's column name is not: predict cannot write a file the
    # sample submission accepts, and the debug run says so after its few steps.
    proc = debug_command(demo_paths, tmp_path, "competition.submission.mask_column=mask")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    times = stage_times(proc.stdout)
    assert list(times) == ["train", "tune", "predict", "total"], proc.stdout
    assert times["predict"][1] == "FAILED" and times["train"][1] != "FAILED"
    assert "no column 'mask'" in proc.stderr and "competition.submission.mask_column" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_debug_stops_at_training_on_a_shape_error(demo_paths, tmp_path):
    # Three decoder blocks for a five-stage encoder: the model cannot be built.
    proc = debug_command(demo_paths, tmp_path, "model.kwargs={decoder_channels:[32,16,8]}")
    assert proc.returncode != 0
    times = stage_times(proc.stdout)
    assert list(times) == ["train", "total"] and times["train"][1] == "FAILED", proc.stdout
    assert not list((tmp_path / "debug_runs").rglob("summary.json"))  # nothing half-written


def test_debug_true_is_the_debug_group():
    assert expand_flag_groups(["debug=true", "fold=1", "debug=False"]) == [
        "debug=default", "fold=1",
    ]  # fmt: skip
    assert expand_flag_groups(["debug.tta=flip"]) == ["debug.tta=flip"]
    cfg = compose_config("train", expand_flag_groups(["debug=true"]))
    assert cfg.debug.train_steps == 2 and cfg.trainer.max_epochs == 1
    assert cfg.paths.runs_dir.endswith("/debug_runs") and cfg.experiment_name == "debug"
    assert "debug" not in compose_config("train", expand_flag_groups(["debug=false"]))
    with pytest.raises(ConfigError, match="debug.train_steps=0: expected an integer >= 1"):
        compose_config("train", ["debug=default", "debug.train_steps=0"])
