"""The ``shapes`` generator: N(0, I) latents of 3 tokens x 8 numbers -> 64x64 images of one shape."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from latentmap import Generator, LatentmapError
from latentmap_shapes import DEFAULT_RESOLUTION, MAX_RESOLUTION, MIN_RESOLUTION
from latentmap_shapes.reading import read_prompt
from latentmap_shapes.layout import (
    DIM,
    SPACE,
    TOKENS,
    decode_attributes,
    scene_from_latents,
)
from latentmap_shapes.renderer import RENDERER_VERSION, render


class ShapesGenerator(Generator):
    """A procedural, differentiable stand-in for a pretrained GAN, whose every output's truth is known.

    Each of the 3 latent tokens drives one "layer" (form, colour, place), so the space has as many
    layers as tokens and ``w3``-like multi-token priors are exercised. See ``layout`` for the
    meaning of every number.
    """

    name = "shapes"

    def __init__(self, resolution: int = DEFAULT_RESOLUTION) -> None:
        resolution = int(resolution)
        if resolution < MIN_RESOLUTION or resolution > MAX_RESOLUTION:
            raise LatentmapError(
                f"shapes generator resolution must be between {MIN_RESOLUTION} and {MAX_RESOLUTION}, got {resolution}"
            )
        self.resolution = resolution
        self.space = SPACE
        self._device = torch.device("cpu")

    def sample_latents(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Standard-normal latents (n, 3, 8): every attribute combination is equally likely."""
        latents = torch.randn(n, TOKENS, DIM, generator=generator, device=_generator_device(generator))
        return latents.to(self._device)

    def synthesize_layers(self, per_layer: Tensor) -> Tensor:
        """Latents (B, 3, 8) (one per layer = one per token) -> images (B, 3, H, W) in [-1, 1]."""
        return render(scene_from_latents(per_layer.to(self._device, torch.float32)), self.resolution)

    def mean_latent(self) -> Tensor:
        """The mean of N(0, I): all zeros, an even blend of every class (what truncation pulls toward)."""
        return torch.zeros(TOKENS, DIM, device=self._device)

    def decode_attributes(self, latents: Tensor) -> dict[str, Tensor]:
        """Ground-truth attributes of latents (see :func:`latentmap_shapes.layout.decode_attributes`)."""
        return decode_attributes(latents)

    def prompt_attributes(self, prompt: str) -> dict[str, int]:
        """The classes a prompt asks for (see :func:`latentmap_shapes.reading.read_prompt`), for eval's accuracy."""
        return read_prompt(prompt)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "renderer": RENDERER_VERSION}

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: torch.device | str) -> "ShapesGenerator":
        self._device = torch.device(device)
        return self


def _generator_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")
