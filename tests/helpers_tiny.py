"""A tiny, fast, deterministic generator and encoder for tests, registered as a latentmap plugin.

``tiny-test`` is a style-based generator in miniature: random fixed weights (seeded), a mapping
network from z to w, a constant input modulated by one style per layer, two upsamplings and a
to-RGB layer: 16x16 images in [-1, 1] from 4 style layers of 8-d latents (spaces ``w``, ``w3`` =
(1, 1, 2), ``w+``). ``tiny-test`` encoders (``tiny-test`` or ``tiny-test:DIM``) embed images with a
fixed random two-layer network on 8x8 downsampled pixels, and text with character-trigram counts.

Use it in-process with ``ensure_registered()``, or in a subprocess with
``PYTHONPATH=<repo>/tests LATENTMAP_PLUGIN_MODULES=helpers_tiny``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import latentmap
from latentmap.config import option
from latentmap.hookspecs import hookimpl
from latentmap.interfaces import Encoder, Generator

LAYERS = 4


def _weights_digest(tensors: list[Tensor]) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class TinyGeneratorOptions:
    """Options of the ``tiny-test`` generator."""

    space: str = option("w", help="w, w3 or w+")
    dim: int = option(8, min=1, help="latent size")
    resolution: int = option(16, min=4, help="image size, 4 times a power of two")
    channels: int = option(8, min=1, help="feature channels")
    weights_seed: int = option(0, help="seed of the fixed random weights")
    delay: float = option(0.0, min=0, identity=False,
                          help="seconds to sleep per synthesize call (tests that interrupt a build)")


class TinyGenerator(Generator):
    """A miniature style-based generator with fixed random weights."""

    name = "tiny-test"

    def __init__(self, options: TinyGeneratorOptions):
        self.space = latentmap.get_space(options.space, layers=LAYERS, dim=options.dim)
        self.resolution = options.resolution
        self.channels = options.channels
        self.weights_seed = options.weights_seed
        self.delay = options.delay  # seconds per synthesize call: makes builds slow enough to interrupt
        self.upsamplings = int(round(math.log2(self.resolution / 4)))
        if 4 * 2**self.upsamplings != self.resolution:
            raise latentmap.LatentmapError(f"tiny-test resolution must be 4 times a power of two, got {self.resolution}")
        g = torch.Generator().manual_seed(self.weights_seed)
        c, d = self.channels, options.dim
        self.params = {
            "map1": torch.randn(d, d, generator=g) / math.sqrt(d),
            "map2": torch.randn(d, d, generator=g) / math.sqrt(d),
            "const": torch.randn(c, 4, 4, generator=g),
            "affine": torch.randn(LAYERS, d, c, generator=g) / math.sqrt(d),
            "conv": torch.randn(LAYERS, c, c, 3, 3, generator=g) / math.sqrt(9 * c),
            "rgb": torch.randn(3, c, 1, 1, generator=g) / math.sqrt(c),
        }
        self._device = torch.device("cpu")

    def map(self, z: Tensor) -> Tensor:
        """z (..., dim) -> w (..., dim): a two-layer MLP, like StyleGAN's mapping in miniature."""
        hidden = F.leaky_relu(z @ self.params["map1"], 0.2)
        return hidden @ self.params["map2"]

    def sample_latents(self, n: int, *, generator: torch.Generator) -> Tensor:
        z = torch.randn(n, self.space.tokens, self.space.dim, generator=generator)
        return self.map(z.to(self._device))

    def mean_latent(self) -> Tensor:
        z = torch.randn(4096, self.space.dim, generator=torch.Generator().manual_seed(1))
        return self.map(z.to(self._device)).mean(dim=0).expand(self.space.tokens, -1).clone()

    def synthesize_layers(self, per_layer: Tensor) -> Tensor:
        if self.delay:
            time.sleep(self.delay)
        p = self.params
        batch = per_layer.shape[0]
        x = p["const"].expand(batch, -1, -1, -1)
        upsample_at = set(range(1, 1 + self.upsamplings))
        for layer in range(LAYERS):
            if layer in upsample_at:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            style = torch.einsum("bd,dc->bc", per_layer[:, layer], p["affine"][layer]) + 1.0
            x = F.leaky_relu(F.conv2d(x * style[:, :, None, None], p["conv"][layer], padding=1), 0.2)
        while x.shape[-1] < self.resolution:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return torch.tanh(F.conv2d(x, p["rgb"]))

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "channels": self.channels,
            "weights_seed": self.weights_seed,
            "weights_sha256": _weights_digest(list(self.params.values())),
        }

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: torch.device | str) -> "TinyGenerator":
        self._device = torch.device(device)
        self.params = {k: v.to(self._device) for k, v in self.params.items()}
        return self


