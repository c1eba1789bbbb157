"""`podium search` (podium.search): trials in parallel worker processes, pruned on the
per-epoch validation score, resumable, each a normal run in the ledger; the best configuration
printed as a `podium train` command line."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY_DEMO, TINY_TRAIN, podium_env, run_podium
from omegaconf import OmegaConf

from podium import ledger, rundir
from podium.config import ConfigError, compose_config, config_hash
from podium.io import PodiumError
from podium.search import command as search_command
from podium.search import study as search_study
from podium.search import worker as search_worker

# A grid of 6 points, queued in this order: max_epochs 1 then 2, each with 3 learning rates.
# The threshold pruner's bound (a Dice above 2) cannot be met, so every trial that has an epoch
# after its first is pruned after that first one (n_warmup_steps=1), and a 1-epoch trial, which
# no epoch follows, completes: trials 0-2 complete, 3-5 are pruned, whatever the scores are.
GRID = """\
name: grid
n_trials: 6
workers: 2
sampler: grid
seed: null
pruner: {name: threshold, n_startup_trials: 0, n_warmup_steps: 1, threshold: 2.0}
params:
  trainer.max_epochs: {type: categorical, choices: [1, 2]}
  optimizer.lr: {type: categorical, choices: [0.001, 0.002, 0.003]}
"""
TRIAL_TRAIN = [t for t in TINY_TRAIN if not t.startswith("trainer.max_epochs")]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A workspace whose configs/search/grid.yaml is the grid above (data from demo_paths)."""
    root = tmp_path / "ws"
    (root / "configs" / "search").mkdir(parents=True)
    (root / ".podium").write_text("podium workspace\n")
    (root / "configs" / "search" / "grid.yaml").write_text(GRID)
    monkeypatch.setenv("PODIUM_ROOT", str(root))
    return root


def metrics_rows(run_dir: str) -> list[dict]:
    with open(Path(run_dir) / rundir.METRICS) as f:
        return list(csv.DictReader(f))


def trial_records(runs_dir: str, study: str = "grid") -> list[dict]:
    records = ledger.runs(ledger.read(ledger.ledger_path(runs_dir, "demo_shapes")))
    return [r for r in records if r.get("study") == study]


@pytest.mark.slow
def test_search_runs_prunes_and_resumes(workspace, demo_paths, tmp_path):
    runs_dir = demo_paths[1].split("=", 1)[1]
    args = ["search", "search=grid", *TINY_DEMO, *TRIAL_TRAIN, *demo_paths]
    started = time.time()
    first = run_podium(*args, "search.n_trials=4")
    print(f"search: first command {time.time() - started:.0f} s")
    study_dir = os.path.join(runs_dir, "demo_shapes", "search", "grid")
    assert "4 trials (3 complete, 1 pruned, 0 fail)" in first.stdout
    # Two workers ran trials side by side: each trial's log line names its worker.
    assert set(re.findall(r"worker (\d): trial", first.stdout + first.stderr)) == {"0", "1"}
    before = {
        name: os.stat(os.path.join(study_dir, name, rundir.SUMMARY)).st_mtime_ns
        for name in ("trial_000", "trial_001", "trial_002", "trial_003")
    }

    # Resumed, here by one worker: search.workers is not part of what the study is.
    second = run_podium(*args, "search.n_trials=6", "search.workers=1")
    elapsed = time.time() - started
    assert "6 trials (3 complete, 3 pruned, 0 fail)" in second.stdout
    # Resumed: the 4 finished trials were not run again, only trials 4 and 5 were.
    for name, mtime in before.items():
        assert os.stat(os.path.join(study_dir, name, rundir.SUMMARY)).st_mtime_ns == mtime
    assert sorted(re.findall(r"trial (\d+): trainer", second.stdout + second.stderr)) == ["4", "5"]
    records = trial_records(runs_dir)
    assert sorted(r["trial"] for r in records) == [0, 1, 2, 3, 4, 5]  # each once in the ledger

    for record in records:
        summary = json.loads((Path(record["run_dir"]) / rundir.SUMMARY).read_text())
        rows = metrics_rows(record["run_dir"])
        assert summary["trial"] == record["trial"] and summary["status"] == record["status"]
        if record["trial"] < 3:  # max_epochs=1: nothing to prune after the only epoch
            assert record["status"] == "finished" and record["epochs_run"] == 1
        else:  # max_epochs=2, pruned after epoch 1: the second epoch never ran
            assert record["status"] == "pruned" and record["epochs_run"] == 1
            assert (
                OmegaConf.load(Path(record["run_dir"]) / "config.yaml").trainer["max_epochs"] == 2
            )
        assert len(rows) == 1 and Path(record["run_dir"], "checkpoints/last.pt").is_file()

    # The study holds what the runs scored: values and the reported per-epoch scores.
    study = search_study.open_study(study_settings(study_dir))
    by_number = {t.number: t for t in study.trials}
    # Exactly 2 worker processes ran the first 4 trials (each holds its own worker lock).
    assert len({by_number[n].user_attrs["worker_lock"] for n in range(4)}) == 2
    assert len({by_number[n].user_attrs["worker_lock"] for n in (4, 5)}) == 1
    for record in records:
        trial = by_number[record["trial"]]
        rows = metrics_rows(record["run_dir"])
        score = float(rows[0]["val_score"])  # metrics.csv: 6 decimals
        assert trial.intermediate_values == {1: pytest.approx(score, abs=1e-6)}
        if trial.state.name == "COMPLETE":
            assert trial.value == pytest.approx(record["best_score"])
        else:
            assert trial.state.name == "PRUNED"

    # The best trial, printed as a command line that composes its configuration.
    best = max((r for r in records if r["status"] == "finished"), key=lambda r: r["best_score"])
    assert f"best: trial {best['trial']}, dice {best['best_score']:.6g}" in second.stdout
    command = second.stdout.strip().splitlines()[-1].split()
    assert command[:2] == ["podium", "train"]
    assert (
        config_hash(compose_config("train", command[2:]), replicates=False) == (best["config_hash"])
    )
    print(f"search: 6 trials in 2 commands, {elapsed:.0f} s")


