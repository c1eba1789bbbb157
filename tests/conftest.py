"""Shared fixtures: a small generated demo competition and helpers to run `podium` commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# The fake Kaggle server's fixtures (kaggle_home, fake_kaggle) are available to every test.
pytest_plugins = ["kaggle_fake"]

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# A demo small enough for tests: 48 train / 8 test images of 64x64, one short epoch.
TINY_DEMO = [
    "experiment=demo",
    "competition.options.n_train=48",
    "competition.options.n_test=8",
    "competition.options.size=64",
    "competition.n_folds=4",
]
TINY_TRAIN = [
    "trainer.max_epochs=1",
    "trainer.batch_size=4",
    "trainer.limit_train_batches=3",
    "trainer.num_workers=0",
    "trainer.progress=false",
    "model.kwargs={decoder_channels:[32,16,16,8,8]}",
]


def podium_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def run_podium(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real `podium` command in a subprocess; returns the completed process."""
    proc = subprocess.run(
        [sys.executable, "-m", "podium.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=podium_env(),
        cwd=ROOT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"podium {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="session")
def demo_paths(tmp_path_factory) -> list[str]:
    """Overrides pointing data and runs into a session temp folder holding a tiny demo."""
    base = tmp_path_factory.mktemp("podium")
    paths = [f"paths.data_dir={base / 'data'}", f"paths.runs_dir={base / 'runs'}"]
    run_podium("download", *TINY_DEMO[1:], *paths)
    return paths


@pytest.fixture(scope="session")
def demo_data_dir(demo_paths) -> Path:
    return Path(demo_paths[0].split("=", 1)[1]) / "demo_shapes"


@pytest.fixture
def one_thread(monkeypatch):
    """One torch thread for in-process training: on a shared, loaded CPU two spinning threads
    make it many times slower. Set as a user would (OMP_NUM_THREADS), so that podium's
    cpu_threads=auto keeps it."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
