"""`podium demo` (what `make demo` runs), end to end at the tiny test size."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import TINY_DEMO, TINY_TRAIN, run_podium

from podium import demo


def test_demo_plans_the_loop_a_competitor_types(tmp_path: Path) -> None:
    plan = demo.plan([f"paths.runs_dir={tmp_path}"])
    assert [step[0] for step in plan.steps] == [
        "download", "train", "train", "tune", "predict", "validate", "score",
    ]  # fmt: skip
    assert all(f"paths.runs_dir={tmp_path}" in step for step in plan.steps)
    assert plan.submission.parent == plan.demo_dir / "predict"


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    paths = [f"paths.data_dir={tmp_path / 'data'}", f"paths.runs_dir={tmp_path / 'runs'}"]
    proc = run_podium("demo", *TINY_DEMO[1:], *TINY_TRAIN, *paths)
    for command in ("download", "train", "tune", "predict", "validate", "score"):
        assert f"$ podium {command}" in proc.stdout
    assert "demo_shapes: 48 train images" in proc.stdout  # the layout check ran
    folds = re.findall(r"fold (\d): validation dice (\d\.\d{4})", proc.stdout)
    assert [fold for fold, _ in folds] == ["0", "1"]
    submission = Path(re.search(r"^  submission: (\S+)$", proc.stdout, re.M).group(1))
    assert submission.is_file() and submission.read_text().startswith("id,")
