"""Training on several processes with torch.distributed: the ranks torchrun starts, each rank's part of a
global batch, the few collectives training needs, and the torchrun command the train stage runs.

`train.batch_size` is the global batch. Every rank draws the same global batches from the seeded sampler
and computes a contiguous part of each, so N ranks after k steps have used exactly the samples one process
uses after k steps; DistributedDataParallel averages the ranks' gradients.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

DEVICES = ("cpu", "cuda")

Item = TypeVar("Item")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes and the device its model replica runs on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file; the other ranks only compute."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _torch_device(device: str, local_rank: int) -> torch.device:
    if device not in DEVICES:
        raise ValueError(f"train.device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no GPU here")
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(f"LOCAL_RANK {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                           "start at most that many processes per node")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


@contextmanager
def process_group(device: str) -> Iterator[Ranks]:
    """The ranks torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK (one rank when they are unset).

    Rank r uses the CPU, or GPU LOCAL_RANK for `device="cuda"`. Joins the process group (`nccl` between
    GPUs, `gloo` between CPU processes) unless the caller already did, and leaves a group it joined.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = _torch_device(device, local_rank)
    joined_here = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=torch_device if torch_device.type == "cuda" else None)
        joined_here = True
    try:
        if dist.is_initialized():
            yield Ranks(dist.get_rank(), dist.get_world_size(), torch_device)
        else:
            yield Ranks(0, 1, torch_device)
    finally:
        if joined_here:
            dist.destroy_process_group()


def shard(global_batch: Sequence[Item], rank: int, world_size: int) -> Sequence[Item]:
    """Rank `rank`'s contiguous part of a global batch: parts differ in size by at most one, and ranks
    past the end of a batch smaller than `world_size` get an empty part."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, {world_size})")
    size, extra = divmod(len(global_batch), world_size)
    start = rank * size + min(rank, extra)
    return global_batch[start:start + size + (rank < extra)]


def replicate(model: nn.Module, ranks: Ranks) -> nn.Module:
    """The model as a DDP replica that averages gradients over the ranks; the model itself on one rank."""
    if not ranks.distributed:
        return model
    # the buffers are item tables, equal on every rank and never updated: syncing them each step is waste
    return DistributedDataParallel(model, device_ids=[ranks.device.index] if ranks.device.type == "cuda" else None,
                                   forward_sync_buffers=False)


def sum_over_ranks(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """`values` summed element-wise over the ranks, in place."""
    if ranks.distributed:
        dist.all_reduce(values)
    return values


def from_main(value: Any, ranks: Ranks) -> Any:
    """Rank 0's `value` on every rank (any picklable object)."""
    if not ranks.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather(value: Any, ranks: Ranks) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not ranks.distributed:
        return [value]
    values: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(values, value)
    return values


def started_by_torchrun() -> bool:
    """Whether this process is a rank torchrun started (it sets WORLD_SIZE), so it must train, not launch."""
    return "WORLD_SIZE" in os.environ


def torchrun_command(nproc: int, module: str, args: Sequence[str]) -> list[str]:
    """`python -m module args` started on `nproc` processes of this machine by torchrun (a local rendezvous
    on a free port), with the interpreter running this code."""
    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", module, *args]


def run_with_torchrun(nproc: int, module: str, args: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    """Run `torchrun_command(...)` with this environment plus `env` and wait; a failing rank fails the call with
    torchrun's exit status."""
    command = torchrun_command(nproc, module, args)
    completed = subprocess.run(command, check=False, env={**os.environ, **(env or {})})
    if completed.returncode != 0:
        raise RuntimeError(f"torchrun on {nproc} processes exited with status {completed.returncode}: "
                           f"{' '.join(command)}")
