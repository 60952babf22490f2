"""The contracts every encoder, generator, latent space and prior fulfils.

The core only ever talks to these classes; plugins subclass them. Shapes are written as
``(batch, tokens, dim)`` for latents in a space and ``(batch, layers, dim)`` for the per-layer
latents a style-based generator consumes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from latentmap.errors import LatentmapError


@dataclass(frozen=True)
class LatentSpace:
    """What the prior generates, and how it feeds the generator's style layers.

    ``repeats[i]`` is the number of consecutive generator layers driven by token ``i``; their sum
    is the generator's layer count. ``w`` is one token repeated over every layer, ``w3`` three tokens
    (coarse, middle, fine), ``w+`` one token per layer.
    """

    name: str
    dim: int
    repeats: tuple[int, ...]

    @property
    def tokens(self) -> int:
        """Latent vectors per sample."""
        return len(self.repeats)

    @property
    def layers(self) -> int:
        """Style layers of the generator this space feeds."""
        return sum(self.repeats)

    def expand(self, latents: Tensor) -> Tensor:
        """(B, tokens, dim) -> (B, layers, dim), each token repeated over its layers."""
        self.check(latents)
        counts = torch.tensor(self.repeats, device=latents.device)
        return torch.repeat_interleave(latents, counts, dim=1, output_size=self.layers)

    def collapse(self, per_layer: Tensor) -> Tensor:
        """(B, layers, dim) -> (B, tokens, dim): the mean of each token's layer group."""
        if per_layer.ndim != 3 or per_layer.shape[1] != self.layers or per_layer.shape[2] != self.dim:
            raise LatentmapError(
                f"space {self.name!r} expects per-layer latents of shape (B, {self.layers}, {self.dim}), "
                f"got {tuple(per_layer.shape)}"
            )
        groups = torch.split(per_layer, list(self.repeats), dim=1)
        return torch.stack([g.mean(dim=1) for g in groups], dim=1)

    def check(self, latents: Tensor) -> None:
        """Raise a clear error unless ``latents`` is (B, tokens, dim) for this space."""
        if latents.ndim != 3 or latents.shape[1] != self.tokens or latents.shape[2] != self.dim:
            raise LatentmapError(
                f"space {self.name!r} expects latents of shape (B, {self.tokens}, {self.dim}), "
                f"got {tuple(latents.shape)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description, stored in manifests and checkpoints."""
        return {"name": self.name, "dim": self.dim, "repeats": list(self.repeats)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LatentSpace":
        return cls(name=str(data["name"]), dim=int(data["dim"]), repeats=tuple(int(r) for r in data["repeats"]))


class Generator(ABC):
    """A frozen, pretrained unconditional generator: latent -> image.

    Subclasses set ``name``, ``resolution`` and ``space`` and implement ``sample_latents``,
    ``synthesize_layers`` and ``mean_latent``. ``synthesize`` accepts latents in the space
    ``(B, tokens, dim)`` or already expanded per layer ``(B, layers, dim)``.
    """

    name: str = "generator"
    resolution: int = 0
    space: LatentSpace

    @abstractmethod
    def sample_latents(self, n: int, *, generator: torch.Generator) -> Tensor:
        """Random draws in the space, (n, tokens, dim), deterministic given ``generator``."""

    @abstractmethod
    def synthesize_layers(self, per_layer: Tensor) -> Tensor:
        """Per-layer latents (B, layers, dim) -> images (B, 3, H, W) in [-1, 1]; differentiable."""

    @abstractmethod
    def mean_latent(self) -> Tensor:
        """The mean latent (tokens, dim), the centre truncation moves toward."""

    def synthesize(self, latents: Tensor) -> Tensor:
        """Latents (B, tokens, dim) or (B, layers, dim) -> images (B, 3, H, W) in [-1, 1]."""
        if latents.ndim == 3 and latents.shape[1] == self.space.tokens and latents.shape[2] == self.space.dim:
            return self.synthesize_layers(self.space.expand(latents))
        if latents.ndim == 3 and latents.shape[1] == self.space.layers and latents.shape[2] == self.space.dim:
            return self.synthesize_layers(latents)
        raise LatentmapError(
            f"generator {self.name!r} (space {self.space.name!r}) expects latents of shape "
            f"(B, {self.space.tokens}, {self.space.dim}) or (B, {self.space.layers}, {self.space.dim}), "
            f"got {tuple(latents.shape)}"
        )

    def identity(self) -> dict[str, Any]:
        """What makes this generator this generator: name, options, weights checksum, space.

        Stored in dataset manifests and prior checkpoints, and compared on load. ``name`` and
        ``options`` are what ``latentmap.get_generator`` was called with, so the generator can be
        rebuilt from them; subclasses add a checksum of their weights.
        """
        return {
            "name": getattr(self, "registry_name", self.name),
            "options": dict(getattr(self, "registry_options", {})),
            "resolution": self.resolution,
            "space": self.space.to_dict(),
        }

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> "Generator":
        """Move to ``device``; returns self."""
        return self


class Encoder(ABC):
    """A frozen joint text/image embedding model (CLIP and the like).

    Embeddings are returned raw unless ``normalize=True`` asks for unit L2 norm: the paper's prior
    was trained on raw CLIP embeddings, scores use normalised ones.
    """

    name: str = "encoder"
    embed_dim: int = 0

    @abstractmethod
    def embed_text(self, prompts: list[str], *, normalize: bool = False) -> Tensor:
        """Prompts -> (B, embed_dim)."""

    @abstractmethod
    def embed_image(self, images: Tensor, *, normalize: bool = False) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1], any size -> (B, embed_dim); differentiable."""

    def identity(self) -> dict[str, Any]:
        """Name, options and weights checksum: stored in manifests and checkpoints."""
        return {
            "name": getattr(self, "registry_name", self.name),
            "options": dict(getattr(self, "registry_options", {})),
            "embed_dim": self.embed_dim,
        }

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> "Encoder":
        """Move to ``device``; returns self."""
        return self


class Prior(torch.nn.Module, ABC):
    """A conditional generative model of latents given an embedding: embedding -> latent.

    ``latents`` are always in the generator's own units (the prior normalises internally).
    """

    name: str = "prior"

    @abstractmethod
    def loss(self, latents: Tensor, cond: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Training loss (scalar) for latents (B, tokens, dim) given conditions (B, cond_dim)."""

    @abstractmethod
    def sample(self, cond: Tensor, *, generator: torch.Generator | None = None, **options: Any) -> Tensor:
        """Latents (B, tokens, dim) for conditions (B, cond_dim)."""

    def config_dict(self) -> dict[str, Any]:
        """The constructor options, JSON-ready, so a checkpoint can rebuild the prior."""
        return {}


@dataclass
class Registration:
    """One named thing a plugin registered: a factory and how to describe it."""

    name: str
    factory: Any
    plugin: str
    description: str = ""
    options: dict[str, str] = field(default_factory=dict)
