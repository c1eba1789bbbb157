"""Work is never lost, untrusted files never run code: faults planted on purpose.

A full disk (a real tmpfs in a private mount namespace where the machine allows it, else a
writer raising ENOSPC), a kill in the middle of a checkpoint write, a read-only data folder, a
pickled checkpoint carrying code, failed and empty runs among the globbed ones, a download
damaged in transit. Each case checks the exit code, a one-line message naming the file or
folder, no traceback, nothing half-written and no run claimed finished.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_DEMO, TINY_TRAIN, podium_env, run_podium
from omegaconf import OmegaConf

import podium.train
from podium import cli, launch, ledger, rundir, runlock
from podium import kaggle as pk
from podium.config import compose_config
from podium.data import load_or_make_folds
from podium.io import PodiumError

try:
    from kaggle_fake import FakeCompetition, FakeKaggle, make_zip
except ImportError:  # tests/ turned into a package
    from tests.kaggle_fake import FakeCompetition, FakeKaggle, make_zip

QUICK = [*TINY_DEMO, *TINY_TRAIN, "trainer.limit_train_batches=1"]
STATE_DIR = ".podium-kaggle"


@functools.cache
def private_mounts_work() -> bool:
    """Root, and mount namespaces allowed (a container may refuse them)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = 'd=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs "$d" && umount "$d"; rmdir "$d"'
    return subprocess.run(["unshare", "-m", "sh", "-c", probe], capture_output=True).returncode == 0


needs_mounts = pytest.mark.skipif(
    not private_mounts_work(), reason="needs root and mount namespaces (unshare -m)"
)


def one_error_line(err: str) -> str:
    """The message the CLI printed; fails on a traceback or a message over several lines."""
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("podium: error:")]
    assert len(lines) == 1, err
    return lines[0]


def temp_files(folder: Path) -> list[Path]:
    return list(folder.rglob(".*.tmp"))


def ledger_runs(demo_paths, run_dir: Path) -> list[dict]:
    path = ledger.ledger_path(demo_paths[1].split("=", 1)[1], "demo_shapes")
    return [r for r in ledger.read(path) if r.get("run_dir") == str(run_dir)]


@pytest.fixture(scope="module")
def trained_run(demo_paths, tmp_path_factory) -> Path:
    """A finished one-epoch run of the tiny demo."""
    run_dir = tmp_path_factory.mktemp("runsafe") / "run"
    assert cli.main(["train", *QUICK, *demo_paths, f"hydra.run.dir={run_dir}"]) == 0
    return run_dir


# -- safe loading -------------------------------------------------------------------------------
def test_checkpoints_hold_plain_data_and_load_with_weights_only(trained_run):
    for which in ("best", "last"):
        checkpoint = torch.load(rundir.checkpoint_path(trained_run, which), weights_only=True)
        rng = checkpoint["rng"]
        assert isinstance(rng["numpy"]["key"], list) and len(rng["numpy"]["key"]) == 624
        assert isinstance(rng["python"]["state"], list) and len(rng["python"]["state"]) == 625
    last = rundir.checkpoint_path(trained_run, "last")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(last) == []


