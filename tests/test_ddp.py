"""Distributed training on CPU (gloo): one run directory from N processes, torchrun and
`trainer.devices` agreeing bit for bit, resume, the same validation score on 1 and 2 processes,
2 processes with synced BatchNorm training as 1, failing workers, GPU leases."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_DEMO, TINY_TRAIN, podium_env, run_podium
from test_train import _tensors, assert_identical, final_weights

from podium import distributed as dist
from podium.competition import load_competition
from podium.config import compose_config
from podium.datacheck import check_samples
from podium.io import PodiumError

# Deterministic, a constant LR (so 1 epoch + resume equals 2 epochs), two steps per epoch.
DDP_TRAIN = [*TINY_DEMO, *TINY_TRAIN, "trainer.deterministic=true", "scheduler=constant",
             "trainer.limit_train_batches=2", "trainer.batch_size=2"]  # fmt: skip


@pytest.fixture(scope="module")
def odd_val_data(demo_data_dir, tmp_path_factory) -> Path:
    """A copy of the tiny demo with folds of its own: fold 0 validates on its first 11 images,
    an odd number."""
    data = tmp_path_factory.mktemp("odd_val") / "data"
    shutil.copytree(demo_data_dir, data / "demo_shapes")
    rows = (data / "demo_shapes" / "train.csv").read_text().splitlines()[1:]
    folds = [f"{row.split(',')[0]},{0 if i < 11 else 1 + i % 3}" for i, row in enumerate(rows)]
    (data / "demo_shapes" / "folds.csv").write_text("\n".join(["id,fold", *folds]) + "\n")
    return data


@pytest.fixture(scope="module")
def odd_val_paths(odd_val_data) -> list[str]:
    return [f"paths.data_dir={odd_val_data}", f"paths.runs_dir={odd_val_data.parent / 'runs'}"]


@pytest.fixture(scope="module")
def torchrun_run(odd_val_paths, tmp_path_factory) -> Path:
    """2 epochs on 2 processes started by an external torchrun. Each rank's Hydra gets its own
    directory (run_0, run_1); podium must keep rank 0's and remove the other."""
    base = tmp_path_factory.mktemp("torchrun")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "podium.cli", "train", *DDP_TRAIN, *odd_val_paths, "trainer.max_epochs=2",
        f"hydra.run.dir={base}/run_${{oc.env:RANK}}",
    ]  # fmt: skip
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=podium_env(), cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in base.iterdir()) == ["run_0"], proc.stderr
    return base / "run_0"


