"""Text (or image) -> latents -> images, with CLIP re-ranking, truncation and style mixing.

One prior call samples every candidate of every prompt (P x C conditions in a single batch); the
generator and encoder then work through the candidates in chunks, one group of prompts at a time,
so only the kept images are ever held in memory. Re-ranking scores each candidate by the cosine
between the prompt's embedding and the candidate image's, and keeps the best ``keep`` (paper: 16
candidates, best 1).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from latentmap.edit import parse_layers, style_mix, truncate
from latentmap.errors import LatentmapError
from latentmap.images import contact_sheet, save_png, tensor_to_pil
from latentmap.pipeline import Pipeline, SamplerSettings
from latentmap.scoring import image_text_scores, rank

__all__ = ["Generation", "SampleResult", "as_prompts", "sample", "sample_from_conditions", "write_samples", "slugify"]


def as_prompts(prompts: str | Sequence[str] | None) -> list[str]:
    """One prompt or several, as a list: ``"a blue star"`` is one prompt, never nine letters."""
    if prompts is None:
        return []
    if isinstance(prompts, str):
        return [prompts]
    return [str(p) for p in prompts]


@dataclass
class SampleResult:
    """The kept samples of P prompts, K each, best first, and every candidate's score.

    ``latents`` are what the prior produced (after truncation), in the space (P, K, tokens, dim);
    ``per_layer`` what was synthesised (after style mixing), (P, K, layers, dim).
    """

    labels: list[str]
    kind: str  # "text" or "image"
    seed: int
    settings: SamplerSettings | None  # None: no prior sampled them (direct optimisation from random latents)
    latents: Tensor
    per_layer: Tensor
    scores: Tensor
    candidate_scores: Tensor  # (P, C) in generation order
    kept: Tensor  # (P, K) candidate indices of the kept samples
    images: Tensor | None = None  # (P, K, 3, H, W) in [-1, 1], CPU
    candidate_per_layer: Tensor | None = None  # (P, C, layers, dim), every candidate (keep_candidates=True)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def candidates(self) -> int:
        return int(self.candidate_scores.shape[1])


@dataclass
class Generation:
    """What ``pipe("a blue star", n=4)`` returns: Pillow images, best first per prompt, with their latents and scores."""

    result: SampleResult

    @property
    def images(self) -> list[Any]:
        """The kept images as Pillow images, prompt by prompt, best first."""
        images = self.result.images
        return [tensor_to_pil(images[p, k]) for p in range(images.shape[0]) for k in range(images.shape[1])]

    @property
    def latents(self) -> Tensor:
        """The kept latents in the space, (prompts, n, tokens, dim)."""
        return self.result.latents

    @property
    def scores(self) -> Tensor:
        """CLIP scores of the kept images, (prompts, n), best first."""
        return self.result.scores

    @property
    def prompts(self) -> list[str]:
        return list(self.result.labels)

    def grid(self) -> Any:
        """One contact sheet: a row per prompt, each image captioned with its score."""
        images = rearrange(self.result.images, "p k c h w -> (p k) c h w")
        captions = [f"{label[:24]} {score:.3f}" for label, row in zip(self.result.labels, self.result.scores.tolist())
                    for score in row]
        return contact_sheet(images, captions, columns=self.result.images.shape[1])

    def save(self, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """PNGs, contact sheets, latents and samples.jsonl in ``folder`` (as ``latentmap sample`` writes them)."""
        return write_samples(self.result, folder, overwrite=overwrite)


def _check_counts(candidates: int, keep: int) -> None:
    if candidates < 1:
        raise LatentmapError(f"--candidates must be at least 1, got {candidates}")
    if not 1 <= keep <= candidates:
        raise LatentmapError(f"--keep must be between 1 and --candidates ({candidates}), got {keep}")


def mix_latents(pipeline: Pipeline, per_layer: Tensor, layers: str, *, seed: int, truncation: float) -> Tensor:
    """Style-mix per-layer latents (N, layers, dim) with random draws (truncated alike) on ``layers``."""
    generator = pipeline.generator
    chosen = parse_layers(layers, generator.space.layers)
    rng = torch.Generator().manual_seed(int(seed))
    random = generator.sample_latents(per_layer.shape[0], generator=rng).to(per_layer)
    random = truncate(random, generator.mean_latent(), truncation)
    return style_mix(per_layer, generator.space.expand(random), chosen)


def sample_from_conditions(
    pipeline: Pipeline,
    cond: Tensor,
    targets: Tensor,
    labels: list[str],
    *,
    kind: str = "text",
    candidates: int = 16,
    keep: int = 4,
    settings: SamplerSettings | None = None,
    seed: int = 0,
    mix_layers: str | None = None,
    mix_seed: int | None = None,
    batch_size: int = 16,
    keep_images: bool = True,
    keep_candidates: bool = False,
    progress: bool = True,
) -> SampleResult:
    """Sample ``candidates`` latents per condition (P, D), score against ``targets`` (P, D), keep the best.

    ``targets`` are what re-ranking compares with (the prompt's text embedding, or the reference
    image's embedding for image prompts); they need not be normalised.
    """
    _check_counts(candidates, keep)
    settings = settings or pipeline.defaults()
    prompts = cond.shape[0]
    if prompts == 0:
        raise LatentmapError("no prompts given: pass at least one prompt or a --prompts-file")
    started = time.perf_counter()
    flat_cond = repeat(cond, "p d -> (p c) d", c=candidates)
    latents = pipeline.sample_latents(flat_cond, settings, seed=seed, progress=progress, kind=kind).float()
    per_layer = pipeline.space.expand(latents)
    if mix_layers:
        per_layer = mix_latents(pipeline, per_layer, mix_layers, seed=seed if mix_seed is None else mix_seed,
                                truncation=settings.truncation)
    latents = rearrange(latents, "(p c) t d -> p c t d", c=candidates)
    per_layer = rearrange(per_layer, "(p c) l d -> p c l d", c=candidates)
    unit_targets = F.normalize(targets.float(), dim=-1)

    group = max(1, batch_size // candidates)  # prompts whose candidates are rendered together
    scores, kept, kept_images = [], [], []
    bar = tqdm(total=prompts * candidates, desc="render + score", unit="img", disable=not progress, leave=False)
    for start in range(0, prompts, group):
        stop = min(prompts, start + group)
        flat = rearrange(per_layer[start:stop], "p c l d -> (p c) l d")
        rendered_chunks = []
        for chunk in flat.split(batch_size):
            rendered_chunks.append(pipeline.render(chunk, batch_size=batch_size, to_cpu=False))
            bar.update(chunk.shape[0])
        rendered_all = torch.cat(rendered_chunks)
        group_targets = repeat(unit_targets[start:stop], "p d -> (p c) d", c=candidates)
        chunk_scores = image_text_scores(pipeline.encoder, rendered_all, group_targets, batch_size=batch_size).cpu()
        chunk_scores = rearrange(chunk_scores, "(p c) -> p c", c=candidates)
        _, best = rank(chunk_scores, keep)
        scores.append(chunk_scores)
        kept.append(best)
        if keep_images:
            grouped = rearrange(rendered_all, "(p c) ch h w -> p c ch h w", c=candidates)
            kept_images.append(torch.stack([grouped[i, best[i].to(grouped.device)] for i in range(stop - start)]).cpu())
    bar.close()
    candidate_scores = torch.cat(scores)
    kept_idx = torch.cat(kept)
    gather = torch.arange(prompts)[:, None]
    return SampleResult(
        labels=list(labels),
        kind=kind,
        seed=int(seed),
        settings=settings,
        latents=latents.cpu()[gather, kept_idx],
        per_layer=per_layer.cpu()[gather, kept_idx],
        scores=candidate_scores[gather, kept_idx],
        candidate_scores=candidate_scores,
        kept=kept_idx,
        images=torch.cat(kept_images) if keep_images else None,
        candidate_per_layer=per_layer.cpu() if keep_candidates else None,
        seconds=time.perf_counter() - started,
        extra={"mix_layers": mix_layers, "mix_seed": (seed if mix_seed is None else mix_seed) if mix_layers else None},
    )


def sample(
    pipeline: Pipeline,
    prompts: str | Sequence[str] | None = None,
    *,
    images: Tensor | None = None,
    image_labels: list[str] | None = None,
    candidates: int = 16,
    keep: int = 4,
    settings: SamplerSettings | None = None,
    seed: int = 0,
    mix_layers: str | None = None,
    mix_seed: int | None = None,
    batch_size: int = 16,
    keep_images: bool = True,
    progress: bool = True,
) -> SampleResult:
    """Text prompts -> best ``keep`` of ``candidates`` images each; or image prompts (``images`` in [-1, 1]).

    Image prompts use the image's embedding as the condition (the paper's image variations) and
    re-rank by similarity to it.
    """
    if images is not None:
        if prompts:
            raise LatentmapError("give text prompts or image prompts, not both")
        cond = pipeline.embed_images(images)
        labels = image_labels or [f"image {i}" for i in range(images.shape[0])]
        kind = "image"
    else:
        prompts = [p for p in as_prompts(prompts) if p.strip()]
        cond = pipeline.embed_prompts(prompts)
        labels, kind = prompts, "text"
    return sample_from_conditions(
        pipeline, cond, cond, labels, kind=kind, candidates=candidates, keep=keep, settings=settings, seed=seed,
        mix_layers=mix_layers, mix_seed=mix_seed, batch_size=batch_size, keep_images=keep_images, progress=progress,
    )


def slugify(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a prompt: lowercase words joined by dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "prompt"


def refuse_to_replace_samples(out_dir: str | os.PathLike, overwrite: bool) -> None:
    """Raise unless ``out_dir`` holds no earlier samples (or ``overwrite`` says to replace them)."""
    existing = Path(out_dir) / "samples.jsonl"
    if existing.exists() and not overwrite:
        raise LatentmapError(f"{out_dir} already holds samples ({existing.name}); choose another --out, "
                             "or pass --overwrite to replace them")


def write_samples(
    result: SampleResult, out_dir: str | os.PathLike, *, info: dict[str, Any] | None = None, overwrite: bool = False
) -> Path:
    """Write PNGs, one contact sheet per prompt (with scores), latents (safetensors) and ``samples.jsonl``.

    Layout: ``out/<NNN>-<slug>/rank-<k>.png``, ``out/<NNN>-<slug>/sheet.png``,
    ``out/<NNN>-<slug>/latents.safetensors`` (keys ``latents`` (K, tokens, dim) and ``per_layer``
    (K, layers, dim)), and one JSON line per kept image in ``out/samples.jsonl``. Returns the jsonl path.
    """
    if result.images is None:
        raise LatentmapError("these samples were made without images (keep_images=False); nothing to write")
    refuse_to_replace_samples(out_dir, overwrite)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for p, label in enumerate(result.labels):
        folder = out / f"{p:03d}-{slugify(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        latent_file = folder / "latents.safetensors"
        save_file(
            {"latents": result.latents[p].contiguous(), "per_layer": result.per_layer[p].contiguous()},
            str(latent_file),
            metadata={"latentmap": json.dumps({"format": "latentmap-latents", "label": label, "seed": result.seed,
                                               **(info or {})})},
        )
        captions = []
        for k in range(result.latents.shape[1]):
            image_file = save_png(result.images[p, k], folder / f"rank-{k}.png")
            score = float(result.scores[p, k])
            captions.append(f"#{k} {score:.3f}")
            lines.append({
                "prompt": label if result.kind == "text" else None,
                "image_prompt": label if result.kind == "image" else None,
                "prompt_index": p,
                "rank": k,
                "candidate": int(result.kept[p, k]),
                "seed": result.seed,
                "score": round(score, 6),
                "image": str(image_file.relative_to(out)),
                "latent_file": str(latent_file.relative_to(out)),
                "latent_index": k,
                "settings": result.settings.to_dict() if result.settings is not None else None,
                **{key: value for key, value in result.extra.items() if value is not None},
                **(info or {}),
            })
        sheet = contact_sheet(result.images[p], captions, title=label[:80])
        sheet.save(folder / "sheet.png", format="PNG")
    jsonl = out / "samples.jsonl"
    with jsonl.open("w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(json.dumps(line) + "\n")
    return jsonl