def test_checkpoint_of_older_podium_still_loads_and_resumes(trained_run, demo_paths, tmp_path):
    """Before this format, numpy's RNG state was stored as the ndarray tuple numpy returns."""
    run = tmp_path / "old"
    shutil.copytree(trained_run, run)
    last = rundir.checkpoint_path(run, "last")
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["rng"]["python"] = random.getstate()
    checkpoint["rng"]["numpy"] = np.random.get_state()
    torch.save(checkpoint, last)
    with pytest.raises(Exception, match="numpy"):  # plain weights_only refuses the ndarray
        torch.load(last, weights_only=True)
    loaded = rundir.load_checkpoint(last)
    assert np.array_equal(loaded["rng"]["numpy"][1], checkpoint["rng"]["numpy"][1])
    assert cli.main(["train", f"resume={run}", "trainer.max_epochs=2"]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 2


class CodeOnLoad:
    """Unpickling this writes `marker` (what a shared run folder could do on predict)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_checkpoint_carrying_code_is_refused_and_never_runs(
    trained_run, demo_paths, tmp_path, capsys
):
    # The payload is live: an unsafe load runs it.
    probe = tmp_path / "probe.pt"
    torch.save({"model": CodeOnLoad(tmp_path / "probe-ran")}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "probe-ran").exists()

    marker = tmp_path / "marker"
    run = tmp_path / "shared_run"
    run.mkdir()
    shutil.copy(trained_run / "config.yaml", run / "config.yaml")
    best = rundir.checkpoint_path(run, "best")
    best.parent.mkdir()
    torch.save({"model": CodeOnLoad(marker), "config": {}}, best)
    with pytest.raises(PodiumError) as error:
        rundir.load_checkpoint(best)
    assert str(best) in str(error.value) and "refused" in str(error.value)
    assert "\n" not in str(error.value) and not marker.exists()

    code = cli.main(["predict", *TINY_DEMO[1:], *demo_paths, f"runs=[{run}]",
                     f"hydra.run.dir={tmp_path / 'predict'}"])  # fmt: skip
    line = one_error_line(capsys.readouterr().err)
    assert code == 1 and str(best) in line and "(it asks for exec)" in line
    assert not marker.exists()
    assert not (tmp_path / "predict" / "submission.csv").exists()


def test_unreadable_checkpoint_is_one_line(trained_run, tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(rundir.checkpoint_path(trained_run, "last").read_bytes()[:4096])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"<html>not a checkpoint</html>")
    for path in (cut, garbage):
        with pytest.raises(PodiumError, match="not a readable checkpoint") as error:
            rundir.load_checkpoint(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)


# -- a full disk ----------------------------------------------------------------------------------
def test_too_little_space_stops_before_the_first_epoch(demo_paths, tmp_path, capsys, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda _: usage._replace(free=5 << 20))
    run_dir = tmp_path / "run"
    code = cli.main(["train", *QUICK, *demo_paths, f"hydra.run.dir={run_dir}"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 1
    assert f"{run_dir / 'checkpoints'}: not enough free disk space" in line
    assert "MB, 5.0 MB free there" in line
    assert not run_dir.exists()  # no epoch was trained, nothing is left behind
    assert ledger_runs(demo_paths, run_dir) == []


def test_failed_save_marks_the_run_failed_and_a_resume_finishes_it(
    demo_paths, tmp_path, capsys, monkeypatch
):
    """ENOSPC in the middle of epoch 2's first checkpoint write, raised by the file itself (the
    way a full disk does: torch turns it into a RuntimeError)."""
    armed: list[bool] = []
    real_sink, real_save = rundir._Sink.__init__, podium.train.save_checkpoint

    class FullDisk:
        def __init__(self, file):
            self.file, self.written = file, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 100_000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.file.write(data)

    def sink(self, file):
        real_sink(self, FullDisk(file) if armed[0] else file)

    def save(checkpoint, path):
        armed[:] = [checkpoint["state"]["epoch"] == 2]
        real_save(checkpoint, path)

    monkeypatch.setattr(rundir._Sink, "__init__", sink)
    monkeypatch.setattr(podium.train, "save_checkpoint", save)
    run_dir = tmp_path / "run"
    common = [*QUICK, *demo_paths, "trainer.max_epochs=3"]
    code = cli.main(["train", *common, f"hydra.run.dir={run_dir}"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 1
    assert f"{run_dir / 'checkpoints'}: cannot save the checkpoint of epoch 2" in line
    assert "No space left on device" in line and "still holds epoch 1" in line
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["epochs_run"] == 1
    assert "No space left on device" in summary["error"]
    assert [r["status"] for r in ledger_runs(demo_paths, run_dir)] == ["failed"]
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1"]  # epoch 2 is claimed nowhere
    assert rundir.load_checkpoint(rundir.checkpoint_path(run_dir, "last"))["state"]["epoch"] == 1
    assert temp_files(run_dir) == []

    monkeypatch.setattr(rundir._Sink, "__init__", real_sink)  # room again
    assert cli.main(["train", f"resume={run_dir}"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_run"] == 3
    assert ledger_runs(demo_paths, run_dir)[-1]["status"] == "finished"


# The training of a test, run as `python FAULTS ARGS...`, with a fault planted at epoch 2's first
# checkpoint write. FAULT=fill: fill the disk first (the write then fails on a real ENOSPC);
# FAULT=stall: stop 1 MB into the write (touching FAULT_MARKER) until the test kills the process.
FAULTS = """
import os, shutil, sys, time
from pathlib import Path
import podium.train
from podium import cli, rundir

