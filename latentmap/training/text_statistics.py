"""The unpaired statistics a prior's text correction needs, gathered once before training.

``prior.text_correction`` (see :mod:`latentmap.prior.condition_gap`) moves text conditions onto the
distribution of the image embeddings the prior is trained on. Its statistics come from two sources
that are never matched: the image embeddings of the training data (the first ``IMAGE_LIMIT`` training
pairs' embeddings; their latents are not read) and the text embeddings of the recipe's
``train.text_corpus`` prompts. No image-text pair is used, so the method stays language-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latentmap.errors import LatentmapError
from latentmap.interfaces import Prior

IMAGE_LIMIT = 50_000  # image embeddings read for the mean and covariance (enough for 512 dimensions)


def training_image_embeddings(root: Path, manifest: Any, *, holdout: int, limit: int = IMAGE_LIMIT) -> Tensor:
    """Up to ``limit`` image embeddings (N, D) float32 from the dataset's training part, in shard order."""
    from latentmap.data.shards import read_shard

    wanted = min(limit, int(manifest.samples) - holdout)
    parts, have = [], 0
    for entry in manifest.shards:
        if have >= wanted:
            break
        _, embeds = read_shard(Path(root) / entry["file"], expected_count=int(entry["count"]),
                               expected_sha256=entry.get("sha256"))
        parts.append(embeds[: wanted - have].float())
        have += parts[-1].shape[0]
    if have < 2:
        raise LatentmapError(f"dataset {root} has too few training samples for the text correction's statistics")
    return torch.cat(parts)


def fit_text_statistics(prior: Prior, recipe: Any, manifest: Any, device: torch.device) -> None:
    """Set ``prior``'s text statistics if it uses them: recipe ``train.text_corpus`` prompts + the dataset's images."""
    if not prior.uses_text_statistics:
        return
    from latentmap import get_encoder
    from latentmap.identity import require_same
    from latentmap.recipe import read_prompts

    where = recipe.source or "recipe"
    corpus = recipe.train.text_corpus
    if corpus is None:
        raise LatentmapError(f"{where}: prior.text_correction needs train.text_corpus, a prompts file (or list) "
                             "written for this encoder's world and unpaired with the data")
    prompts = read_prompts(corpus)
    encoder = get_encoder(recipe.encoder.name, **recipe.encoder.factory_options())
    require_same("encoder", manifest.encoder, encoder.identity(),
                 context=f"{where}: the encoder is not the one dataset {recipe.data.dir} was built with")
    encoder = encoder.to(device)
    with torch.no_grad():
        text = torch.cat([encoder.embed_text(prompts[i : i + 256]).float().cpu() for i in range(0, len(prompts), 256)])
    images = training_image_embeddings(recipe.data.dir, manifest, holdout=recipe.validation.image_conditions)
    prior.set_text_statistics(images.to(device), text.to(device))
