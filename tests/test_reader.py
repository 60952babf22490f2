"""ShardDataset: every sample once per epoch, disjoint ranks, deterministic order, exact resume, holdout."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

import helpers_tiny
import latentmap
from latentmap.data import reader as reader_module
from latentmap.data.builder import BuildConfig, build_dataset
from latentmap.data.reader import ShardDataset
from latentmap.data.shards import read_shard
from latentmap.errors import LatentmapError

SAMPLES, SHARD = 1050, 100  # 11 shards, the last one half full


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    helpers_tiny.ensure_registered()
    root = tmp_path_factory.mktemp("reader") / "data"
    with helpers_tiny.single_thread():
        generator = latentmap.get_generator("tiny-test", space="w3")
        encoder = latentmap.get_encoder("tiny-test")
        build_dataset(generator, encoder, BuildConfig(out=root, samples=SAMPLES, shard_size=SHARD, progress=False))
    return root


@pytest.fixture(scope="module")
def stored(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (latent, embedding) in dataset order, float32."""
    files = sorted(dataset.glob("shard-*.safetensors"))
    parts = [read_shard(f) for f in files]
    return torch.cat([p[0] for p in parts]).float(), torch.cat([p[1] for p in parts]).float()


def rows(latents: torch.Tensor) -> Counter:
    """Multiset of samples (latents are continuous random draws: all distinct)."""
    return Counter(map(tuple, latents.reshape(latents.shape[0], -1).tolist()))


def epoch(ds: ShardDataset, number: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(ds.batches(number, start))


def test_one_rank_sees_every_training_sample_exactly_once_and_pairs_stay_together(dataset, stored):
    ds = ShardDataset(dataset, batch_size=64, seed=5, holdout=70)
    batches = epoch(ds, 0)
    assert len(batches) == ds.batches_per_epoch == 16  # ceil(980 / 64)
    assert [b[0].shape[0] for b in batches[-2:]] == [64, 980 - 15 * 64]
    latents = torch.cat([b[0] for b in batches])
    embeddings = torch.cat([b[1] for b in batches])
    assert latents.dtype == torch.float32 and latents.shape[1:] == (3, 8) and embeddings.shape[1:] == (16,)
    assert rows(latents) == rows(stored[0][: SAMPLES - 70])
    # each yielded embedding is the one stored with its latent
    index = {key: i for i, key in enumerate(map(tuple, stored[0].reshape(SAMPLES, -1).tolist()))}
    positions = torch.tensor([index[key] for key in map(tuple, latents.reshape(latents.shape[0], -1).tolist())])
    assert torch.equal(embeddings, stored[1][positions])
    assert not torch.equal(positions, torch.sort(positions).values)  # shuffled


def test_holdout_is_the_last_samples_and_never_yielded(dataset, stored):
    ds = ShardDataset(dataset, batch_size=100, holdout=170)
    held_latents, held_embeddings = ds.holdout_set()
    assert torch.equal(held_latents, stored[0][-170:]) and torch.equal(held_embeddings, stored[1][-170:])
    seen = rows(torch.cat([b[0] for b in epoch(ds, 2)]))
    assert not set(seen) & set(rows(held_latents))
    assert ShardDataset(dataset, batch_size=8).holdout_set()[0].shape == (0, 3, 8)


@pytest.mark.parametrize(("world_size", "batch_size"), [(2, 64), (3, 50)])
def test_ranks_are_disjoint_cover_everything_and_step_together(dataset, stored, world_size, batch_size):
    ranks = [ShardDataset(dataset, batch_size=batch_size, seed=1, rank=r, world_size=world_size, holdout=13)
             for r in range(world_size)]
    per_rank = [epoch(ds, 4) for ds in ranks]
    assert len({len(b) for b in per_rank}) == 1  # DDP needs the same number of steps on every rank
    assert all(b[0].shape[0] >= 1 for batches in per_rank for b in batches)
    seen = [rows(torch.cat([b[0] for b in batches])) for batches in per_rank]
    for a in range(world_size):
        for b in range(a + 1, world_size):
            assert not set(seen[a]) & set(seen[b])
    assert sum(seen, Counter()) == rows(stored[0][: SAMPLES - 13])


def test_order_is_a_pure_function_of_seed_and_epoch(dataset):
    first = [b[0] for b in epoch(ShardDataset(dataset, batch_size=32, seed=7), 3)]
    again = [b[0] for b in epoch(ShardDataset(dataset, batch_size=32, seed=7, prefetch=False), 3)]
    other_epoch = [b[0] for b in epoch(ShardDataset(dataset, batch_size=32, seed=7), 4)]
    other_seed = [b[0] for b in epoch(ShardDataset(dataset, batch_size=32, seed=8), 3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other_epoch[0])
    assert not torch.equal(first[0], other_seed[0])


def test_resume_mid_epoch_is_exact_and_skips_reading_earlier_shards(dataset, monkeypatch):
    ds = ShardDataset(dataset, batch_size=40, seed=2, window_shards=2, prefetch=False)
    full = epoch(ds, 1)
    reads: list[str] = []
    real = reader_module.read_shard

    def counting(path, **kwargs):
        reads.append(Path(path).name)
        return real(path, **kwargs)

    monkeypatch.setattr(reader_module, "read_shard", counting)
    start = 20  # 800 of 1050 samples in: the last windows only
    resumed = epoch(ds, 1, start)
    assert len(resumed) == len(full) - start
    for (a, b), (c, d) in zip(full[start:], resumed, strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)
    assert len(reads) <= 4  # at most the two windows the remaining batches span, not all 11 shards
    reads.clear()
    epoch(ds, 1)
    assert sorted(reads) == sorted(p.name for p in dataset.glob("shard-*.safetensors"))  # each shard once


def test_no_shuffle_yields_dataset_order(dataset, stored):
    ds = ShardDataset(dataset, batch_size=128, shuffle=False)
    latents = torch.cat([b[0] for b in epoch(ds, 0)])
    assert torch.equal(latents, stored[0])


def test_memory_is_bounded_to_a_window(dataset, monkeypatch):
    loaded_windows = []
    real = ShardDataset._load_window

    def tracking(self, epoch_number, number, units):
        loaded_windows.append(sum(unit.rows for unit in units))
        return real(self, epoch_number, number, units)

    monkeypatch.setattr(ShardDataset, "_load_window", tracking)
    ds = ShardDataset(dataset, batch_size=16, window_shards=3)
    for _ in ds.batches(0):
        pass
    assert max(loaded_windows) <= 3 * SHARD and sum(loaded_windows) == SAMPLES


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"holdout": SAMPLES}, "holdout 1050 must be in 0..1049"),
        ({"rank": 2, "world_size": 2}, "rank 2 is not in 0..1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
    ],
)
def test_bad_arguments_are_named(dataset, kwargs, message):
    options = {"batch_size": 8, **kwargs}
    with pytest.raises(LatentmapError, match=message):
        ShardDataset(dataset, **options)


