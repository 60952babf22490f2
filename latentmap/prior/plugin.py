"""Registers the built-in diffusion prior as prior ``diffusion``: the core's own, always registered.

The class is the factory: ``DiffusionPrior(shape, options)``; its ``Options`` and ``Sampling``
dataclasses are everything a recipe, the command line or a checkpoint can say about it.
"""

from __future__ import annotations

from latentmap.hookspecs import Register, hookimpl


@hookimpl
def register_priors(register: Register) -> None:
    from latentmap.prior.diffusion import DiffusionPrior  # here, so loading plugins for the CLI needs no torch

    register("diffusion", DiffusionPrior,
             description="DALL-E 2 style diffusion prior transformer (clip2latent), classifier-free guidance")
