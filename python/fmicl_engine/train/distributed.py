"""The process group of a torchrun job, and the few host-side collectives the engine needs.

``torchrun --nproc_per_node=G -m fmicl_engine run CONFIG`` starts G processes with RANK,
WORLD_SIZE, LOCAL_RANK and a rendezvous address in their environment; a plain
``fmicl-engine run`` is a world of one and initialises nothing. Training collectives (DDP's
gradient all-reduce, the loss's all-gather, synchronised batch norm) run on the default group:
NCCL on CUDA, gloo on CPU. Control decisions (stop now? which checkpoint?) are host values; on
CUDA they go through a second, gloo, group so that deciding them never waits on the GPU.

Every collective has the configured timeout (``run.dist_timeout_s``): a rank that dies leaves
the others with an error after at most that long, never a hang; torchrun then stops the job and
names the rank that failed first.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    control_group: Any = None  # gloo group for host values; None in a world of one

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_name: str, timeout_s: int) -> DistContext:
    """The process group of this torchrun job (or a world of one) and this rank's device."""
    world_size = world_size_from_env()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))  # the rank itself: from the process group
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device("cuda", local_rank) if device_name == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size == 1:
        return DistContext(0, 1, 0, device)
    timeout = datetime.timedelta(seconds=timeout_s)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timeout, device_id=device if device.type == "cuda" else None)
    control = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else dist.group.WORLD
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, control)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (a host-side all-reduce; no device sync)."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=ctx.control_group)
    return bool(value.item())


def gather_objects(ctx: DistContext, obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj, group=ctx.control_group)
    return out


def from_main(ctx: DistContext, compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0, its result (or the exception it raised) on every rank.

    Decisions that read or write the run directory (the lock, the checkpoint to resume from, a
    refused resume) are made once, by rank 0, and every rank then acts on the same outcome.
    """
    if not ctx.distributed:
        return compute()
    from fmicl_engine.config import ConfigError

    box: list[Any] = [None]
    if ctx.is_main:
        try:
            box[0] = ("ok", compute())
        except ConfigError as err:  # sent as its parts: an exception's pickle need not round-trip
            box[0] = ("config", (err.key, str(err)))
        except Exception as err:
            box[0] = ("error", f"rank 0: {type(err).__name__}: {err}")
    dist.broadcast_object_list(box, src=0, group=ctx.control_group)
    kind, value = box[0]
    if kind == "config":
        key, text = value
        error = ConfigError("", text)
        error.key = key
        raise error
    if kind == "error":
        raise RuntimeError(value)
    return value


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier(group=ctx.control_group)