def test_missing_or_unfinished_datasets_are_named(tmp_path, dataset):
    with pytest.raises(LatentmapError, match="does not exist"):
        ShardDataset(tmp_path / "nowhere", batch_size=8)
    with pytest.raises(LatentmapError, match="holds no manifest.json"):
        ShardDataset(tmp_path, batch_size=8)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["complete"] = False
    (unfinished / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LatentmapError, match="has not finished"):
        ShardDataset(unfinished, batch_size=8)
    broken = tmp_path / "broken"
    broken.mkdir()
    manifest["complete"] = True
    (broken / "manifest.json").write_text(json.dumps(manifest))
    ds = ShardDataset(broken, batch_size=8, shuffle=False)
    with pytest.raises(LatentmapError, match="shard-00000.safetensors is missing"):
        next(ds.batches(0))


def test_a_corrupted_shard_is_named_not_trained_on(dataset: Path, tmp_path: Path) -> None:
    """A zeroed 4 KiB block once trained with exit 0: the manifest's SHA-256 is checked on first read."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    victim = copy / manifest["shards"][0]["file"]
    data = bytearray(victim.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(min(4096, len(data) - middle))
    victim.write_bytes(bytes(data))
    ds = ShardDataset(copy, batch_size=8, seed=0, prefetch=False)
    with pytest.raises(LatentmapError, match=rf"{victim.name} is corrupted: its SHA-256 differs from the one in manifest.json"):
        for _ in ds.batches(0):
            pass


def test_a_batch_larger_than_the_dataset_is_said(dataset: Path) -> None:
    with pytest.warns(UserWarning, match="larger than dataset"):
        ShardDataset(dataset, batch_size=100_000, seed=0)
