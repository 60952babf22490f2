"""The shared diffusion prior: schedules, network, diffusion wrapper, samplers, clip2latent import."""

from latentmap.prior.diffusion import DiffusionOptions, DiffusionPrior, DiffusionSampling

__all__ = ["DiffusionOptions", "DiffusionPrior", "DiffusionSampling"]
