"""torch.distributed for podium: helpers that are no-ops in a single process (so the training loop
reads the same for 1 CPU, 1 GPU, N GPUs and several nodes), the launcher of local worker
processes, and GPU leases for running sweep jobs side by side.

Launching (`launch`): N worker processes on this machine through torch's elastic agent, the engine
torchrun runs. Workers get torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT...), so a worker started here and one started by an external `torchrun` run the same
code: `init_worker()`, then the work. Backend: nccl on CUDA (one GPU per process, by LOCAL_RANK),
gloo on CPU.

Failures: the first worker to raise records its error (first writer wins: a rank that dies of
"Connection closed by peer" because another rank crashed comes later and is ignored) and exits at
once, skipping interpreter teardown that can block or abort inside a collective. The agent then
stops the other workers and `launch` raises one error naming the rank; only that worker's
traceback is shown (none for a PodiumError, which stays one line).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from podium.io import PodiumError

__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "local_rank",
    "local_world_size",
    "barrier",
    "all_gather_objects",
    "gather_objects",
    "broadcast_object",
    "broadcast_buffers",
    "reduce_mean",
    "all_reduce_sum",
    "convert_sync_batchnorm",
    "GlooSyncBatchNorm",
    "inside_launcher",
    "resolve_devices",
    "cpu_count",
    "choose_cpu_threads",
    "init_worker",
    "shutdown",
    "launch",
    "WorkerError",
    "visible_gpus",
    "lease_gpus",
]

log = logging.getLogger(__name__)

# Collectives wait this long for a missing rank before failing: gloo's default, and longer than
# NCCL's 10 min so a slow rank-0 step (checkpoints, OOF files) never fails the others. A dead rank
# is normally caught by the launcher within a second.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


# -- who am I -----------------------------------------------------------------------------------
def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def local_world_size() -> int:
    """Processes of this job on this machine (1 outside a distributed job)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def inside_launcher() -> bool:
    """True when torchrun (or another launcher) already started this process as one worker."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


# -- collectives ------------------------------------------------------------------------------
def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-item list in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_objects(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's `obj`, in rank order, on rank `dst` only (None elsewhere): for large results
    that only the writer needs."""
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * world_size() if rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def gather_validation(scores: Sequence[tuple], arrays: Sequence[tuple], total: int) -> dict:
    """One validation pass's result from every rank's part: `scores` rows (index, score, loss)
    gathered on every rank (each needs the score for best/early stopping), `arrays` rows
    (index, probabilities, target[, P(not empty)]) on rank 0 only (what oof.npz holds).
    Every index in 0..total-1 must come exactly once."""
    gathered = sorted(item for part in all_gather_objects(list(scores)) for item in part)
    if [r[0] for r in gathered] != list(range(total)):
        raise RuntimeError(f"validation covered {len(gathered)} of {total} images")
    parts = gather_objects(list(arrays))  # None on ranks other than 0
    images = sorted((a for part in parts for a in part), key=lambda a: a[0]) if parts else []
    with_head = bool(images) and len(images[0]) > 3 and images[0][3] is not None
    return {
        "score": float(np.mean([r[1] for r in gathered])),
        "loss": float(np.mean([r[2] for r in gathered])),
        "scores": [r[1] for r in gathered],
        "probs": [a[1] for a in images],
        "masks": [a[2] for a in images],
        # the image-level head's P(mask not empty) per image; None without the head
        "nonempty": [a[3] for a in images] if with_head else None,
    }


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank `src`'s buffers (e.g. BatchNorm running statistics, which each rank
    updates from its own batches)."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=src)


def reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / world_size()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """`value` summed over the ranks, differentiably: the backward pass sums the ranks' gradients
    too, so a quantity every rank computes from global sums (a batch Dice, BatchNorm statistics)
    gets exactly the single-process gradient once DDP averages the ranks' parameter gradients."""
    if not is_distributed():
        return value
    return _AllReduceSum.apply(value)