def study_settings(study_dir, **changes) -> dict:
    """The settings `podium search search=grid` hands its workers (as search_command makes)."""
    overrides = ["search=grid", *TINY_DEMO, *TRIAL_TRAIN]
    return {
        "study_dir": str(study_dir),
        "competition": "demo_shapes",
        "metric": "dice",
        "base": search_command.train_overrides(overrides),
        **OmegaConf.to_container(OmegaConf.create(GRID)),
        **changes,
    }


class Trial:
    """What trial_config reads of an Optuna trial."""

    def __init__(self, number: int, params: dict, user_attrs: dict):
        self.number, self.params, self.user_attrs = number, params, user_attrs


def test_a_trial_whose_worker_died_is_queued_again_and_resumes_its_run(tmp_path):
    settings = study_settings(tmp_path / "study")
    study = search_study.open_study(settings)
    earlier_run = tmp_path / "study" / "trial_000"
    with search_worker._worker_lock(tmp_path / "study") as lock:  # a worker that then dies
        trial = search_worker.next_trial(study, settings, lock)
        trial.set_user_attr("run_dir", str(earlier_run))
    assert trial.number == 0 and trial.params == {"trainer.max_epochs": 1, "optimizer.lr": 0.001}

    with search_worker._worker_lock(tmp_path / "study") as lock:
        assert search_study._held(lock)
        following = search_worker.next_trial(study, settings, lock)
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states[0] == "FAIL" and states[1] == "RUNNING" and following.number == 1
    # Failed by the loss of its worker: not counted, and its parameters queued again.
    assert [t.number for t in search_study.counted_trials(study)] == [1]
    queued = study.get_trials()[-1]
    assert queued.state.name == "WAITING"
    assert queued.system_attrs["fixed_params"] == trial.params  # what the next ask takes
    assert queued.user_attrs == {"resume_run": str(earlier_run), "retry_of": 0}

    # That queued trial resumes the earlier run in place once it has a checkpoint...
    run_config = compose_config("train", settings["base"])
    rundir.write_config(earlier_run, OmegaConf.to_container(run_config, resolve=True))
    again = Trial(7, trial.params, {"resume_run": str(earlier_run), "retry_of": 0})
    new_run = tmp_path / "study" / "trial_007"
    assert search_worker.trial_config(again, settings)[0] == new_run  # no checkpoint: a new run
    last = rundir.checkpoint_path(earlier_run, "last")
    last.parent.mkdir(parents=True)
    last.write_bytes(b"checkpoint")
    run_dir, cfg = search_worker.trial_config(again, settings)
    assert run_dir == earlier_run and cfg.resume == str(earlier_run)


