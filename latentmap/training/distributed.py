"""Multi-process training through torchrun: process group set-up, device choice, rank-0 helpers.

``torchrun --nproc-per-node N -m latentmap train recipe.yaml`` (or ``--nnodes`` for several machines)
sets RANK / WORLD_SIZE / LOCAL_RANK; a plain ``latentmap train`` runs as the only process. NCCL
is used between GPUs, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from latentmap.options import resolve_device


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among ``size`` processes and its device."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files, logs and validates."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup_world(device_name: str) -> World:
    """Join the torchrun process group if launched by torchrun; pick this process's device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return World(rank=rank, size=size, local_rank=local_rank, device=device)


def teardown_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def mean_across(world: World, value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar tensor over all processes (for logging the global loss)."""
    if not world.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / world.size


def broadcast_flag(world: World, flag: bool) -> bool:
    """Rank 0's ``flag`` on every process (e.g. "stop now")."""
    if not world.distributed:
        return flag
    tensor = torch.tensor([1 if flag else 0], device=world.device if world.device.type == "cuda" else "cpu")
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())
