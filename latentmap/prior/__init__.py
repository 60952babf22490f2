"""The shared diffusion prior: schedules, network, diffusion wrapper, samplers, clip2latent import."""

from latentmap.prior.diffusion import DiffusionPrior, PriorConfig

__all__ = ["DiffusionPrior", "PriorConfig"]