@pytest.mark.slow
def test_torchrun_job_writes_one_run(torchrun_run):
    summary = json.loads((torchrun_run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == 4
    assert summary["epochs_run"] == 2
    log = (torchrun_run / "podium.log").read_text()
    assert log.count("37 train / 11 val images, global batch 4 (2 x 2 devices x 1 accum)") == 1
    assert log.count("epoch 2: train loss") == 1  # rank 0 logs, once
    assert (torchrun_run / "config.yaml").is_file()


@pytest.mark.slow
def test_devices_2_then_resume_matches_the_torchrun_job(torchrun_run, odd_val_paths, tmp_path):
    """`trainer.devices=2` (podium launches the workers) for 1 epoch, resumed to 2, ends with
    the torchrun job's weights, optimizer state and EMA bit for bit: every rank restored."""
    split = tmp_path / "split"
    run_podium("train", *DDP_TRAIN, *odd_val_paths, "trainer.max_epochs=1", "trainer.devices=2",
               f"hydra.run.dir={split}")  # fmt: skip
    run_podium("train", f"resume={split}", "trainer.max_epochs=2")  # devices=2 from the run
    summary = json.loads((split / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs_run"] == 2
    assert len((split / "metrics.csv").read_text().splitlines()) == 3
    assert_identical(torchrun_run, split)


@pytest.mark.slow
def test_two_process_validation_equals_one_process_on_the_same_checkpoint(torchrun_run):
    """The 2-process job scored its best epoch (11 images: rank 0 took 6, rank 1 took 5) and
    saved those weights as best.pt; one process scoring best.pt must get the same numbers."""
    from podium.competition import load_competition
    from podium.data import SegmentationDataset, build_transforms, split_samples
    from podium.losses import build_loss
    from podium.models import load_run_model
    from podium.run_state import Compute
    from podium.train import validate

    model, cfg = load_run_model(torchrun_run)
    competition = load_competition(cfg)
    folds = {i: int(f) for i, f in (line.split(",") for line in
             (competition.data_dir / "folds.csv").read_text().split()[1:])}  # fmt: skip
    _, val_samples = split_samples(competition.train_samples(), folds, int(cfg.fold))
    transform = build_transforms(cfg.augment, cfg.competition.image_size, train=False)
    dataset = SegmentationDataset(competition, val_samples, transform)
    loss_fn = build_loss(cfg.loss, competition.task)
    compute = Compute.for_trainer(cfg.trainer, torch.device("cpu"))  # as each rank had it
    # On one thread, as each rank ran (podium_env sets OMP_NUM_THREADS=1): on another thread
    # count convolutions sum in another order and a pixel at the threshold can flip (seen: 3e-5).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = validate(model, dataset, loss_fn, compute, cfg)
    finally:
        torch.set_num_threads(threads)

    summary = json.loads((torchrun_run / "summary.json").read_text())
    rows = (torchrun_run / "metrics.csv").read_text().splitlines()
    header, best = rows[0].split(","), rows[summary["best_epoch"]].split(",")
    two_loss = float(best[header.index("val_loss")])  # written with 6 decimals
    assert len(one["scores"]) == 11
    assert abs(one["score"] - summary["best_score"]) < 1e-6
    assert abs(one["loss"] - two_loss) < 1e-6
    oof = np.load(torchrun_run / "oof.npz")
    assert oof["ids"].tolist() == [s.id for s in val_samples]
    for i, probs in enumerate(one["probs"]):
        assert np.array_equal(oof[f"prob_{i}"], probs), i


@pytest.mark.slow
def test_worker_error_stops_podium_train(odd_val_data, tmp_path):
    """A corrupt validation image that only rank 1 reads: rank 0 finishes its share and waits in
    the gather; the job must still stop, with rank 1's error as one line."""
    data = tmp_path / "data"
    shutil.copytree(odd_val_data, data)
    second_val_id = (data / "demo_shapes" / "folds.csv").read_text().split()[2].split(",")[0]
    corrupt = data / "demo_shapes" / "train" / "images" / f"{second_val_id}.png"
    go_bad_after_the_data_check(data, corrupt)  # validation image 1: rank 1's first
    runs = tmp_path / "runs"
    proc = run_podium(
        "train", *DDP_TRAIN, f"paths.data_dir={data}", f"paths.runs_dir={runs}",
        "trainer.devices=2", check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.count(f"podium: error: {corrupt}: cannot read image") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    # One run directory was made (none per rank), and removed: it failed before any checkpoint.
    assert "removed" in proc.stdout + proc.stderr and "before its first checkpoint" in proc.stdout
    assert [p for p in (runs / "demo_shapes").glob("*") if p.is_dir()] == []


def go_bad_after_the_data_check(data: Path, image: Path) -> None:
    """Corrupt `image` as a file that goes bad after `podium train`'s data check passed it (which
    would otherwise refuse it before training): its clean verdict is in the check's cache, and
    the damage keeps the file's size and modification time."""
    cfg = compose_config("train", [*DDP_TRAIN, f"paths.data_dir={data}"])
    competition = load_competition(cfg)
    assert check_samples(competition, competition.train_samples(), "train").problems == []
    stat = image.stat()
    image.write_bytes(b"not a png".ljust(stat.st_size, b"\0"))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def raise_on_rank_1() -> None:
    dist.init_worker()
    if dist.rank() == 1:
        raise ValueError(f"injected at {time.time()!r}")
    dist.barrier()  # rank 0 would wait here for rank 1 until the collective timeout (30 min)


def test_failing_worker_stops_the_job_within_seconds(capfd):
    """Launched the way a job of a `hydra/launcher=joblib` sweep launches: from a process whose
    default start method is joblib's "loky"."""
    from joblib.externals.loky.backend import context  # noqa: F401  registers "loky"

    previous = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("loky", force=True)
    try:
        with pytest.raises(dist.WorkerError, match="rank 1 failed: ValueError: injected") as e:
            dist.launch(raise_on_rank_1, (), nprocs=2)
    finally:
        multiprocessing.set_start_method(previous, force=True)
    raised_at = float(re.search(r"injected at ([\d.]+)", str(e.value)).group(1))
    assert time.time() - raised_at < 10
    stderr = capfd.readouterr().err
    assert stderr.count("Traceback") == 1 and stderr.count("ValueError: injected") == 1, stderr


def test_gpu_leases_are_exclusive_and_wait_for_a_free_gpu(tmp_path):
    gpus = ["0", "1"]
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(dist.lease_gpus(1, gpus, tmp_path, poll_s=0.01))
        with dist.lease_gpus(1, gpus, tmp_path, poll_s=0.01) as second:
            assert sorted(first + second) == gpus
            got: list[list[str]] = []

            def third_job() -> None:
                with dist.lease_gpus(1, gpus, tmp_path, poll_s=0.01) as third:
                    got.append(third)

            waiting = threading.Thread(target=third_job)
            waiting.start()
            time.sleep(0.2)
            assert not got  # both GPUs are held
        waiting.join(timeout=5)
        assert got == [second]  # the GPU the second job gave back
    with pytest.raises(PodiumError, match="gpus_per_job=3: only 2 GPU"):
        dist.lease_gpus(3, gpus, tmp_path).__enter__()


def test_devices_setting_is_checked():
    assert dist.resolve_devices("auto") == max(1, torch.cuda.device_count())
    assert dist.resolve_devices(2) == 2
    for bad in ("two", 0):
        with pytest.raises(PodiumError, match="trainer.devices"):
            dist.resolve_devices(bad)


# -------------------------------------------------------------- 2 processes train as 1 process
def global_batch_step(sync_batchnorm: bool) -> dict[str, np.ndarray]:
    """One forward/backward of a conv-BN net with podium's default loss (BCE + batch Dice) on
    this rank's share of a fixed global batch of 8 (all of it in a single process)."""
    from omegaconf import OmegaConf
    from torch.nn.parallel import DistributedDataParallel

    from podium.losses import build_loss

    if dist.inside_launcher():
        dist.init_worker()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 1, 1),
    )  # fmt: skip
    images = torch.randn(8, 3, 8, 8) + torch.arange(8.0).view(8, 1, 1, 1)  # halves differ
    masks = (torch.rand(8, 1, 8, 8) > 0.7).float()
    rank, world = dist.rank(), dist.world_size()
    if sync_batchnorm:
        net = dist.convert_sync_batchnorm(net)
    model = DistributedDataParallel(net) if world > 1 else net
    loss_cfg = OmegaConf.create(
        {"weights": {"bce": 1.0, "dice": 1.0}, "dice": {"reduction": "batch", "smooth": 1.0}}
    )
    build_loss(loss_cfg, "binary")(model(images[rank::world]), masks[rank::world]).backward()
    out = {f"grad/{n}": p.grad.numpy().copy() for n, p in net.named_parameters()}
    out |= {f"buffer/{n}": b.numpy().copy() for n, b in net.named_buffers()}
    dist.shutdown()
    return out


@pytest.mark.slow
def test_synced_batchnorm_and_dice_make_2_processes_compute_1_process_gradients():
    """CPU runs podium's GlooSyncBatchNorm (torch's SyncBatchNorm needs CUDA); the batch Dice
    all-reduces its sums. Together: the gradients and running statistics of one process on the
    whole batch. Without synced BatchNorm they differ, so the comparison can fail."""
    one = global_batch_step(sync_batchnorm=False)  # a single process: plain BatchNorm
    synced = dist.launch(global_batch_step, (True,), nprocs=2)
    unsynced = dist.launch(global_batch_step, (False,), nprocs=2)
    for key, expected in one.items():
        for rank in (0, 1):
            np.testing.assert_allclose(synced[rank][key], expected, rtol=1e-5, atol=1e-6)
    weight_grad = "grad/1.weight"  # the BatchNorm scale
    assert np.abs(unsynced[0][weight_grad] - one[weight_grad]).max() > 1e-3


def relative_difference(a: dict, b: dict) -> float:
    """||a - b|| / ||b|| over every tensor of two state trees."""
    a, b = _tensors(a), _tensors(b)
    assert a.keys() == b.keys()
    diff = sum(float((a[k].double() - b[k].double()).square().sum()) for k in b)
    return (diff / sum(float(b[k].double().square().sum()) for k in b)) ** 0.5


@pytest.mark.slow
def test_two_processes_with_sync_batchnorm_train_as_one_process(demo_paths, tmp_path):
    """`podium train` end to end: 2 processes x batch 2 with synced BatchNorm against 1 process
    x batch 4, same data order and augmentation, 2 SGD steps. Measured: the final weights differ
    by 3.6e-4 (relative), as much as the same 1-process run on 1 vs 2 threads (3.8e-4: float
    order alone; 64 px images leave 2x2 maps where a ReLU flips on noise); without synced
    BatchNorm (BatchNorm over 2 images) by 4.3e-2."""
    common = [*DDP_TRAIN, *demo_paths, "optimizer=sgd", "trainer.max_epochs=1"]
    run_podium("train", *common, "trainer.devices=2", "trainer.sync_batchnorm=true",
               f"hydra.run.dir={tmp_path / 'two'}")  # fmt: skip
    run_podium("train", *common, "trainer.batch_size=4", f"hydra.run.dir={tmp_path / 'one'}")
    (two_model, two_ema, _), (one_model, one_ema, _) = (
        final_weights(tmp_path / name) for name in ("two", "one")
    )
    assert relative_difference(two_model, one_model) < 2e-3
    assert relative_difference(two_ema, one_ema) < 2e-3
