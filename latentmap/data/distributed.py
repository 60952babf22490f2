"""torch.distributed for build-data: which shards this process builds, and waiting for the others.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) a process group is created (NCCL on CUDA,
gloo on the CPU) and rank ``r`` of ``W`` builds the shards ``i`` with ``i % W == r``. Without it the
process is rank 0 of 1 and every call here is a no-op.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Ranks wait for each other at the end of their share of shards, which can be hours apart on
# uneven machines; a crashed rank is detected by torchrun, which stops the others.
BARRIER_TIMEOUT = datetime.timedelta(hours=12)


@dataclass
class DistContext:
    """Rank, world size and local rank of this process; ``owns_group`` if it created the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device_type: str = "cpu") -> "DistContext":
        """Join the torchrun process group if there is one (``WORLD_SIZE`` > 1), else rank 0 of 1."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=False)
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=BARRIER_TIMEOUT)
        return cls(rank, world_size, local_rank, owns_group=True)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    def total(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (for the end-of-build summary)."""
        if self.world_size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def owns_shard(self, index: int) -> bool:
        return index % self.world_size == self.rank