class _AllReduceSum(torch.autograd.Function):
    """A blocking all-reduce (sum) whose backward all-reduces the gradient. Not torch's
    functional collectives: with hundreds of them per step (a synced BatchNorm layer takes
    two), a DataLoader worker forked at validation hung in CPython 3.11.7's after-fork cleanup
    (gh-112275: a lock another thread held at the fork) in two of the three `bench/ddp.py`
    runs made with them, and in neither of the two made with this. torch.distributed.nn's
    own version of this function is deprecated."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor) -> torch.Tensor:
        value = value.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


# -- BatchNorm over the global batch ----------------------------------------------------------
class GlooSyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the global batch, for CPU (gloo) jobs, where
    torch's SyncBatchNorm refuses to run (it is built on CUDA kernels). Two differentiable
    all-reduces per layer (sums and counts, then squared deviations: no E[x^2] - E[x]^2
    cancellation). Same parameters and buffers as BatchNorm, so checkpoints load into a plain
    model; in eval mode, or in a single process, it is plain BatchNorm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed() and world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        x32 = x.float()
        local_count = x32.new_full((1,), x.numel() // x.shape[1])
        sums = all_reduce_sum(torch.cat([x32.sum(dims), local_count]))
        count, mean = sums[-1], sums[:-1] / sums[-1]
        centered = x32 - mean.view(shape)
        var = all_reduce_sum((centered * centered).sum(dims)) / count
        out = centered * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():  # as BatchNorm: the unbiased variance, momentum or running mean
                self.num_batches_tracked.add_(1)
                factor = self.momentum
                if factor is None:
                    factor = 1.0 / float(self.num_batches_tracked)
                unbiased = var * (count / (count - 1).clamp_min(1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return out.to(x.dtype)


def convert_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with every BatchNorm computing its statistics over the global batch: torch's
    SyncBatchNorm on GPUs, GlooSyncBatchNorm on CPU."""
    first = next(module.parameters(), None)
    if first is not None and first.device.type != "cpu":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _replace_batchnorms(module)


def _replace_batchnorms(module: torch.nn.Module) -> torch.nn.Module:
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, GlooSyncBatchNorm
    ):
        synced = GlooSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, _replace_batchnorms(child))
    return module


# -- a worker's life --------------------------------------------------------------------------
def resolve_devices(value: int | str) -> int:
    """`trainer.devices` as a process count: `auto` = every visible GPU (1 on CPU)."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if value == "auto":
        return max(1, gpus)
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise PodiumError(f"trainer.devices={value}: expected a number or auto") from None
    if count < 1:
        raise PodiumError(f"trainer.devices={value}: must be at least 1")
    if gpus and count > gpus:
        raise PodiumError(f"trainer.devices={count}: only {gpus} GPU(s) visible")
    return count


def choose_cpu_threads(value: int | str, processes: int = 1) -> tuple[int, str]:
    """(torch threads, why) for a CPU process. An OMP_NUM_THREADS the user set stands; an int
    is taken as given; `auto` follows bench/threads.py (real TGS, Unet-MobileNetV2, 2 cores):
    with the cores idle, 2 threads stepped 1.5x faster than 1; with other work on every core,
    1 thread stepped 3.4x faster than 2 (oversubscribed threads wait on each other). So `auto`
    takes the cores other work leaves free, measured now, and at least one. Processes sharing
    the machine (DDP ranks) split the cores instead: their siblings would read as busy."""
    cores = cpu_count()
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    if value != "auto":
        return int(value), f"cpu_threads={value}"
    share = max(1, cores // max(1, processes))
    if processes > 1:
        return share, f"cpu_threads=auto: {cores} cores shared by {processes} processes"
    busy = busy_cores()
    if busy is None:
        return share, f"cpu_threads=auto: {cores} cores"
    threads = max(1, min(share, cores - round(busy)))
    return threads, f"cpu_threads=auto: {busy:.1f} of {cores} cores busy with other work"


def cpu_count() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def busy_cores(seconds: float = 0.3) -> float | None:
    """How many of this process's CPUs were busy over the next `seconds` (from /proc/stat, while
    this process sleeps: all of it is other work); None where there is no /proc/stat."""

    def sample() -> dict[str, tuple[int, int]]:
        times = {}
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    name, *fields = line.split()
                    # user nice system idle iowait irq softirq steal
                    ticks = [int(x) for x in fields[:8]]
                    times[name] = (sum(ticks), ticks[3] + ticks[4])
        return times

    try:
        before = sample()
        time.sleep(seconds)
        after = sample()
    except (OSError, ValueError, IndexError):
        return None
    mine = (
        [f"cpu{i}" for i in sorted(os.sched_getaffinity(0))]
        if hasattr(os, "sched_getaffinity")
        else list(after)
    )
    busy = 0.0
    for name in mine:
        if name in before and name in after:
            total = after[name][0] - before[name][0]
            idle = after[name][1] - before[name][1]
            busy += (total - idle) / total if total > 0 else 0.0
    return busy


def init_worker() -> None:
    """Join the process group described by torchrun's environment variables: nccl with this
    process's GPU (LOCAL_RANK) on CUDA, gloo on CPU."""
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)  # before NCCL starts, so each rank owns one GPU
        dist.init_process_group("nccl", timeout=COLLECTIVE_TIMEOUT, device_id=device)
        return
    # The ranks' CPU threads: train's resolve_device (trainer.cpu_threads) shares the cores.
    dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


