"""Reading a dataset for training: shuffled batches of (latents, embeddings), DDP-aware, resumable.

The order of an epoch is a pure function of ``(seed, epoch)``: the training shards are put in a
random order, grouped in windows of ``window_shards`` consecutive shards, and the samples of each
window are permuted. That defines one stream of every training sample; global batch ``g`` is the
stream positions ``[g * B * W, (g + 1) * B * W)`` and rank ``r`` of ``W`` takes its ``r``-th part, so
ranks see disjoint samples and together every sample exactly once per epoch. Only one window (plus
the next, prefetched) is in memory, in the storage dtype: memory does not grow with the dataset.
Resuming at ``start_batch`` loads only the windows from that batch on.

The last ``holdout`` samples of the dataset are never yielded; ``holdout_set()`` returns them for
validation. The last batch of an epoch may be smaller (split as evenly as possible over ranks); it is
dropped only when it has fewer samples than there are ranks, so no rank ever gets an empty batch.
"""

from __future__ import annotations

import warnings

import bisect
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from latentmap.data.manifest import Manifest, load_manifest
from latentmap.data.seeds import seeded_generator
from latentmap.data.shards import read_shard
from latentmap.errors import LatentmapError

DEFAULT_WINDOW_SHARDS = 2


@dataclass(frozen=True)
class _Unit:
    """The training rows of one shard: the first ``rows`` samples of the shard at ``position``."""

    position: int
    rows: int


@dataclass
class _Window:
    latents: Tensor
    embeddings: Tensor


