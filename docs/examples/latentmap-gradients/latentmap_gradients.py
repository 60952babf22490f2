"""An example latentmap plugin: a generator of smooth colour gradients.

Everything a third-party generator needs: subclass ``latentmap.Generator``, implement three
methods, and register a factory from a ``register_generators`` hook.
"""

from __future__ import annotations

import torch
from torch import Tensor

import latentmap


class GradientGenerator(latentmap.Generator):
    """A latent of 6 numbers -> a 32x32 image blending two colours left to right."""

    name = "gradients"

    def __init__(self, resolution: int = 32, space: str = "w") -> None:
        self.resolution = int(resolution)
        self.space = latentmap.get_space(space, layers=2, dim=6)

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
        options={"resolution": "image size in pixels (default 32)", "space": "w or w+ (default w)"},
    )
