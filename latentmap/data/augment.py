"""Pseudo-text augmentation of image-embedding conditions (LAFITE).

The prior is trained on image embeddings but used with text embeddings. LAFITE's trick perturbs each
condition in a random direction so the model sees a neighbourhood of every image embedding, which
covers where the matching text embeddings lie:

    e  = c / ||c||                      the condition, normalised
    y  = e + alpha * eps / ||eps||      eps ~ N(0, I): a random step of length alpha
    e' = y / ||y||

Without it (alpha 0) a prior trained on images generalises poorly to text; too much noise makes the
condition uninformative. The paper's best alpha is 1.0 (LAFITE used 0.75).

Conditions are raw (unnormalised) CLIP embeddings in clip2latent and here, so ``e'`` is scaled back
to each condition's original norm, as clip2latent did: the model sees conditions of the same scale
with and without augmentation, and at sampling time raw text embeddings.
"""

from __future__ import annotations

import torch
from torch import Tensor


def lafite_noise(cond: Tensor, alpha: float, *, generator: torch.Generator | None = None, eps: float = 1e-12) -> Tensor:
    """Perturb conditions (B, D) by a random step of length ``alpha`` on the unit sphere.

    The result keeps each row's original L2 norm. ``alpha == 0`` returns ``cond`` unchanged.
    Deterministic given ``generator`` (noise is drawn on the generator's device, then moved).
    """
    if alpha == 0:
        return cond
    norm = cond.norm(dim=-1, keepdim=True).clamp_min(eps)
    direction = cond / norm
    gen_device = generator.device if generator is not None else cond.device
    noise = torch.randn(cond.shape, generator=generator, device=gen_device, dtype=cond.dtype).to(cond.device)
    noise = noise / noise.norm(dim=-1, keepdim=True).clamp_min(eps)
    moved = direction + alpha * noise
    moved = moved / moved.norm(dim=-1, keepdim=True).clamp_min(eps)
    return moved * norm
