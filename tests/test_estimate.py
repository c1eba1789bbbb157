"""`podium estimate`: the arithmetic of a run's cost (steps x time, validations, warm-up), a
sweep's (runs x per-run), and the command end to end on the tiny demo, for train and predict."""

from __future__ import annotations

import re
import shutil

import pytest
from conftest import TINY_DEMO, TINY_TRAIN, run_podium

from podium.config import ConfigError
from podium.estimate import RunCost, duration, group_by_setting, sweep_cost, validation_epochs


def test_validations_are_every_val_every_epochs_and_the_last():
    assert validation_epochs(10, 1) == 10
    assert validation_epochs(10, 3) == 4  # epochs 3, 6, 9 and the last, 10
    assert validation_epochs(9, 3) == 3  # the last is already one
    assert validation_epochs(1, 5) == 1
    assert validation_epochs(4, 10) == 1


def test_a_run_costs_its_steps_validations_and_one_warm_up():
    cost = RunCost(
        epochs=3, batches_per_epoch=10, validations=2, val_images=50,
        startup_s=4.0, warmup_s=1.5, batch_s=0.5, loader_start_s=0.25,
        val_image_s=0.02, val_start_s=0.5, checkpoint_s=0.1,
    )  # fmt: skip
    assert cost.train_s == pytest.approx(3 * (10 * 0.5 + 0.25))  # 15.75
    assert cost.validation_s == pytest.approx(50 * 0.02 + 0.5)  # 1.5 per pass
    # start-up and warm-up once; steps, loader start and checkpoints per epoch; 2 validations
    assert cost.seconds == pytest.approx(4.0 + 1.5 + 15.75 + 3 * 0.1 + 2 * 1.5)
    doubled = RunCost(**{**cost.__dict__, "epochs": 6})
    assert doubled.seconds - cost.seconds == pytest.approx(3 * (10 * 0.5 + 0.25 + 0.1))
    assert any("one run: 25 s" in line for line in cost.lines())


def test_a_sweep_is_its_runs_times_their_cost():
    from podium.config import sweep_grid

    grid = sweep_grid(["fold=0,1,2", "seed=0,1", "model.encoder=a,b", "optimizer.lr=0.1"], True)
    assert len(grid) == 3 * 2 * 2
    assert ["fold=0", "seed=1", "model.encoder=b", "optimizer.lr=0.1"] in grid
    settings = group_by_setting(grid)  # folds and seeds cost the same: one timing per encoder
    assert list(settings) == [
        ("model.encoder=a", "optimizer.lr=0.1"), ("model.encoder=b", "optimizer.lr=0.1"),
    ]  # fmt: skip
    assert [len(jobs) for jobs in settings.values()] == [6, 6]
    assert sweep_cost([(10.0, 6), (25.0, 6)]) == pytest.approx(210.0)
    assert sweep_grid(["fold=1"], False) == [["fold=1"]]
    with pytest.raises(ConfigError, match="fold=0,1: a sweep; add -m"):
        sweep_grid(["fold=0,1"], False)
    assert duration(90) == "90 s" and duration(600) == "10.0 min (600 s)"


@pytest.mark.slow
def test_estimate_a_sweep_and_a_prediction_on_the_demo(demo_paths, tmp_path):
    tiny = [*TINY_DEMO, *TINY_TRAIN, *demo_paths]
    proc = run_podium("estimate", "-m", *tiny, "fold=0,1", "trainer.max_epochs=3")
    out = proc.stdout
    assert "setting 1 of 1" in out and "2 run(s)" in out, out
    assert "x 3 batches/epoch x 3 epochs" in out  # trainer.limit_train_batches=3
    assert re.search(r"validation \(12 images, [\d.]+ s\) x 3:", out)  # 48 images, 4 folds
    assert "n/a on CPU (no accelerator); this process's peak RSS" in out
    one_run = float(re.search(r"one run: (\d+) s", out).group(1))
    sweep = float(re.search(r"sweep of 2 runs \(1 setting\(s\)\): (\d+) s", out).group(1))
    assert abs(sweep - 2 * one_run) <= 1  # rounding of the two printed numbers
    assert not (tmp_path / "runs").exists() and "Traceback" not in proc.stderr

    run_dir = tmp_path / "run"
    run_podium("train", *tiny, f"hydra.run.dir={run_dir}")
    shutil.copytree(run_dir, tmp_path / "run2")  # a two-run ensemble
    proc = run_podium(
        "estimate", "predict", *TINY_DEMO[1:], *demo_paths, f"runs=[{run_dir},{run_dir}2]",
        "tta=flip", "batch_size=2", "num_workers=0", "progress=false",
    )  # fmt: skip
    line = re.search(
        r"podium predict of 8 test images x 2 runs x 4 views: (\d+) s "
        r"\(([\d.]+) s/image, model loading ([\d.]+) s\)", proc.stdout
    )  # fmt: skip
    assert line, proc.stdout
    total, per_image, loading = (float(v) for v in line.groups())
    assert abs(total - (loading + 8 * per_image)) <= 0.51 + 8 * 0.0005  # printed rounding
    assert not list(tmp_path.rglob("submission.csv"))  # an estimate writes nothing
