"""CLIP score: the cosine between a target embedding (a prompt's, or a reference image's) and an image's.

The paper's metric and its re-ranking both use it: generate candidates, score each against the
prompt, keep the best. Embeddings are computed in chunks so any number of candidates fits in memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from latentmap.errors import LatentmapError
from latentmap.interfaces import Encoder

__all__ = ["clip_scores", "embed_images", "image_text_scores", "rank"]


def embed_images(encoder: Encoder, images: Tensor, *, batch_size: int = 64) -> Tensor:
    """Unit-norm image embeddings (N, D) of images (N, 3, H, W) in [-1, 1], in chunks, no gradient."""
    chunks = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start : start + batch_size].to(encoder.device)
            chunks.append(encoder.embed_image(chunk, normalize=True).float())
    return torch.cat(chunks)


def clip_scores(image_embeddings: Tensor, targets: Tensor) -> Tensor:
    """Row-wise cosine similarity of image embeddings (N, D) and target embeddings (N, D) -> (N,)."""
    if image_embeddings.shape != targets.shape:
        raise LatentmapError(
            f"cannot score image embeddings {tuple(image_embeddings.shape)} against targets {tuple(targets.shape)}"
        )
    return F.cosine_similarity(image_embeddings.float(), targets.float().to(image_embeddings.device), dim=-1)


def image_text_scores(encoder: Encoder, images: Tensor, targets: Tensor, *, batch_size: int = 64) -> Tensor:
    """CLIP score (N,) of each image (N, 3, H, W) against its target embedding (N, D)."""
    return clip_scores(embed_images(encoder, images, batch_size=batch_size), targets)


def rank(scores: Tensor, keep: int) -> tuple[Tensor, Tensor]:
    """Best ``keep`` of each row of ``scores`` (P, C): (values (P, keep), indices (P, keep)), best first."""
    if scores.ndim != 2:
        raise LatentmapError(f"rank expects scores of shape (prompts, candidates), got {tuple(scores.shape)}")
    if not 1 <= keep <= scores.shape[1]:
        raise LatentmapError(f"keep must be between 1 and the number of candidates ({scores.shape[1]}), got {keep}")
    values, indices = torch.topk(scores, keep, dim=1, largest=True, sorted=True)
    return values, indices