class ShardDataset:
    """Batches of (latents (B, tokens, dim), embeddings (B, D)) float32 from a dataset folder."""

    def __init__(
        self,
        root: str | Path,
        *,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        holdout: int = 0,
        device: str | torch.device = "cpu",
        window_shards: int = DEFAULT_WINDOW_SHARDS,
        prefetch: bool = True,
    ) -> None:
        self.manifest: Manifest = load_manifest(root)
        self.root = Path(root)
        if batch_size < 1:
            raise LatentmapError(f"batch_size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise LatentmapError(f"rank {rank} is not in 0..{world_size - 1} (world_size {world_size})")
        if window_shards < 1:
            raise LatentmapError(f"window_shards must be at least 1, got {window_shards}")
        total = self.manifest.samples
        if not 0 <= holdout < total:
            raise LatentmapError(f"holdout {holdout} must be in 0..{total - 1} for dataset {self.root} of {total} samples")
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.holdout = holdout
        self.device = torch.device(device)
        self.window_shards = window_shards
        self.prefetch = prefetch
        self._verified: set[str] = set()  # shard files whose SHA-256 this process has checked
        self.train_samples = total - holdout
        if self.train_samples < world_size:
            raise LatentmapError(
                f"dataset {self.root} has {self.train_samples} training samples, fewer than {world_size} ranks"
            )

        counts = [int(entry["count"]) for entry in self.manifest.shards]
        if sum(counts) != total:
            raise LatentmapError(f"{self.root}/manifest.json: shard counts sum to {sum(counts)}, not samples={total}")
        self._starts = [0]
        for count in counts:
            self._starts.append(self._starts[-1] + count)
        self._units = [
            _Unit(position, min(count, self.train_samples - start))
            for position, (start, count) in enumerate(zip(self._starts, counts))
            if start < self.train_samples
        ]
        global_batch = batch_size * world_size
        if global_batch > self.train_samples:
            warnings.warn(
                f"the batch ({global_batch} samples) is larger than dataset {self.root}'s {self.train_samples} "
                "training samples: every step sees the whole dataset once; build more data or lower train.batch_size",
                stacklevel=2,
            )
        full, rest = divmod(self.train_samples, global_batch)
        self.batches_per_epoch = full + (1 if rest >= world_size else 0)

    def _read(self, entry: dict) -> tuple[Tensor, Tensor]:
        """One shard's tensors; its bytes are checked against the manifest's SHA-256 the first time it is read."""
        file = entry["file"]
        expected = entry.get("sha256") if file not in self._verified else None
        tensors = read_shard(self.root / file, expected_count=int(entry["count"]), expected_sha256=expected)
        self._verified.add(file)
        return tensors

    def __len__(self) -> int:
        return self.batches_per_epoch

    # -- the order of an epoch -------------------------------------------------------------------
    def _windows(self, epoch: int) -> list[list[_Unit]]:
        if self.shuffle:
            order = torch.randperm(len(self._units), generator=seeded_generator("reader-shards", self.seed, epoch))
            units = [self._units[i] for i in order.tolist()]
        else:
            units = list(self._units)
        return [units[i : i + self.window_shards] for i in range(0, len(units), self.window_shards)]

    def _load_window(self, epoch: int, number: int, units: list[_Unit]) -> _Window:
        latents, embeddings = [], []
        for unit in units:
            entry = self.manifest.shards[unit.position]
            shard_latents, shard_embeddings = self._read(entry)
            latents.append(shard_latents[: unit.rows])
            embeddings.append(shard_embeddings[: unit.rows])
        window = _Window(torch.cat(latents), torch.cat(embeddings))
        if self.shuffle:
            size = window.latents.shape[0]
            perm = torch.randperm(size, generator=seeded_generator("reader-window", self.seed, epoch, number))
            window = _Window(window.latents[perm], window.embeddings[perm])
        return window

    def _rank_range(self, batch: int) -> tuple[int, int]:
        """Stream positions [start, stop) of this rank's part of global batch ``batch``."""
        global_batch = self.batch_size * self.world_size
        begin = batch * global_batch
        length = min(global_batch, self.train_samples - begin)
        base, extra = divmod(length, self.world_size)
        offset = self.rank * base + min(self.rank, extra)
        size = base + (1 if self.rank < extra else 0)
        return begin + offset, begin + offset + size

    # -- iteration -------------------------------------------------------------------------------
    def batches(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's batches of ``epoch`` from ``start_batch`` on, as float32 on ``device``."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise LatentmapError(f"start_batch {start_batch} is outside 0..{self.batches_per_epoch} for this dataset")
        windows = self._windows(epoch)
        starts = [0]
        for units in windows:
            starts.append(starts[-1] + sum(unit.rows for unit in units))
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentmap-reader") if self.prefetch else None
        loaded: dict[int, Future[_Window] | _Window] = {}

        def window(number: int) -> _Window:
            for stale in [k for k in loaded if k < number]:
                del loaded[stale]
            if number not in loaded:
                loaded[number] = self._load_window(epoch, number, windows[number])
            if executor is not None and number + 1 < len(windows) and number + 1 not in loaded:
                loaded[number + 1] = executor.submit(self._load_window, epoch, number + 1, windows[number + 1])
            item = loaded[number]
            if isinstance(item, Future):
                item = loaded[number] = item.result()
            return item

        try:
            for batch in range(start_batch, self.batches_per_epoch):
                position, stop = self._rank_range(batch)
                latent_parts, embed_parts = [], []
                while position < stop:
                    number = bisect.bisect_right(starts, position) - 1
                    current = window(number)
                    take = min(stop, starts[number + 1])
                    rows = slice(position - starts[number], take - starts[number])
                    latent_parts.append(current.latents[rows])
                    embed_parts.append(current.embeddings[rows])
                    position = take
                yield self._to_device(latent_parts), self._to_device(embed_parts)
        finally:
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)

    def _to_device(self, parts: list[Tensor]) -> Tensor:
        joined = parts[0] if len(parts) == 1 else torch.cat(parts)
        return joined.to(device=self.device, dtype=torch.float32, copy=True)

    def holdout_set(self) -> tuple[Tensor, Tensor]:
        """The held-out (latents, embeddings): the dataset's last ``holdout`` samples, float32 on ``device``."""
        if self.holdout == 0:
            shape = self.manifest.latent_shape
            return (
                torch.zeros(0, *shape, device=self.device),
                torch.zeros(0, self.manifest.embed_dim, device=self.device),
            )
        latents, embeddings = [], []
        for position, entry in enumerate(self.manifest.shards):
            start, stop = self._starts[position], self._starts[position + 1]
            if stop <= self.train_samples:
                continue
            shard_latents, shard_embeddings = self._read(entry)
            first = max(0, self.train_samples - start)
            latents.append(shard_latents[first:])
            embeddings.append(shard_embeddings[first:])
        return self._to_device(latents), self._to_device(embeddings)