@dataclass
class TinyEncoderOptions:
    """Options of the ``tiny-test`` encoders (the spec after ``tiny-test:`` is the embedding size)."""

    weights_seed: int = option(0, help="seed of the fixed random weights")


class TinyEncoder(Encoder):
    """A fixed random image/text embedder with ``embed_dim`` outputs (default 16)."""

    name = "tiny-test"
    PIXELS = 8
    TEXT_FEATURES = 256

    def __init__(self, spec: str, options: TinyEncoderOptions):
        self.embed_dim = int(spec) if spec else 16
        self.weights_seed = options.weights_seed
        g = torch.Generator().manual_seed(1000 + self.weights_seed)
        inputs = 3 * self.PIXELS * self.PIXELS
        self.params = {
            "img1": torch.randn(inputs, 32, generator=g) / math.sqrt(inputs),
            "img2": torch.randn(32, self.embed_dim, generator=g) / math.sqrt(32),
            "text": torch.randn(self.TEXT_FEATURES, self.embed_dim, generator=g) / math.sqrt(self.TEXT_FEATURES),
        }
        self._device = torch.device("cpu")

    def embed_image(self, images: Tensor, *, normalize: bool = False) -> Tensor:
        small = F.interpolate(images.float(), size=(self.PIXELS, self.PIXELS), mode="area")
        hidden = torch.tanh(small.flatten(1) @ self.params["img1"])
        out = hidden @ self.params["img2"]
        return F.normalize(out, dim=-1) if normalize else out

    def embed_text(self, prompts: list[str], *, normalize: bool = False) -> Tensor:
        counts = torch.zeros(len(prompts), self.TEXT_FEATURES)
        for row, prompt in enumerate(prompts):
            text = f"  {prompt.lower()}  "
            for i in range(len(text) - 2):
                bucket = int.from_bytes(hashlib.md5(text[i : i + 3].encode()).digest()[:4], "little")
                counts[row, bucket % self.TEXT_FEATURES] += 1
        out = counts.to(self._device) @ self.params["text"]
        return F.normalize(out, dim=-1) if normalize else out

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "weights_seed": self.weights_seed,
            "weights_sha256": _weights_digest(list(self.params.values())),
        }

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: torch.device | str) -> "TinyEncoder":
        self._device = torch.device(device)
        self.params = {k: v.to(self._device) for k, v in self.params.items()}
        return self


@hookimpl
def register_generators(register) -> None:
    register("tiny-test", TinyGenerator, options=TinyGeneratorOptions,
             description="tiny random style-based generator for tests (16x16, 4 layers of 8-d latents)")


@hookimpl
def register_encoders(register) -> None:
    register("tiny-test", TinyEncoder, options=TinyEncoderOptions,
             description="tiny random image/text embedder for tests (tiny-test:DIM, default 16)")


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one CPU thread: tiny tensors on a shared machine are far faster without thread hand-offs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def ensure_registered() -> None:
    """Register this module as a plugin in this process (idempotent)."""
    import sys

    from latentmap.plugins import registrations, register_module

    if "tiny-test" not in registrations("generators"):
        register_module(sys.modules[__name__], name="helpers_tiny")
