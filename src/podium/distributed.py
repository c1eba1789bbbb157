"""torch.distributed helpers that are no-ops in a single process, so the training loop reads the
same for 1 CPU, 1 GPU, N GPUs and several nodes."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "local_rank",
    "barrier",
    "all_gather_objects",
    "broadcast_object",
    "inside_launcher",
]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def inside_launcher() -> bool:
    """True when torchrun (or another launcher) already started this process as one worker."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


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


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / world_size()