def test_a_combination_that_breaks_a_rule_fails_its_trial_only(tmp_path):
    """Each value is fine alone; together they break a rule across keys: the space is
    accepted, and the trial fails naming the rule, counted, without training."""
    space = {
        "trainer.max_epochs": {"type": "categorical", "choices": [1]},
        "scheduler.warmup_epochs": {"type": "categorical", "choices": [2]},
    }
    settings = {**study_settings(tmp_path / "study"), "sampler": "random", "params": space}
    search_command.check_space(settings["base"], space)
    study = search_study.open_study(settings)
    with search_worker._worker_lock(tmp_path / "study") as lock:
        trial = search_worker.next_trial(study, settings, lock)
        search_worker.run_trial(study, trial, settings, worker=0)
    (failed,) = study.get_trials()
    assert failed.state.name == "FAIL"
    assert [t.number for t in search_study.counted_trials(study)] == [0]
    assert failed.user_attrs["error"] == (
        "scheduler.warmup_epochs=2: expected at most trainer.max_epochs=1 (warm-up past the "
        "run's end)"
    )
    assert not (tmp_path / "study" / "trial_000").exists()


def test_a_study_started_otherwise_is_refused(tmp_path):
    settings = study_settings(tmp_path / "study")
    search_study.open_study(settings)
    # Keys that change no result (workers, paths) may differ; a training setting may not.
    search_study.open_study({**settings, "base": [*settings["base"], "trainer.num_workers=2"]})
    with pytest.raises(PodiumError, match=r"study grid was started with .*search.name=NEW"):
        other = [*settings["base"], "optimizer.weight_decay=0"]
        search_study.open_study({**settings, "base": other})
    with pytest.raises(PodiumError, match="search.name=NEW"):
        search_study.open_study(
            {**settings, "params": {"optimizer.lr": {"type": "float", "low": 0.1, "high": 1}}}
        )


def test_a_misspelt_search_key_is_one_line(demo_paths):
    with pytest.raises(ConfigError, match=r"^search.params.optimizr.lr: unknown config key"):
        search_command.check_space([], {"optimizr.lr": {"type": "float", "low": 0.1, "high": 1.0}})
    with pytest.raises(ConfigError, match=r"^search.params.loss: unknown option 'dyce'"):
        choices = {"type": "categorical", "choices": ["dice", "dyce"]}
        search_command.check_space([], {"loss": choices})
    with pytest.raises(ConfigError, match=r"^loss=dice: loss is searched \(search.params.loss\)"):
        search_command.check_space(["loss=dice"], {"loss": choices})
    proc = run_podium("search", "search.sampler=grid", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "podium: error: search.params.optimizer.lr: expected {type: categorical, ...} with "
        "search.sampler=grid (a grid lists every value)"
    )


ONE_TRIAL = """\
name: once
n_trials: 1
workers: 1
sampler: random
seed: 0
pruner: {name: none, n_startup_trials: 0, n_warmup_steps: 0, threshold: null}
params:
  optimizer.lr: {type: categorical, choices: [0.001]}
"""


@pytest.mark.slow
def test_a_killed_search_resumes_its_trial_in_place(workspace, demo_paths):
    """Killed during its only trial's second epoch, then run again: the trial is queued again
    and its run resumes from the last checkpoint, in place; no epoch is trained twice."""
    (workspace / "configs" / "search" / "once.yaml").write_text(ONE_TRIAL)
    runs_dir = demo_paths[1].split("=", 1)[1]
    args = ["search", "search=once", *TINY_DEMO, *TRIAL_TRAIN, *demo_paths]
    args += ["trainer.max_epochs=3"]
    run_dir = Path(runs_dir, "demo_shapes", "search", "once", "trial_000")
    with open(workspace / "first.log", "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "podium.cli", *args],
            stdout=out, stderr=subprocess.STDOUT, env=podium_env(), cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.time() + 600
            while time.time() < deadline and proc.poll() is None:
                if (run_dir / rundir.METRICS).is_file() and len(metrics_rows(run_dir)) >= 1:
                    break  # epoch 1 is checkpointed
                time.sleep(0.2)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    epochs_before = [row["epoch"] for row in metrics_rows(run_dir)]
    assert epochs_before and not (run_dir / rundir.SUMMARY).exists()

    second = run_podium(*args)
    assert "2 trials (1 complete, 0 pruned, 1 fail)" in second.stdout
    epochs = [int(row["epoch"]) for row in metrics_rows(run_dir)]
    # Each epoch at most once (a kill between a checkpoint and its metrics row may leave one
    # out): the checkpointed ones were not trained again.
    assert epochs == sorted(set(epochs)) and epochs[-1] == 3
    log = second.stdout + second.stderr
    resumed = re.search(rf"resumed {re.escape(str(run_dir))} at epoch (\d)", log)
    assert resumed and int(resumed.group(1)) >= int(epochs_before[-1]) >= 1
    assert sorted(p.name for p in run_dir.parent.glob("trial_*")) == ["trial_000"]
    (record,) = trial_records(runs_dir, "once")
    assert record["trial"] == 1 and record["status"] == "finished" and record["epochs_run"] == 3
