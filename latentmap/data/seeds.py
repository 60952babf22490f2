"""Independent, reproducible random streams derived from one user seed.

Every shard of a dataset (and every epoch and shuffle window of the reader) gets its own
``torch.Generator`` seeded from a hash of the user seed and its position. Streams therefore do not
depend on which process built what, in which order, or how far an earlier run got: a resumed build,
a one-process build and a torchrun build draw exactly the same numbers for shard ``i``.
"""

from __future__ import annotations

import hashlib

import torch

# torch.Generator.manual_seed accepts 64-bit values; 63 bits keep every seed a positive int.
_SEED_BITS = 63


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of ints/strings (SHA-256 of their text, so stable across versions)."""
    text = "/".join(str(part) for part in parts)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << _SEED_BITS) - 1)


def seeded_generator(*parts: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by ``derive_seed(*parts)``."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(derive_seed(*parts))
    return generator


def shard_generator(seed: int, index: int) -> torch.Generator:
    """The random stream of dataset shard ``index`` for user seed ``seed``."""
    return seeded_generator("latentmap-shard", seed, index)
