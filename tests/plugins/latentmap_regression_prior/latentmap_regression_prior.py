"""A regression prior: the smallest non-diffusion prior, and the proof that priors are plugins.

An MLP maps the condition (an encoder embedding) straight to the z-normalised generator latents and
is trained with mean squared error, so it predicts the mean latent for a condition. Sampling is that
prediction plus ``noise`` times standard normal noise (drawn from the caller's ``torch.Generator``)
in normalised units, then mapped back to generator units.

Nothing in latentmap names this module: it arrives through the ``latentmap`` entry-point group like
any third-party plugin (``regression = latentmap_regression_prior``). tests/test_prior_plugin.py
installs it that way and drives it through the command line; docs/plugins.md ("Writing a prior")
walks through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import latentmap
from latentmap import PriorShape, option  # the plugin API is latentmap's top level (docs/plugins.md)

__all__ = ["RegressionOptions", "RegressionPrior", "RegressionSampling", "register_priors"]


@dataclass
class RegressionOptions:
    """The recipe's ``prior:`` section for ``name: regression`` (stored in checkpoints)."""

    hidden: int = option(64, min=1, help="width of the hidden layers")
    layers: int = option(2, min=1, help="hidden layers of the MLP")
    normalize_cond: bool = option(False, help="L2-normalise conditions first (compare directions only); for "
                                              "encoders whose text and image embeddings differ in length")


@dataclass
class RegressionSampling:
    """How the regression prior samples: a recipe's ``sampling:`` sections, ``--sampling noise=0.1``."""

    noise: float = option(0.0, min=0.0, help="standard deviation of the Gaussian noise added to the prediction, "
                                             "in z-normalised units (0: the mean latent for the condition)")


class RegressionPrior(latentmap.Prior):
    """Condition (B, cond_dim) -> latents (B, tokens, latent_dim), by one MLP. Parameters: ``net.*``."""

    name = "regression"
    Options = RegressionOptions
    Sampling = RegressionSampling

    def __init__(self, shape: PriorShape, options: RegressionOptions | None = None) -> None:
        super().__init__(shape, options)  # validates, sets self.shape/self.options, latent_mean/latent_std
        o = self.options
        widths = [shape.cond_dim] + [o.hidden] * o.layers
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths, widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.GELU()]
        layers.append(nn.Linear(widths[-1], shape.tokens * shape.latent_dim))
        self.net = nn.Sequential(*layers)

    @property
    def normalizes_conditions(self) -> bool:
        return self.options.normalize_cond

    def predict(self, cond: Tensor) -> Tensor:
        """The predicted latents (B, tokens, latent_dim) in z-normalised units."""
        self.check_cond(cond)
        cond = cond.to(self.latent_mean)
        if self.options.normalize_cond:
            cond = F.normalize(cond, dim=-1)
        return self.net(cond).reshape(cond.shape[0], self.shape.tokens, self.shape.latent_dim)

    def loss(self, latents: Tensor, cond: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Mean squared error in z-normalised units; draws nothing from ``generator``."""
        self.check_latents(latents)
        self.check_cond(cond, latents.shape[0])
        target = self.normalize_latents(latents.to(self.latent_mean))
        return F.mse_loss(self.predict(cond), target)

    @torch.no_grad()
    def sample(self, cond: Tensor, settings: RegressionSampling | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        """Latents in generator units: prediction + ``settings.noise`` * N(0, 1), deterministic given ``generator``."""
        settings = settings if settings is not None else self.sampling()
        z = self.predict(cond)
        if settings.noise > 0:
            draw_device = generator.device if generator is not None else z.device
            noise = torch.randn(z.shape, generator=generator, device=draw_device, dtype=torch.float32)
            z = z + settings.noise * noise.to(z)
        return self.denormalize_latents(z)


@latentmap.hookimpl
def register_priors(register) -> None:
    register("regression", RegressionPrior,
             description="MLP regression from the condition to the latents, Gaussian noise (test plugin)")
