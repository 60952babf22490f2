"""Closing the text-image modality gap from unpaired statistics (no image-text pairs needed).

A prior is trained on image embeddings and used with text embeddings. In a CLIP-like encoder the two
modalities occupy different regions of the embedding sphere (the *modality gap*): in the shapes
world the mean of the unit image embeddings and the mean of unit text embeddings point in almost
opposite directions. A text condition is then outside everything the prior was trained on, and the
better the prior fits image embeddings, the worse it treats text (text fidelity falls as training
goes on while the held-out loss improves).

The correction moves text conditions onto the image distribution using only *marginal* statistics
of each modality, estimated separately -- image embeddings of the training data, text embeddings of
a prompt corpus -- never a matched pair:

- ``mean``:   t' = t − μ_text + μ_image                                 (shift the cloud)
- ``whiten``: t' = C_image^½ · C_text^−½ · (t − μ_text) + μ_image       (shift it and match its shape)

Covariances are shrunk toward a scaled identity (``SHRINKAGE``) so a corpus of a few hundred prompts
in 512 dimensions still gives a well-conditioned map. With ``normalized=True`` the statistics are of
unit vectors (for priors that compare conditions by direction only) and the result is unit length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from latentmap.errors import LatentmapError

GAP_CORRECTIONS = ("none", "mean", "whiten")
SHRINKAGE = 0.05  # weight of the scaled identity mixed into each covariance
BUFFER_NAMES = ("cond_image_mean", "cond_text_mean", "cond_text_map")


def _prepared(embeds: Tensor, normalized: bool) -> Tensor:
    x = embeds.detach().to(torch.float64)
    return F.normalize(x, dim=-1) if normalized else x


def _shrunk_covariance(x: Tensor) -> Tensor:
    centred = x - x.mean(dim=0)
    cov = centred.T @ centred / max(x.shape[0] - 1, 1)
    scale = torch.trace(cov) / cov.shape[0]
    return (1 - SHRINKAGE) * cov + SHRINKAGE * scale * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)


def _matrix_power(cov: Tensor, power: float) -> Tensor:
    values, vectors = torch.linalg.eigh(cov)
    values = values.clamp_min(values.max() * 1e-8)
    return (vectors * values.pow(power)) @ vectors.T


def gap_statistics(image_embeds: Tensor, text_embeds: Tensor, *, normalized: bool) -> dict[str, Tensor]:
    """The correction's buffers from UNPAIRED image embeddings (N, D) and text embeddings (M, D).

    Returns ``cond_image_mean`` (D,), ``cond_text_mean`` (D,) and ``cond_text_map`` (D, D), the matrix
    C_image^½ C_text^−½ (the ``whiten`` kind's; ``mean`` ignores it), float32.
    """
    if image_embeds.ndim != 2 or text_embeds.ndim != 2 or image_embeds.shape[1] != text_embeds.shape[1]:
        raise LatentmapError(f"gap statistics need (N, D) image and (M, D) text embeddings of one size, got "
                             f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}")
    if image_embeds.shape[0] < 2 or text_embeds.shape[0] < 2:
        raise LatentmapError(f"gap statistics need at least 2 image and 2 text embeddings, got "
                             f"{image_embeds.shape[0]} and {text_embeds.shape[0]}")
    image, text = _prepared(image_embeds, normalized), _prepared(text_embeds, normalized)
    text_map = _matrix_power(_shrunk_covariance(image), 0.5) @ _matrix_power(_shrunk_covariance(text), -0.5)
    return {"cond_image_mean": image.mean(dim=0).float(), "cond_text_mean": text.mean(dim=0).float(),
            "cond_text_map": text_map.float()}


def correct_text(text_embeds: Tensor, stats: dict[str, Tensor], kind: str, *, normalized: bool) -> Tensor:
    """Text embeddings (B, D) moved onto the image embeddings' distribution by ``kind`` (see the module)."""
    if kind not in GAP_CORRECTIONS:
        raise LatentmapError(f"unknown modality-gap correction {kind!r}; expected one of {', '.join(GAP_CORRECTIONS)}")
    if kind == "none":
        return text_embeds
    image_mean, text_mean = stats["cond_image_mean"], stats["cond_text_mean"]
    x = _prepared(text_embeds, normalized).to(image_mean)
    centred = x - text_mean
    if kind == "whiten":
        centred = centred @ stats["cond_text_map"].T
    moved = centred + image_mean
    moved = F.normalize(moved, dim=-1) if normalized else moved
    return moved.to(text_embeds.dtype)
