"""An example latentmap plugin: a generator of smooth colour gradients.

Everything a third-party generator needs: declare its options as a dataclass, subclass
``latentmap.Generator``, implement three methods, and register both from a ``register_generators`` hook.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

import latentmap
from latentmap.config import option


@dataclass
class GradientOptions:
    """What ``get_generator("gradients", ...)``, a recipe or ``--generator-option`` may set."""

    resolution: int = option(32, min=2, help="image size in pixels")
    space: str = option("w", help="w (one colour pair) or w+ (one latent per colour)")


class GradientGenerator(latentmap.Generator):
    """A latent of 6 numbers -> a 32x32 image blending two colours left to right."""

    name = "gradients"

    def __init__(self, options: GradientOptions) -> None:
        self.resolution = options.resolution
        self.space = latentmap.get_space(options.space, layers=2, dim=6)

    def sample_latents(self, n: int, *, generator: torch.Generator) -> Tensor:
        return torch.randn(n, self.space.tokens, self.space.dim, generator=generator)

    def synthesize_layers(self, per_layer: Tensor) -> Tensor:
        left = torch.tanh(per_layer[:, 0, :3])   # first style layer: left colour
        right = torch.tanh(per_layer[:, 1, 3:])  # second style layer: right colour
        ramp = torch.linspace(0, 1, self.resolution, device=per_layer.device)
        image = left[:, :, None, None] * (1 - ramp) + right[:, :, None, None] * ramp
        return image.expand(-1, -1, self.resolution, -1)

    def mean_latent(self) -> Tensor:
        return torch.zeros(self.space.tokens, self.space.dim)


@latentmap.hookimpl
def register_generators(register) -> None:
    register(
        "gradients",
        GradientGenerator,
        description="colour gradients (example plugin)",
        options=GradientOptions,
    )
