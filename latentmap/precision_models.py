"""A generator and an encoder whose forward passes run in a compute precision (the precision option).

One implementation for every generator and encoder (the core knows none of them): the models are
wrapped so that synthesis and image/text embedding run under :func:`latentmap.precision.autocast`,
while latents, the prior and everything stored stay float32 (outputs are cast back). ``float32``
wraps nothing; a precision the device cannot do natively is refused before any work.

Used by ``build-data`` (``data.precision`` / ``--precision``) and ``sample`` (``--precision``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from latentmap.interfaces import Encoder, Generator
from latentmap.precision import FLOAT32, autocast, canonical_precision, check_precision


class _Wrapped:
    """What a precision wrapper passes through to the model it wraps: identity, device, moves, and a
    plugin's own helpers (truncate, style mixing ...)."""

    inner: Any

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def to(self, device: torch.device | str) -> Any:
        self.inner.to(device)
        return self

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class PrecisionGenerator(_Wrapped, Generator):
    """A generator whose synthesis runs under autocast; images come back float32. Everything else is the inner one's."""

    def __init__(self, inner: Generator, precision: str) -> None:
        self.inner = inner
        self.precision = precision
        self.name, self.resolution, self.space = inner.name, inner.resolution, inner.space

    def sample_latents(self, n: int, *, generator: torch.Generator) -> Tensor:
        return self.inner.sample_latents(n, generator=generator)

    def synthesize_layers(self, per_layer: Tensor) -> Tensor:
        with autocast(self.precision, self.inner.device):
            return self.inner.synthesize_layers(per_layer).float()

    def synthesize(self, latents: Tensor) -> Tensor:
        with autocast(self.precision, self.inner.device):
            return self.inner.synthesize(latents).float()

    def mean_latent(self) -> Tensor:
        return self.inner.mean_latent()


class PrecisionEncoder(_Wrapped, Encoder):
    """An encoder whose text and image towers run under autocast; embeddings come back float32."""

    def __init__(self, inner: Encoder, precision: str) -> None:
        self.inner = inner
        self.precision = precision
        self.name, self.embed_dim = inner.name, inner.embed_dim

    def embed_text(self, prompts: list[str], *, normalize: bool = False) -> Tensor:
        with autocast(self.precision, self.inner.device):
            return self.inner.embed_text(prompts, normalize=normalize).float()

    def embed_image(self, images: Tensor, *, normalize: bool = False) -> Tensor:
        with autocast(self.precision, self.inner.device):
            return self.inner.embed_image(images, normalize=normalize).float()


def with_precision(generator: Generator, encoder: Encoder, precision: str, *,
                   key: str = "--precision") -> tuple[Generator, Encoder]:
    """``generator`` and ``encoder`` running in ``precision`` (checked against their devices); float32: unchanged."""
    precision = canonical_precision(precision, key=key)
    check_precision(precision, generator.device, key=key)
    check_precision(precision, encoder.device, key=key)
    if precision == FLOAT32:
        return generator, encoder
    return PrecisionGenerator(generator, precision), PrecisionEncoder(encoder, precision)
