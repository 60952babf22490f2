"""Registers the built-in diffusion prior as prior ``diffusion`` (entry point ``diffusion``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from latentmap.hookspecs import Register, hookimpl
from latentmap.prior.diffusion import DiffusionPrior, PriorConfig

_OPTION_HELP = {
    "latent_dim": "generator latent size per token (StyleGAN w: 512)",
    "tokens": "latent tokens per sample (w: 1, w3: 3)",
    "cond_dim": "encoder embedding size",
    "dim": "transformer width",
    "depth": "transformer layers",
    "heads": "attention heads",
    "dim_head": "features per attention head",
    "ff_mult": "feed-forward expansion",
    "timesteps": "diffusion timesteps",
    "schedule": "beta schedule: cosine or linear",
    "objective": "what the network predicts: x0 or noise",
    "cond_drop_prob": "probability of dropping the condition in training (classifier-free guidance)",
    "normalize_cond": "L2-normalise conditions inside the model",
}


def make_diffusion_prior(**options: Any) -> DiffusionPrior:
    """Factory: ``latentmap.get_prior("diffusion", latent_dim=512, tokens=1, cond_dim=512, ...)``."""
    return DiffusionPrior(**options)


@hookimpl
def register_priors(register: Register) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(PriorConfig)}
    register(
        "diffusion",
        make_diffusion_prior,
        description="DALL-E 2 style diffusion prior transformer (clip2latent), classifier-free guidance",
        options={name: f"{text} (default {defaults[name]!r})" for name, text in _OPTION_HELP.items()},
    )
