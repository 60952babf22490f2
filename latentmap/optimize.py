"""Direct optimisation of latents against the CLIP score: the baseline the paper compares with.

Start from the mean latent, a random draw, or the prior's sample, render, score the image against
the prompt with the encoder, back-propagate into the latent and repeat (Adam). It reaches the best
raw CLIP score but is slow (hundreds of generator + encoder passes per prompt), and the latents it
finds can leave the region the generator renders well. Starting from the prior's sample and
refining a few steps ("prior-initialised optimisation") combines both.

The optimised variable is the latent in the generator's space (B, tokens, dim), or per layer
(B, layers, dim, like StyleCLIP's w+) with ``per_layer=True``. The best latent seen for each sample
is kept, so more steps never return a worse result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor
from tqdm.auto import tqdm

from latentmap.errors import LatentmapError
from latentmap.interfaces import Encoder, Generator
from latentmap.pipeline import Pipeline, SamplerSettings
from latentmap.sample import SampleResult, as_prompts
from latentmap.scoring import rank

__all__ = ["INITS", "OptimizeSettings", "initial_latents", "optimize"]

INITS = ("mean", "random", "prior")


@dataclass(frozen=True)
class OptimizeSettings:
    """Adam on the latent: ``steps`` iterations at learning rate ``lr``; ``init`` picks the start."""

    steps: int = 300
    lr: float = 0.05
    init: str = "mean"
    per_layer: bool = False
    init_noise: float = 0.0  # std of noise added to the start (makes mean-initialised candidates differ)

    def to_dict(self) -> dict:
        return {"steps": self.steps, "lr": self.lr, "init": self.init, "per_layer": self.per_layer,
                "init_noise": self.init_noise}


def initial_latents(
    generator: Generator,
    count: int,
    init: str,
    *,
    seed: int,
    pipeline: Pipeline | None = None,
    cond: Tensor | None = None,
    sampler: SamplerSettings | None = None,
) -> Tensor:
    """Starting latents (count, tokens, dim): the mean, random draws, or the prior's samples for ``cond``."""
    if init == "mean":
        return repeat(generator.mean_latent().float(), "t d -> n t d", n=count).clone()
    if init == "random":
        return generator.sample_latents(count, generator=torch.Generator().manual_seed(int(seed))).float()
    if init == "prior":
        if pipeline is None or cond is None:
            raise LatentmapError("--init prior needs a prior: pass --checkpoint")
        return pipeline.sample_latents(cond, sampler or pipeline.defaults(), seed=seed).float()
    raise LatentmapError(f"unknown --init {init!r}; expected one of {', '.join(INITS)}")


def _scores(generator: Generator, encoder: Encoder, latents: Tensor, targets: Tensor) -> Tensor:
    images = generator.synthesize(latents)
    embeddings = encoder.embed_image(images.to(encoder.device), normalize=True).float()
    return F.cosine_similarity(embeddings, targets.to(embeddings.device), dim=-1)


def optimize(
    generator: Generator,
    encoder: Encoder,
    prompts: str | list[str],
    *,
    settings: OptimizeSettings | None = None,
    candidates: int = 1,
    keep: int = 1,
    seed: int = 0,
    pipeline: Pipeline | None = None,
    sampler: SamplerSettings | None = None,
    batch_size: int = 8,
    keep_images: bool = True,
    progress: bool = True,
) -> SampleResult:
    """Optimise ``candidates`` latents per prompt to maximise the CLIP score; keep the best ``keep``.

    Gradients are accumulated over chunks of ``batch_size`` samples (each sample's loss is
    independent), so memory stays bounded whatever the number of prompts and candidates.
    """
    settings = settings or OptimizeSettings()
    prompts = [p for p in as_prompts(prompts) if p.strip()]
    if not prompts:
        raise LatentmapError("no prompts given: pass at least one prompt or a --prompts-file")
    if settings.steps < 0:
        raise LatentmapError(f"--steps must be 0 or more, got {settings.steps}")
    if not 1 <= keep <= candidates:
        raise LatentmapError(f"--keep must be between 1 and --candidates ({candidates}), got {keep}")
    started = time.perf_counter()
    space = generator.space
    with torch.no_grad():
        raw_text = encoder.embed_text(prompts).float()
    targets = repeat(F.normalize(raw_text, dim=-1), "p d -> (p c) d", c=candidates)
    cond = repeat(raw_text, "p d -> (p c) d", c=candidates)
    start = initial_latents(generator, cond.shape[0], settings.init, seed=seed, pipeline=pipeline,
                            cond=cond, sampler=sampler).to(generator.device)
    if settings.init_noise > 0:
        noise_rng = torch.Generator().manual_seed(int(seed) + 1)
        start = start + settings.init_noise * torch.randn(start.shape, generator=noise_rng).to(start)
    variable = (space.expand(start) if settings.per_layer else start).detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([variable], lr=settings.lr)

    best_scores = torch.full((variable.shape[0],), -2.0)
    best = variable.detach().clone()
    bar = tqdm(range(settings.steps + 1), desc="optimize", disable=not progress, leave=False)
    for step in bar:
        optimizer.zero_grad(set_to_none=True)
        current = []
        for index in torch.arange(variable.shape[0]).split(batch_size):
            last = step == settings.steps  # the final pass only scores the last update
            with torch.set_grad_enabled(not last):
                scores = _scores(generator, encoder, variable[index], targets[index])
                if not last:
                    (-scores.sum()).backward()
            current.append(scores.detach().cpu())
        current_scores = torch.cat(current)
        improved = current_scores > best_scores
        best_scores = torch.where(improved, current_scores, best_scores)
        best[improved.to(best.device)] = variable.detach()[improved.to(variable.device)]
        bar.set_postfix(score=f"{current_scores.mean():.4f}", best=f"{best_scores.mean():.4f}")
        if step < settings.steps:
            optimizer.step()
    bar.close()

    per_layer = best if settings.per_layer else space.expand(best)
    in_space = space.collapse(best) if settings.per_layer else best
    candidate_scores = rearrange(best_scores, "(p c) -> p c", c=candidates)
    values, kept = rank(candidate_scores, keep)
    gather = torch.arange(len(prompts))[:, None]
    per_layer = rearrange(per_layer.cpu(), "(p c) l d -> p c l d", c=candidates)[gather, kept]
    images = None
    if keep_images:
        with torch.no_grad():
            flat = rearrange(per_layer, "p k l d -> (p k) l d")
            rendered = torch.cat([generator.synthesize(c.to(generator.device)).float().cpu()
                                  for c in flat.split(batch_size)])
        images = rearrange(rendered, "(p k) ch h w -> p k ch h w", k=keep)
    return SampleResult(
        labels=prompts,
        kind="text",
        seed=int(seed),
        settings=sampler if pipeline is not None else None,
        latents=rearrange(in_space.cpu(), "(p c) t d -> p c t d", c=candidates)[gather, kept],
        per_layer=per_layer,
        scores=values,
        candidate_scores=candidate_scores,
        kept=kept,
        images=images,
        seconds=time.perf_counter() - started,
        extra={"method": "optimize", **{f"optimize_{k}": v for k, v in settings.to_dict().items()}},
    )