class WorkerError(PodiumError):
    """A worker of a launched job failed; the message names the rank and the error."""


def launch(
    fn: Callable[..., Any], args: Sequence[Any], nprocs: int, env: dict[str, str] | None = None
) -> list[Any]:
    """Run `fn(*args)` in `nprocs` worker processes on this machine (spawned, so `fn` and `args`
    must pickle) and return their results in rank order. `env` is added to the workers'
    environment. A failing worker stops them all: see the module docstring."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nprocs,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as `torchrun --standalone` does
        max_restarts=0,  # a crash is a bug or a bad input; re-running it would only repeat it
        monitor_interval=0.1,
        start_method="spawn",  # fork is unsafe once torch has started threads
        shutdown_timeout=5,
    )
    with tempfile.TemporaryDirectory(prefix="podium-launch-") as tmp:
        error_file = str(Path(tmp) / "error.json")
        try:
            with (
                _environment(env or {}),
                _stdlib_start_method(),
                _quiet_torch_launcher_logs(),
                _restored_signal_handlers(),
            ):
                results = elastic_launch(config, _run_worker)(fn, error_file, *args)
        except ChildFailedError as e:
            raise _worker_error(e, error_file) from None
        except SignalException as e:  # the agent stopped the workers, then raised this
            if e.sigval == signal.SIGINT:
                raise KeyboardInterrupt from None
            raise WorkerError(f"stopped by {e.sigval.name}") from None
    return [results[r] for r in sorted(results)]


def _run_worker(fn: Callable[..., Any], error_file: str, *args: Any) -> Any:
    # A spawned process inherits "spawn" as its default start method; reset it to the platform's,
    # as under torchrun, so DataLoader workers start cheaply (fork on Linux).
    multiprocessing.set_start_method(None, force=True)
    try:
        return fn(*args)
    except BaseException as error:
        _record_first_error(error_file, error)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # no teardown: destroying a process group mid-collective can hang or abort


def _record_first_error(path: str, error: BaseException) -> None:
    record = {
        "rank": int(os.environ.get("RANK", 0)),
        "type": type(error).__name__,
        "message": str(error),
        "traceback": traceback.format_exc(),
        "podium_error": isinstance(error, PodiumError),
    }
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another rank failed first: its error is the root cause
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)


def _worker_error(error, error_file: str) -> PodiumError:
    """The one error to report for a failed job: a worker killed by a signal, else the first
    recorded exception (a PodiumError as is; anything else with its traceback printed once)."""
    failed_rank, failure = error.get_first_failure()
    if failure.exitcode is not None and failure.exitcode < 0:
        name = signal.Signals(-failure.exitcode).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return WorkerError(f"worker rank {failed_rank} was killed by {name}{hint}")
    if not os.path.isfile(error_file):
        return WorkerError(f"worker rank {failed_rank} exited with code {failure.exitcode}")
    with open(error_file) as f:
        record = json.load(f)
    if record["podium_error"]:
        return PodiumError(record["message"])
    sys.stderr.write(f"worker rank {record['rank']} failed:\n{record['traceback']}")
    sys.stderr.flush()
    return WorkerError(
        f"worker rank {record['rank']} failed: {record['type']}: {record['message']} "
        "(traceback above)"
    )


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for spawned workers, restoring them afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _stdlib_start_method() -> Iterator[None]:
    """A spawned child first re-applies its parent's default start method; inside a joblib
    (loky) worker, e.g. a job of a `hydra/launcher=joblib` sweep, that is "loky", which the
    child cannot resolve. Launch from the platform default instead."""
    current = multiprocessing.get_start_method(allow_none=True)
    if current is None or current in multiprocessing.get_all_start_methods():
        yield
        return
    multiprocessing.set_start_method(None, force=True)
    try:
        yield
    finally:
        multiprocessing.set_start_method(current, force=True)


@contextlib.contextmanager
def _restored_signal_handlers() -> Iterator[None]:
    """The agent turns SIGINT/SIGTERM/SIGHUP/SIGQUIT into its SignalException and leaves its
    handlers installed; put back the previous ones (Ctrl-C is KeyboardInterrupt again)."""
    signums = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT]
    saved = {signum: signal.getsignal(signum) for signum in signums}
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in saved.items():
                signal.signal(signum, handler)


@contextlib.contextmanager
def _quiet_torch_launcher_logs() -> Iterator[None]:
    """The elastic agent logs each failure with its own traceback (and formatting it imports
    torch._dynamo: seconds); podium reports the failure itself, once."""
    prefixes = ("torch.distributed.elastic", "torch.multiprocessing")
    names = [n for n in logging.root.manager.loggerDict if n.startswith(prefixes)]
    loggers = [logging.getLogger(n) for n in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# -- one job per GPU --------------------------------------------------------------------------
def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


@contextlib.contextmanager
def lease_gpus(
    count: int,
    gpus: Sequence[str] | None = None,
    lock_dir: Path | None = None,
    poll_s: float = 2.0,
) -> Iterator[list[str]]:
    """Hold `count` GPUs no other podium job on this machine holds, waiting until they are free.

    Each GPU is an exclusive lock on a file in `lock_dir`; the kernel drops the locks when the
    holder exits, so a crashed job never keeps its GPUs.
    """
    gpus = list(visible_gpus() if gpus is None else gpus)
    if count > len(gpus):
        raise PodiumError(f"trainer.gpus_per_job={count}: only {len(gpus)} GPU(s) visible")
    lock_dir = lock_dir or Path(tempfile.gettempdir()) / f"podium-gpu-locks-{os.getuid()}"
    lock_dir.mkdir(parents=True, exist_ok=True)
    waiting_logged = False
    while True:
        held: list[tuple[str, int]] = []
        for gpu in gpus:
            fd = os.open(lock_dir / f"gpu-{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            held.append((gpu, fd))
            if len(held) == count:
                break
        if len(held) == count:
            break
        for _, fd in held:
            os.close(fd)  # all or nothing, so two waiting jobs cannot each hold half
        if not waiting_logged:
            log.info("waiting for %d free GPU(s) of %s", count, ",".join(gpus))
            waiting_logged = True
        time.sleep(poll_s)
    try:
        yield [gpu for gpu, _ in held]
    finally:
        for _, fd in held:
            os.close(fd)
