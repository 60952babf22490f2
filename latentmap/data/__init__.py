"""Datasets of (generator latent, encoder image embedding) pairs: building, storing and reading them.

- ``builder``: the build-data loop (draw, synthesise, embed, write shards; resume; torchrun) and
  ``build_data``, the task behind ``latentmap build-data`` and ``latentmap run``.
- ``shards``: the self-checking shard file; ``manifest``: ``manifest.json`` and its ``Manifest``.
- ``reader``: ``ShardDataset``, shuffled DDP-aware batches for training.
- ``stats``, ``seeds``, ``previews``: the small pieces they share (the torchrun world is
  :mod:`latentmap.distributed`, crash-safe writes :mod:`latentmap.atomic`).
- ``augment``: pseudo-text augmentation of conditions (used by training).
"""

from latentmap.data.manifest import Manifest, load_manifest
from latentmap.data.reader import ShardDataset

__all__ = ["Manifest", "ShardDataset", "load_manifest"]
