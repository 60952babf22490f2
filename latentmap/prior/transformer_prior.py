"""What the transformer priors share (the built-in diffusion prior, the flow plugin, any prior on ``PriorNetwork``).

The network's size, how conditions are treated (dropout for classifier-free guidance, optional
unit length) and the draws of one training step, declared and written once. A prior subclasses
:class:`TransformerPrior` and derives its ``Options`` from :class:`TransformerPriorOptions`, adding
what is its own (a diffusion schedule, a time distribution ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from latentmap.config import option
from latentmap.errors import LatentmapError
from latentmap.interfaces import Prior
from latentmap.prior.network import PriorNetwork

# (batch, generator, device) -> the batch's training times, drawn from ``generator`` on ``device``
TimeDraw = Callable[[int, "torch.Generator | None", torch.device], Tensor]


@dataclass
class TransformerPriorOptions:
    """The transformer's size and the treatment of conditions. Defaults: the paper's (clip2latent ``mid``)."""

    dim: int = option(512, min=1, help="transformer width (in/out projections only where latent or condition size differ)")
    depth: int = option(12, min=1, help="transformer layers")
    heads: int = option(12, min=1, help="attention heads")
    dim_head: int = option(64, min=1, help="features per attention head")
    ff_mult: int = option(4, min=1, help="feed-forward expansion")
    cond_drop_prob: float = option(0.2, min=0.0, below=1.0,
                                   help="probability of dropping the condition in training (classifier-free guidance)")
    normalize_cond: bool = option(False, help="L2-normalise conditions inside the model (compare directions only); "
                                              "for encoders whose text and image embeddings differ in length")


class TransformerPrior(Prior):
    """A prior on :class:`PriorNetwork` whose ``Options`` derive from :class:`TransformerPriorOptions`."""

    def build_network(self, timesteps: int) -> PriorNetwork:
        """The transformer sized by the options, for ``timesteps`` rows of timestep embedding."""
        s, o = self.shape, self.options
        return PriorNetwork(latent_dim=s.latent_dim, tokens=s.tokens, cond_dim=s.cond_dim, dim=o.dim, depth=o.depth,
                            heads=o.heads, dim_head=o.dim_head, ff_mult=o.ff_mult, timesteps=timesteps)

    @property
    def normalizes_conditions(self) -> bool:
        return self.options.normalize_cond

    def prepare_cond(self, cond: Tensor, batch: int | None = None) -> Tensor:
        """Conditions checked, on the prior's device and dtype, unit length if ``normalize_cond``."""
        self.check_cond(cond, batch)
        cond = cond.to(self.latent_mean)
        return F.normalize(cond, dim=-1) if self.options.normalize_cond else cond

    def check_guidance(self, guidance: float) -> None:
        """Refuse guidance on a prior that never learned the unconditional branch."""
        if guidance != 1.0 and self.options.cond_drop_prob == 0.0:
            raise LatentmapError(
                f"guidance {guidance} needs a prior trained with condition dropout, but cond_drop_prob is 0; use guidance 1"
            )

    def training_draws(
        self, latents: Tensor, generator: torch.Generator | None, draw_times: TimeDraw
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The random draws of one training step, in this order from ``generator``: times (B,) by
        ``draw_times``, noise like the latents, and a keep mask with P(keep) = 1 − cond_drop_prob.

        The fixed order is what makes a resumed run equal an uninterrupted one.
        """
        batch = latents.shape[0]
        device = self.latent_mean.device
        draw_device = generator.device if generator is not None else device
        t = draw_times(batch, generator, draw_device).to(device)
        noise = torch.randn(latents.shape, generator=generator, device=draw_device).to(device)
        keep = (torch.rand(batch, generator=generator, device=draw_device) >= self.options.cond_drop_prob).to(device)
        return t, noise, keep
