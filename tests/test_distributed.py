"""The one torchrun world (latentmap.distributed): alone it is rank 0 of 1 and every collective is a
no-op; under torchrun's variables it joins a process group with the right backend and timeout; and
two real gloo processes agree on sums, means and rank 0's flag."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from latentmap.distributed import TIMEOUT, World, join_world, main_process

TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_without_torchrun_the_world_is_rank_0_of_1_and_collectives_are_no_ops(no_torchrun):
    world = join_world("cpu")
    assert (world.rank, world.size, world.local_rank, world.device) == (0, 1, 0, torch.device("cpu"))
    assert world.is_main and not world.distributed and not world.owns_group
    assert not dist.is_initialized()
    assert all(world.owns_shard(i) for i in range(5))
    assert world.total([1.0, 2.5]) == [1.0, 2.5]
    loss = torch.tensor(0.25)
    assert world.mean_across(loss) is loss
    assert world.broadcast_flag(True) is True and world.broadcast_flag(False) is False
    world.barrier()
    world.close()
    assert main_process()


def test_shards_are_dealt_round_robin_over_the_ranks():
    worlds = [World(rank=r, size=3) for r in range(3)]
    assert [[i for i in range(8) if w.owns_shard(i)] for w in worlds] == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert [w.is_main for w in worlds] == [True, False, False]


def test_under_torchrun_variables_it_joins_gloo_on_the_cpu_with_the_long_timeout(monkeypatch):
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.append(kwargs))
    world = join_world("cpu")
    assert calls == [{"backend": "gloo", "timeout": TIMEOUT}]
    assert TIMEOUT.total_seconds() >= 6 * 3600  # build-data's ranks may finish hours apart
    assert (world.rank, world.size, world.owns_group, world.is_main, world.distributed) == (2, 4, True, False, True)
    assert not main_process()


def test_closing_meets_the_other_ranks_first_unless_an_exception_is_on_its_way(monkeypatch):
    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))
    World(rank=1, size=2, owns_group=True).close()
    assert calls == ["barrier", "destroy"]

    calls.clear()
    with pytest.raises(RuntimeError):
        world = World(rank=1, size=2, owns_group=True)
        try:
            raise RuntimeError("a model error on this rank")
        finally:
            world.close()
    assert calls == ["destroy"]  # the others may never reach a barrier

    calls.clear()
    World(rank=1, size=2, owns_group=False).close()  # a caller's group is left open
    assert calls == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(rank: int, port: int, results) -> None:
    import os

    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    world = join_world("cpu")
    try:
        total = world.total([1.0, float(rank)])
        mean = float(world.mean_across(torch.tensor(float(rank + 1))))
        flag = world.broadcast_flag(rank == 0)
        world.barrier()
        results.put((rank, world.size, world.owns_group, total, mean, flag))
    finally:
        world.close()


@pytest.mark.slow
def test_two_gloo_processes_sum_average_and_share_rank_0s_flag():
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_two_ranks, args=(_free_port(), results), nprocs=2, start_method="spawn")
    rows = sorted(results.get() for _ in range(2))
    assert rows == [(0, 2, True, [2.0, 1.0], 1.5, True), (1, 2, True, [2.0, 1.0], 1.5, True)]
