"""The shared diffusion prior: schedules, network, diffusion wrapper, samplers, clip2latent import."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from latentmap.prior.diffusion import DiffusionOptions, DiffusionPrior, DiffusionSampling

__all__ = ["DiffusionOptions", "DiffusionPrior", "DiffusionSampling"]

# What clip2latent's released priors were trained with (defaults of ``latentmap import-clip2latent``;
# here rather than in clip2latent.py so the command's help needs no torch).
CLIP2LATENT_GENERATOR = "stylegan2-ffhq"
CLIP2LATENT_ENCODER = "openclip:ViT-B-32/openai"


def __getattr__(name: str) -> Any:
    """The diffusion classes on first use: importing ``latentmap.prior.plugin`` must not import torch."""
    if name in __all__:
        from latentmap.prior import diffusion

        return getattr(diffusion, name)
    raise AttributeError(f"module 'latentmap.prior' has no attribute {name!r}")