fault, marker = os.environ["FAULT"], Path(os.environ["FAULT_MARKER"])
real_save, real_write = podium.train.save_checkpoint, rundir._Sink.write
armed = []

def save(checkpoint, path):
    if checkpoint["state"]["epoch"] == 2 and not armed:
        armed.append(True)
        if fault == "fill":
            room = shutil.disk_usage(path.parent).free - (256 << 10)
            with open(Path(os.environ["FILL_DIR"]) / "filler", "wb") as f:
                while room > 0:
                    f.write(b"x" * min(room, 1 << 20))
                    room -= 1 << 20
    real_save(checkpoint, path)

def write(sink, data):
    sink.written = getattr(sink, "written", 0) + len(data)
    if fault == "stall" and armed and sink.written > 1 << 20:
        marker.touch()
        time.sleep(600)
    return real_write(sink, data)

podium.train.save_checkpoint, rundir._Sink.write = save, write
sys.exit(cli.main(sys.argv[1:]))
"""


def faults_script(tmp_path: Path) -> Path:
    script = tmp_path / "faults.py"
    script.write_text(FAULTS)
    return script


@needs_mounts
def test_full_tmpfs_stops_before_the_first_epoch(demo_paths, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    run_dir = mount / "run"
    train = [sys.executable, "-m", "podium.cli", "train", *QUICK, *demo_paths,
             f"hydra.run.dir={run_dir}"]  # fmt: skip
    script = ('mount -t tmpfs -o size=40m tmpfs "$0" && "$@"; code=$?; '
              'echo "left:$(ls -A "$0")"; exit $code')  # fmt: skip
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, str(mount), *train],
                          capture_output=True, text=True, env=podium_env(), cwd=ROOT)  # fmt: skip
    line = one_error_line(proc.stderr)
    assert proc.returncode == 1
    assert f"{run_dir / 'checkpoints'}: not enough free disk space for the checkpoints" in line
    assert "MB free there" in line
    assert "left:\n" in proc.stdout  # the run folder is gone: nothing was trained


@needs_mounts
def test_disk_filling_up_mid_run_on_a_real_tmpfs(demo_paths, tmp_path):
    mount, kept = tmp_path / "disk", tmp_path / "kept"
    mount.mkdir()
    run_dir = mount / "run"
    train = [sys.executable, str(faults_script(tmp_path)), "train", *QUICK, *demo_paths,
             "trainer.max_epochs=3", f"hydra.run.dir={run_dir}"]  # fmt: skip
    # The namespace's mounts go with it: copy the run folder out for the checks.
    script = ('mount -t tmpfs -o size=160m tmpfs "$0" && "$@"; code=$?; rm -f "$0/filler"; '
              'cp -a "$0/run" "$0/../kept"; exit $code')  # fmt: skip
    env = podium_env() | {"FAULT": "fill", "FAULT_MARKER": "-", "FILL_DIR": str(mount)}
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, str(mount), *train],
                          capture_output=True, text=True, env=env, cwd=ROOT)  # fmt: skip
    line = one_error_line(proc.stderr)
    assert proc.returncode == 1
    assert f"{run_dir / 'checkpoints'}: cannot save the checkpoint of epoch 2" in line
    assert "No space left on device" in line
    summary = json.loads((kept / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["epochs_run"] == 1
    assert len((kept / "metrics.csv").read_text().splitlines()) == 2  # header + epoch 1
    assert temp_files(kept) == []
    last = rundir.load_checkpoint(rundir.checkpoint_path(kept, "last"))
    assert last["state"]["epoch"] == 1


# -- a kill ---------------------------------------------------------------------------------------
def test_kill_during_a_checkpoint_write_then_resume(demo_paths, tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "writing"
    env = podium_env() | {"FAULT": "stall", "FAULT_MARKER": str(marker)}
    command = [sys.executable, str(faults_script(tmp_path)), "train", *QUICK, *demo_paths,
               "trainer.max_epochs=3", f"hydra.run.dir={run_dir}"]  # fmt: skip
    proc = subprocess.Popen(command, env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before epoch 2"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # 1 MB into epoch 2's checkpoint
    assert proc.wait() == -signal.SIGKILL
    assert len(temp_files(run_dir)) == 1  # what a kill leaves
    assert rundir.load_checkpoint(rundir.checkpoint_path(run_dir, "last"))["state"]["epoch"] == 1

    proc = run_podium("train", f"resume={run_dir}")
    assert temp_files(run_dir) == []
    assert "removed 1 temporary file(s)" in proc.stdout + proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_run"] == 3
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 4


# -- which runs -----------------------------------------------------------------------------------
def fake_run(folder: Path, fold: int, status: str | None = None, checkpoint: bool = True) -> Path:
    folder.mkdir(parents=True)
    cfg = {"fold": fold, "competition": {"name": "demo_shapes", "image_size": None}}
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    if checkpoint:
        rundir.checkpoint_path(folder, "best").parent.mkdir()
        rundir.checkpoint_path(folder, "best").write_bytes(b"weights")
    if status:
        rundir.write_summary(folder, {"status": status, "error": "disk full"})
    return folder


def test_globs_and_runs_of_skip_failed_and_empty_runs(tmp_path, caplog):
    base = tmp_path / "runs" / "demo_shapes"
    good = fake_run(base / "r_good", 0, "finished")
    failed = fake_run(base / "r_failed", 0, "failed")
    empty = fake_run(base / "r_empty", 1, checkpoint=False)
    for run in (good, failed, empty):  # oldest first: the failed run is fold 0's latest
        record = {"kind": "run", "experiment_name": "exp", "fold": 0 if run != empty else 1,
                  "seed": 0, "run_dir": str(run)}  # fmt: skip
        ledger.append(ledger.ledger_path(tmp_path / "runs", "demo_shapes"), record)

    def resolve(*overrides):
        cfg = compose_config("predict", [f"paths.runs_dir={tmp_path / 'runs'}", *overrides])
        return [path for path, _ in rundir.resolve_runs(cfg)]

    with caplog.at_level(logging.WARNING, logger="podium.rundir"):
        assert resolve("runs=[r_*]") == [good]
    (message,) = [r.getMessage() for r in caplog.records]
    assert "skipped 2 run(s)" in message and "\n" not in message
    assert "r_failed (failed: disk full)" in message and "r_empty (no checkpoint" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="podium.rundir"):
        assert resolve("runs_of=exp") == [good]  # fold 0's latest usable run
    assert "runs_of=exp: skipped 2 run(s)" in caplog.text
    with pytest.raises(PodiumError, match="'r_fa\\*' names no usable run"):
        resolve("runs=[r_fa*]")


def test_a_named_failed_or_empty_run_is_an_error(tmp_path, capsys):
    failed = fake_run(tmp_path / "failed", 0, "failed")
    empty = fake_run(tmp_path / "empty", 0, checkpoint=False)
    for run, why in ((failed, "failed: disk full"), (empty, "no checkpoint")):
        code = cli.main(["predict", f"paths.runs_dir={tmp_path}", f"runs=[{run}]",
                         f"hydra.run.dir={tmp_path / 'predict'}"])  # fmt: skip
        line = one_error_line(capsys.readouterr().err)
        assert code == 1 and f"runs: {run}: {why}" in line


def test_temp_files_go_unless_a_training_holds_the_run(tmp_path):
    run = fake_run(tmp_path / "runs" / "demo_shapes" / "r", 0)
    killed = run / "checkpoints" / ".best.pt.k1ll3d.tmp"
    killed.write_bytes(b"half a checkpoint")
    cfg = compose_config("predict", [f"paths.runs_dir={tmp_path / 'runs'}", "runs=[r]"])
    with runlock.claim_run(run):  # a training (resume) starts: what a killed one left goes
        assert not killed.exists()
        writing = run / "checkpoints" / ".last.pt.wr1t1ng.tmp"
        writing.write_bytes(b"the training's own, in use")
        rundir.resolve_runs(cfg)  # `podium predict` meanwhile leaves it alone
        assert writing.exists()
    # The training was killed: the next command that uses the run cleans up.
    rundir.resolve_runs(cfg)
    assert temp_files(run) == [] and rundir.checkpoint_path(run, "best").is_file()


def test_a_run_cannot_be_trained_twice_at_once(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}")
    with runlock.claim_run(run):
        assert runlock.in_use(run)
        with (
            pytest.raises(PodiumError, match="another podium train is writing this run"),
            runlock.claim_run(run),
        ):
            pass
        # The second command's failure must not remove the folder the first one trains into.
        assert not launch._remove_unstarted_run_dir(run) and run.is_dir()
    assert not runlock.in_use(run)


# -- a read-only data folder ----------------------------------------------------------------------
def test_read_only_data_folder_keeps_its_folds_in_the_cache(tmp_path, monkeypatch, caplog):
    from podium import data
    from podium.competition import Sample

    samples = [Sample(id=f"s{i}", image=Path("x"), stratify=i % 3 == 0) for i in range(40)]
    data_dir, cache = tmp_path / "input" / "comp", tmp_path / "ws" / ".cache" / "folds"
    data_dir.mkdir(parents=True)
    real_write, read_only = data.io.write_csv, {data_dir}

    def write_csv(path, rows, columns):
        if Path(path).parent in read_only:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        real_write(path, rows, columns)

    monkeypatch.setattr(data.io, "write_csv", write_csv)
    with caplog.at_level(logging.INFO, logger="podium.data"):
        first = load_or_make_folds(samples, data_dir / "folds.csv", 4, 0, cache_dir=cache)
    (cached,) = cache.iterdir()
    assert cached.name.startswith("comp-") and not (data_dir / "folds.csv").exists()
    assert f"is not writable (Read-only file system): wrote its 4 folds to {cached}" in caplog.text
    # Every later run reads the same file (another seed would make other folds).
    assert load_or_make_folds(samples, data_dir / "folds.csv", 4, 99, cache_dir=cache) == first
    other = tmp_path / "other" / "comp"  # same name, another folder: its own file
    other.mkdir(parents=True)
    read_only.add(other)
    load_or_make_folds(samples, other / "folds.csv", 4, 0, cache_dir=cache)
    assert len(list(cache.iterdir())) == 2


@needs_mounts
def test_training_on_a_read_only_data_mount(demo_paths, demo_data_dir, tmp_path):
    data = tmp_path / "input"
    shutil.copytree(demo_data_dir, data / "demo_shapes", ignore=shutil.ignore_patterns("folds*"))
    workspace, run_dir = tmp_path / "ws", tmp_path / "run"
    workspace.mkdir()
    train = [sys.executable, "-m", "podium.cli", "train", *QUICK, demo_paths[1],
             f"paths.data_dir={data}", f"hydra.run.dir={run_dir}"]  # fmt: skip
    script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
    env = podium_env() | {"PODIUM_ROOT": str(workspace)}
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, str(data / "demo_shapes"), *train],
                          capture_output=True, text=True, env=env, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (cached,) = (workspace / ".cache" / "folds").iterdir()
    assert f"is not writable (Read-only file system): wrote its 4 folds to {cached}" in (
        proc.stdout + proc.stderr
    )
    assert not (data / "demo_shapes" / "folds.csv").exists()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


# -- a damaged download ---------------------------------------------------------------------------
def data_files(dest: Path) -> set[str]:
    return {
        p.relative_to(dest).as_posix()
        for p in dest.rglob("*")
        if p.is_file() and STATE_DIR not in p.relative_to(dest).parts
    }


def test_damaged_download_is_discarded_and_the_retry_succeeds(fake_kaggle, tmp_path):
    dest = tmp_path / "data"
    files = fake_kaggle.competitions["demo-seg"].files
    files["big.bin"] = random.Random(0).randbytes(200_000)  # the middle lands in member data
    fake_kaggle.corrupt_blob_gets = 1
    with pytest.raises(pk.KaggleError) as error:
        pk.download("demo-seg", dest)
    message = str(error.value)
    assert "demo-seg.zip is corrupt" in message and "\n" not in message
    assert "discarded the damaged download: the next run downloads it again" in message
    assert data_files(dest) == set() and not list((dest / STATE_DIR).glob("*.part*"))
    pk.download("demo-seg", dest)
    assert data_files(dest) == set(files)
    assert (dest / "big.bin").read_bytes() == files["big.bin"]


MEMBER = make_zip({"images/a.png": random.Random(1).randbytes(20_000), "masks/a.png": b"M" * 300})


def test_damaged_member_archive_download_is_fetched_again(fake_kaggle, tmp_path):
    """train.zip downloaded on its own (files=[...]) is a member archive: no outer archive's
    CRC checked its bytes, only its own unpacking does."""
    fake_kaggle.add_competition(FakeCompetition("nested", "Nested", {"train.zip": MEMBER}))
    dest = tmp_path / "data"
    fake_kaggle.corrupt_blob_gets = 1
    with pytest.raises(pk.KaggleError) as error:
        pk.download("nested", dest, files=["train.zip"])
    message = str(error.value)
    assert message.startswith("train.zip is corrupt") and "\n" not in message
    assert "deleted the damaged download: the next run downloads it again" in message
    assert data_files(dest) == set()
    pk.download("nested", dest, files=["train.zip"])
    assert data_files(dest) == {"train/images/a.png", "train/masks/a.png"}


def test_damaged_member_inside_an_intact_archive(fake_kaggle, tmp_path):
    damaged = bytearray(MEMBER)
    damaged[len(damaged) // 3] ^= 0xFF
    files = {"train.zip": bytes(damaged), "sample_submission.csv": b"id,rle_mask\na,\n"}
    competition = fake_kaggle.add_competition(FakeCompetition("nested", "Nested", files))
    dest = tmp_path / "data"
    with pytest.raises(pk.KaggleError) as error:
        pk.download("nested", dest)
    message = str(error.value)
    assert message.startswith("train.zip is corrupt") and "Kaggle's copy may be damaged" in message
    assert "the next run downloads it again" in message and "\n" not in message
    assert data_files(dest) == {"sample_submission.csv"}  # the damaged member is gone
    gets = len(fake_kaggle.blob_gets)
    competition.files["train.zip"] = MEMBER  # Kaggle fixed its copy
    pk.download("nested", dest)
    assert len(fake_kaggle.blob_gets) == gets + 1  # fetched again, not skipped as complete
    assert data_files(dest) == {"sample_submission.csv", "train/images/a.png", "train/masks/a.png"}


def test_podium_download_of_a_damaged_archive_is_one_line(kaggle_home, demo_paths, monkeypatch):
    import kaggle_layouts

    slug = "tgs-salt-identification-challenge"
    fake = FakeKaggle(key="podium-runsafe-key")
    layout = kaggle_layouts.tgs_salt(["a1", "b2"], ["c3"])
    fake.add_competition(FakeCompetition(slug, "TGS", layout))
    data = kaggle_home / "data"
    with fake:
        monkeypatch.setenv("KAGGLE_USERNAME", fake.username)
        monkeypatch.setenv("KAGGLE_KEY", fake.key)
        monkeypatch.setenv("PODIUM_FAKE_KAGGLE_URL", fake.url)
        monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests" / "kaggle_sitecustomize"))
        fake.corrupt_blob_gets = 1
        args = ["download", f"competition={slug}", f"paths.data_dir={data}"]
        proc = run_podium(*args, check=False, timeout=300)
        line = one_error_line(proc.stderr)
        assert proc.returncode == 1 and "the next run downloads it again" in line
        assert "is corrupt" in line and fake.key not in proc.stderr
        proc = run_podium(*args, timeout=300)
        assert "ready" in proc.stdout
