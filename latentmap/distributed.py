"""The torchrun world of build-data and train: which process this is, its device, and collectives.

``torchrun --nproc-per-node N -m latentmap build-data|train RECIPE`` (or ``--nnodes`` for several
machines) sets RANK / WORLD_SIZE / LOCAL_RANK; ``join_world`` then joins the process group (NCCL
between GPUs, gloo on the CPU). A plain ``latentmap ...`` is rank 0 of 1 and every collective here is
a no-op, so callers never branch on whether they run distributed.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from latentmap.options import resolve_device

__all__ = ["TIMEOUT", "World", "join_world", "main_process"]

# How long a collective (a barrier above all) may wait for the other processes. Long on purpose:
# build-data's ranks meet at a barrier after their share of shards, which can finish hours apart on
# uneven machines or when some ranks resume mostly complete shards; in training the other ranks wait
# while rank 0 validates and writes checkpoints. A crashed process is noticed by torchrun, which stops
# the others at once; only a process that hangs without dying is reported this late.
TIMEOUT = datetime.timedelta(hours=12)


@dataclass
class World:
    """Where this process stands: its rank among ``size`` processes, its device, and whether it
    created the process group (and so destroys it in ``close``)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes shared files, logs and validates."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group if this world created it.

        On a normal exit every rank first meets the others at a barrier, so that no process tears
        down its connections (and exits) while another is still finishing its last collective with
        it; gloo's threads in the slower process then die unjoined ("terminate called without an
        active exception", exit 1 after a correct build). While an exception propagates (called
        from a ``finally``) there is no barrier: the other ranks may never arrive, and torchrun stops
        them when this process dies.
        """
        if self.owns_group and dist.is_initialized():
            if sys.exc_info()[0] is None:
                dist.barrier()
            dist.destroy_process_group()
        self.owns_group = False

    def owns_shard(self, index: int) -> bool:
        """Rank ``r`` of ``W`` builds the shards ``i`` with ``i % W == r``."""
        return index % self.size == self.rank

    def total(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes (e.g. build-data's end-of-build counts)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().tolist()

    def mean_across(self, value: Tensor) -> Tensor:
        """The mean of a tensor over all processes (e.g. the logged training loss)."""
        if not self.distributed:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.size

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every process (e.g. "stop now")."""
        if not self.distributed:
            return flag
        tensor = torch.tensor([int(flag)], device=self._collective_device())
        dist.broadcast(tensor, src=0)
        return bool(tensor.item())

    def _collective_device(self) -> torch.device:
        """Where a tensor made for a collective must live: this process's GPU under NCCL, else the CPU."""
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def join_world(device_name: str | torch.device | None, *, timeout: datetime.timedelta = TIMEOUT) -> World:
    """This process's world: join torchrun's process group if ``WORLD_SIZE`` > 1, pick its device.

    ``device_name`` is read as ``resolve_device`` reads it (``auto``, ``cpu``, ``cuda``, ``cuda:1``),
    a bare ``cuda`` becoming this process's GPU ``cuda:LOCAL_RANK``. If a process group exists already
    (a caller set one up), it is used and left open by ``close``.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if size <= 1:
        return World(local_rank=local_rank, device=device)
    if dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group=False)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return World(rank, size, local_rank, device, owns_group=True)


def main_process() -> bool:
    """False only in a torchrun process of rank > 0: for printing once after the world is closed."""
    return int(os.environ.get("RANK", "0")) == 0
