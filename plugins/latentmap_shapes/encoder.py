"""The ``shapes-clip`` encoder: the tiny CLIP trained on the shapes world, behind latentmap's Encoder contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from latentmap import Encoder, sha256_file
from latentmap_shapes.clip_model import DEFAULT_WEIGHTS, load_model, prepare_images


class ShapesClipEncoder(Encoder):
    """Text and 64x64 image embeddings from the shipped (or a retrained) tiny shapes CLIP.

    Images are (B, 3, H, W) in [-1, 1], exactly what the ``shapes`` generator produces; other sizes
    are resized to 64x64. Embeddings are raw unless ``normalize=True``. Frozen: no parameter needs
    a gradient, but ``embed_image`` is differentiable in the images (for direct optimisation).
    """

    name = "shapes-clip"

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        self.weights = Path(weights) if weights else DEFAULT_WEIGHTS
        self.model, self.tokenizer, self.config = load_model(self.weights)
        self.model.requires_grad_(False)
        self.model.visual.to(memory_format=torch.channels_last)  # ~1.7x faster convolutions on CPU
        self.embed_dim = int(self.config["embed_dim"])
        self.image_size = int(self.config["vision"]["image_size"])
        self._sha256 = sha256_file(self.weights)
        self._device = torch.device("cpu")
        self.to(device)

    def embed_text(self, prompts: list[str], *, normalize: bool = False) -> Tensor:
        """Prompts -> (B, embed_dim); words outside the shapes vocabulary read as ``<unk>``."""
        if isinstance(prompts, str):
            prompts = [prompts]
        tokens = self.tokenizer(list(prompts)).to(self._device)
        with torch.no_grad():
            features = self.model.encode_text(tokens)
        return F.normalize(features, dim=-1) if normalize else features

    def embed_image(self, images: Tensor, *, normalize: bool = False) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> (B, embed_dim); differentiable in ``images``."""
        pixels = prepare_images(images.to(self._device, torch.float32), self.image_size)
        features = self.model.encode_image(pixels.contiguous(memory_format=torch.channels_last))
        return F.normalize(features, dim=-1) if normalize else features

    def unknown_words(self, prompt: str) -> list[str]:
        """Words of ``prompt`` this encoder has never seen (so a user can be warned)."""
        return self.tokenizer.unknown_words(prompt)

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "weights": self.weights.name,
            "weights_sha256": self._sha256,
        }

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: torch.device | str) -> "ShapesClipEncoder":
        self._device = torch.device(device)
        self.model.to(self._device)
        return self
