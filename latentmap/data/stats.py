"""Exact streaming statistics: count, mean and sum of squared deviations (M2) in float64.

Each shard stores its own ``(count, mean, M2)``; the dataset statistics are the merge of the
shards' in shard order (Chan, Golub & LeVeque's pairwise update). Because a shard's moments are
computed from its stored values alone and merged in a fixed order, the result does not depend on
the batch size, the number of processes or how often the build was interrupted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Moments:
    """Per-feature moments over ``count`` samples; ``mean`` and ``m2`` are float64 of the feature shape."""

    count: int
    mean: Tensor
    m2: Tensor

    @classmethod
    def of(cls, values: Tensor) -> "Moments":
        """Moments over the first axis of ``values`` (N, ...), computed in float64 (two-pass, exact)."""
        # A private float64 copy (copy=True even if ``values`` is float64), so the deviations can be
        # formed in place: one shard-sized float64 temporary instead of three, with the same values.
        x = values.to(torch.float64, copy=True)
        count = int(x.shape[0])
        if count == 0:
            zeros = torch.zeros(x.shape[1:], dtype=torch.float64)
            return cls(0, zeros, zeros.clone())
        mean = x.mean(dim=0)
        m2 = x.sub_(mean).square_().sum(dim=0)
        return cls(count, mean, m2)

    def merge(self, other: "Moments") -> "Moments":
        """Moments of the union of both sample sets (Chan et al.'s parallel update)."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        total = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / total)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / total)
        return Moments(total, mean, m2)

    def std(self, correction: int = 1) -> Tensor:
        """Standard deviation (``correction=1``: unbiased, as torch.std and clip2latent use)."""
        denominator = max(self.count - correction, 1)
        return (self.m2 / denominator).sqrt()


def merge_all(parts: Iterable[Moments]) -> Moments:
    """Merge moments left to right (the order matters for the last bits; callers use shard order)."""
    merged: Moments | None = None
    for part in parts:
        merged = part if merged is None else merged.merge(part)
    if merged is None:
        raise ValueError("merge_all needs at least one Moments")
    return merged
