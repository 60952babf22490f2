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
from latentmap.interfaces import Prior, PriorShape
from latentmap.prior.condition_gap import GAP_CORRECTIONS, correct_text, gap_statistics
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
    text_correction: str = option("none", choices=GAP_CORRECTIONS,
                                  help="move text conditions onto the image embeddings' distribution before sampling "
                                       "(the modality gap), from unpaired statistics stored in the checkpoint: none, "
                                       "mean (shift) or whiten (shift and match the covariance); train.text_corpus "
                                       "gives the prompts (docs/shapes.md#text-fidelity)")


class TransformerPrior(Prior):
    """A prior on :class:`PriorNetwork` whose ``Options`` derive from :class:`TransformerPriorOptions`.

    With ``text_correction`` on, three more buffers hold the unpaired statistics of the modality-gap
    correction (:mod:`latentmap.prior.condition_gap`): ``cond_image_mean``, ``cond_text_mean`` (D,) and,
    for ``whiten``, ``cond_text_map`` (D, D). They start as the identity correction, are set once before
    training (:meth:`set_text_statistics`) and travel in the checkpoint with the weights. Off, the
    prior's tensors are exactly what they were without the option.
    """

    def __init__(self, shape: PriorShape, options: TransformerPriorOptions | None = None) -> None:
        super().__init__(shape, options)
        kind = self.options.text_correction
        if kind != "none":
            dim = shape.cond_dim
            self.register_buffer("cond_image_mean", torch.zeros(dim))
            self.register_buffer("cond_text_mean", torch.zeros(dim))
            if kind == "whiten":
                self.register_buffer("cond_text_map", torch.eye(dim))

    def build_network(self, timesteps: int) -> PriorNetwork:
        """The transformer sized by the options, for ``timesteps`` rows of timestep embedding."""
        s, o = self.shape, self.options
        return PriorNetwork(latent_dim=s.latent_dim, tokens=s.tokens, cond_dim=s.cond_dim, dim=o.dim, depth=o.depth,
                            heads=o.heads, dim_head=o.dim_head, ff_mult=o.ff_mult, timesteps=timesteps)

    @property
    def normalizes_conditions(self) -> bool:
        return self.options.normalize_cond

    @property
    def uses_text_statistics(self) -> bool:
        return self.options.text_correction != "none"

    def set_text_statistics(self, image_embeds: Tensor, text_embeds: Tensor) -> None:
        """Store the correction's statistics from UNPAIRED image embeddings (N, D) and text embeddings (M, D)."""
        if not self.uses_text_statistics:
            return
        stats = gap_statistics(image_embeds, text_embeds, normalized=self.options.normalize_cond)
        for name, value in stats.items():
            if hasattr(self, name):
                getattr(self, name).copy_(value.to(getattr(self, name)))

    def text_conditions(self, text_embeds: Tensor) -> Tensor:
        """Conditions for text embeddings (B, D): moved onto the image distribution if ``text_correction`` says so."""
        self.check_cond(text_embeds)
        kind = self.options.text_correction
        if kind == "none":
            return text_embeds
        stats = {"cond_image_mean": self.cond_image_mean, "cond_text_mean": self.cond_text_mean}
        if kind == "whiten":
            stats["cond_text_map"] = self.cond_text_map
        return correct_text(text_embeds.to(self.cond_image_mean), stats, kind, normalized=self.options.normalize_cond)

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
