"""The precision option: run a generator's synthesis and an encoder's image/text embedding under autocast.

One implementation for every generator and encoder (the core knows none of them): the models are
wrapped so that their forward passes run under ``torch.autocast`` in the chosen dtype, while latents,
the prior and everything stored stay float32 (outputs are cast back). ``float32`` (the default) wraps
nothing. A precision the device cannot do natively is refused before any work, in one line: emulated
half precision would be slower than float32, and float16 kernels do not exist for most CPU ops.

Used by ``build-data`` (``data.precision`` / ``--precision``) and ``sample`` (``--precision``).
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager, nullcontext
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from latentmap.errors import LatentmapError
from latentmap.interfaces import Encoder, Generator
from latentmap.recipe import DataSection

# The choices are the recipe's (``data.precision``): one list.
PRECISIONS: tuple[str, ...] = next(f for f in dataclasses.fields(DataSection) if f.name == "precision").metadata["choices"]
# CPU feature flags (Linux /proc/cpuinfo names) that make each half precision native on a CPU.
CPU_FLAGS = {"bfloat16": ("avx512_bf16", "amx_bf16", "bf16"), "float16": ("avx512_fp16", "amx_fp16")}


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (``flags`` on x86, ``Features`` on ARM); None if unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return None


def precision_problem(precision: str, device: torch.device | str) -> str | None:
    """Why ``device`` cannot run ``precision`` natively (one line), or None if it can."""
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}"
    device = torch.device(device)
    if precision == "float32":
        return None
    if device.type == "cuda":
        if precision == "bfloat16" and not torch.cuda.is_bf16_supported(including_emulation=False):
            name = torch.cuda.get_device_name(device)
            return f"precision bfloat16 needs a GPU with native bfloat16 (compute capability 8.0+), not {name}: use float16"
        return None
    if device.type == "cpu":
        flags = cpu_flags()
        if flags is None:  # not Linux: ask oneDNN instead
            native = (torch.ops.mkldnn._is_mkldnn_bf16_supported() if precision == "bfloat16"
                      else torch.ops.mkldnn._is_mkldnn_fp16_supported())
        else:
            native = any(flag in flags for flag in CPU_FLAGS[precision])
        if not native:
            alternative = "bfloat16 or float32" if precision == "float16" else "float32"
            return (f"precision {precision} needs a CPU with native {precision} "
                    f"({'/'.join(CPU_FLAGS[precision])}) or a GPU; this CPU has none: use {alternative}")
        return None
    return f"precision {precision} is not supported on device {device.type!r}: use float32"


def check_precision(precision: str, device: torch.device | str, *, flag: str = "--precision") -> None:
    """Raise a one-line LatentmapError unless ``device`` runs ``precision`` natively."""
    problem = precision_problem(precision, device)
    if problem is not None:
        raise LatentmapError(f"{flag}: {problem}")


def autocast_for(precision: str, device: torch.device | str) -> AbstractContextManager[Any]:
    """``torch.autocast`` in ``precision`` on ``device``'s type; a no-op for float32."""
    if precision == "float32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, precision))


class PrecisionGenerator(Generator):
    """A generator whose synthesis runs under autocast; images come back float32. Everything else is the inner one's."""

    def __init__(self, inner: Generator, precision: str) -> None:
        self.inner = inner
        self.precision = precision
        self.name, self.resolution, self.space = inner.name, inner.resolution, inner.space

    def sample_latents(self, n: int, *, generator: torch.Generator) -> Tensor:
        return self.inner.sample_latents(n, generator=generator)

    def synthesize_layers(self, per_layer: Tensor) -> Tensor:
        with autocast_for(self.precision, self.inner.device):
            return self.inner.synthesize_layers(per_layer).float()

    def synthesize(self, latents: Tensor) -> Tensor:
        with autocast_for(self.precision, self.inner.device):
            return self.inner.synthesize(latents).float()

    def mean_latent(self) -> Tensor:
        return self.inner.mean_latent()

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def to(self, device: torch.device | str) -> PrecisionGenerator:
        self.inner.to(device)
        return self

    def __getattr__(self, name: str) -> Any:  # a plugin's own helpers (truncate, style mixing ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class PrecisionEncoder(Encoder):
    """An encoder whose text and image towers run under autocast; embeddings come back float32."""

    def __init__(self, inner: Encoder, precision: str) -> None:
        self.inner = inner
        self.precision = precision
        self.name, self.embed_dim = inner.name, inner.embed_dim

    def embed_text(self, prompts: list[str], *, normalize: bool = False) -> Tensor:
        with autocast_for(self.precision, self.inner.device):
            return self.inner.embed_text(prompts, normalize=normalize).float()

    def embed_image(self, images: Tensor, *, normalize: bool = False) -> Tensor:
        with autocast_for(self.precision, self.inner.device):
            return self.inner.embed_image(images, normalize=normalize).float()

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def to(self, device: torch.device | str) -> PrecisionEncoder:
        self.inner.to(device)
        return self

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def with_precision(generator: Generator, encoder: Encoder, precision: str, *,
                   flag: str = "--precision") -> tuple[Generator, Encoder]:
    """``generator`` and ``encoder`` running in ``precision`` (checked against their devices); float32: unchanged."""
    check_precision(precision, generator.device, flag=flag)
    check_precision(precision, encoder.device, flag=flag)
    if precision == "float32":
        return generator, encoder
    return PrecisionGenerator(generator, precision), PrecisionEncoder(encoder, precision)
