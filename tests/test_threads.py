"""The CPU thread policy (`trainer.cpu_threads`, `cpu_threads` for prediction): podium takes the
cores other work leaves free, as bench/threads.py measured (2 threads 1.5x faster than 1 on idle
cores; 1 thread 3.4x faster than 2 with every core busy). The user's OMP_NUM_THREADS stands."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import torch
from conftest import TINY_DEMO, TINY_TRAIN, podium_env

from podium import distributed as dist
from podium.models import resolve_device


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.fixture
def no_omp(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_users_omp_num_threads_stands(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads, why = dist.choose_cpu_threads("auto")
    assert threads == torch.get_num_threads() and why == "OMP_NUM_THREADS=1"
    assert dist.choose_cpu_threads(3)[1] == "OMP_NUM_THREADS=1"  # over the config, too


def test_a_number_is_taken_as_given(no_omp):
    assert dist.choose_cpu_threads(3) == (3, "cpu_threads=3")


def test_auto_takes_the_free_cores_and_at_least_one(no_omp, monkeypatch):
    monkeypatch.setattr(dist, "cpu_count", lambda: 8)
    monkeypatch.setattr(dist, "busy_cores", lambda: 0.2)
    assert dist.choose_cpu_threads("auto")[0] == 8  # idle: every core
    monkeypatch.setattr(dist, "busy_cores", lambda: 2.7)
    threads, why = dist.choose_cpu_threads("auto")
    assert threads == 5 and why == "cpu_threads=auto: 2.7 of 8 cores busy with other work"
    monkeypatch.setattr(dist, "busy_cores", lambda: 8.0)
    assert dist.choose_cpu_threads("auto")[0] == 1  # all busy: one thread, not none
    # DDP ranks split the cores (their siblings would read as busy); no /proc/stat: all cores.
    assert dist.choose_cpu_threads("auto", processes=3) == (
        2, "cpu_threads=auto: 8 cores shared by 3 processes"
    )  # fmt: skip
    monkeypatch.setattr(dist, "busy_cores", lambda: None)
    assert dist.choose_cpu_threads("auto") == (8, "cpu_threads=auto: 8 cores")


def test_busy_cores_sees_a_spinning_process():
    idle = dist.busy_cores()
    spinner = multiprocessing.get_context("spawn").Process(target=spin, args=(5.0,))
    spinner.start()
    try:
        time.sleep(1.0)  # the spawned interpreter starts, then spins
        busy = dist.busy_cores(seconds=0.5)
    finally:
        spinner.terminate()
        spinner.join()
    assert idle is not None and busy is not None
    assert busy >= 0.6, busy  # one process spinning is (nearly) one busy core
    assert 0.0 <= idle <= dist.cpu_count()


def test_resolve_device_sets_torch_threads_and_says_why(no_omp, monkeypatch, caplog):
    monkeypatch.setattr(dist, "busy_cores", lambda: float(dist.cpu_count()))
    with caplog.at_level("INFO", logger="podium.models"):
        assert resolve_device("auto").type == "cpu"
    assert torch.get_num_threads() == 1
    assert "CPU: 1 torch thread (cpu_threads=auto: " in caplog.text
    assert resolve_device(None) and torch.get_num_threads() == 1  # None: left alone


def test_podium_train_logs_its_thread_choice(demo_paths, tmp_path):
    """The real command, without OMP_NUM_THREADS: the log states the choice."""
    import subprocess
    import sys

    from conftest import ROOT

    env = podium_env()
    env.pop("OMP_NUM_THREADS")
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "podium.cli", "train", *TINY_DEMO, *TINY_TRAIN, *demo_paths,
         "trainer.limit_train_batches=1", "trainer.cpu_threads=1", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "CPU: 1 torch thread (cpu_threads=1)" in (run_dir / "podium.log").read_text()
