"""Validation during training: attribute accuracy where the world knows it, the paper's CLIP scores, held-out loss.

For every validation prompt the prior samples ``samples_per_prompt`` latents from the prompt's text
condition (``prior.text_conditions`` of its raw text embedding), the generator renders them and the
encoder embeds the images; the text score is the mean cosine similarity between each image embedding
and the prompt's raw text embedding. The same is done with held-out image embeddings of the dataset
(never trained on) as conditions: the image score shows how well the prior fits its own training
distribution, and the held-out loss whether it over-fits.

Where the generator can say what its images show and what a prompt asks for (the
:class:`~latentmap.evaluate.AttributeWorld` protocol, e.g. the shapes world), validation also reports
``val/attributes``: the fraction of samples showing every attribute their prompt names, over the
recipe's validation prompts (write them in the wordings users type). That is what users want from a
checkpoint, and the CLIP score can disagree with it: in the shapes world the text CLIP score fell
from its step-500 peak while colour and shape kept improving. ``best.safetensors`` follows
:func:`selection_score`: attribute accuracy where there is one, otherwise the text CLIP score (the
paper's rule).

The noise is drawn from a fixed seed, so successive validations differ only by the weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from latentmap.images import contact_sheet
from latentmap.interfaces import Encoder, Generator, Prior, warn_unknown_words
from latentmap.scoring import clip_scores, embed_images

THUMBNAIL = 128  # grid tiles are stored at most this many pixels square


SELECTION_KEYS = ("val/attributes", "val/text_clip")  # the first one present picks best.safetensors


def selection_score(results: dict[str, float]) -> float | None:
    """The validation measure ``best.safetensors`` follows: attribute accuracy if reported, else text CLIP score."""
    for key in SELECTION_KEYS:
        if key in results:
            return results[key]
    return None


@dataclass
class ValidationSet:
    """Conditions scored at each validation: prompts with their text embeddings, held-out pairs."""

    prompts: list[str]
    text_embeds: Tensor  # (P, D) raw text embeddings
    holdout_latents: Tensor  # (N, tokens, dim)
    holdout_embeds: Tensor  # (N, D) raw image embeddings


@dataclass
class ValidationOptions:
    """How validation samples: per-prompt count, the prior's sampling settings (None: its defaults), batch, seed."""

    samples_per_prompt: int = 4
    sampling: Any = None
    batch_size: int = 64
    seed: int = 0
    attributes: bool = True  # score attributes where the generator can (AttributeWorld)


def prepare_validation(
    encoder: Encoder, prompts: list[str], holdout: tuple[Tensor, Tensor], *, image_conditions: int
) -> ValidationSet:
    """Embed the prompts once and keep the first ``image_conditions`` held-out pairs.

    Prompts with words the encoder cannot read are named once, here, before training starts: a
    validation measured on unknown tokens would select checkpoints on nothing.
    """
    warn_unknown_words(encoder, prompts)
    with torch.no_grad():
        text = encoder.embed_text(prompts).float().cpu()
    latents, embeds = holdout
    return ValidationSet(prompts, text, latents[:image_conditions].float().cpu(), embeds[:image_conditions].float().cpu())


def condition_scale_mismatch(vset: ValidationSet, *, normalize_cond: bool, tolerance: float = 2.0) -> str | None:
    """A warning when text embeddings are much shorter or longer than the image embeddings trained on.

    A prior fed raw conditions (``normalize_cond: false``, the paper's choice for CLIP ViT-B/32,
    whose text and image embeddings have similar norms) only ever sees image-embedding lengths;
    an encoder whose text embeddings are several times shorter hands it conditions from outside
    its training distribution at sampling time, and text-to-image quality falls as training goes on.
    """
    if normalize_cond or vset.holdout_embeds.numel() == 0 or vset.text_embeds.numel() == 0:
        return None
    image_norm = float(vset.holdout_embeds.norm(dim=-1).mean())
    text_norm = float(vset.text_embeds.norm(dim=-1).mean())
    ratio = image_norm / max(text_norm, 1e-12)
    if 1 / tolerance <= ratio <= tolerance:
        return None
    return (f"image embeddings are {ratio:.1f}x as long as text embeddings (mean norm {image_norm:.3g} vs "
            f"{text_norm:.3g}) and the prior takes raw conditions: text prompts will lie outside what it is "
            f"trained on; set prior.normalize_cond: true in the recipe")


@torch.no_grad()
def render_and_score(
    prior: Prior, generator: Generator, encoder: Encoder, cond: Tensor, options: ValidationOptions, seed_offset: int,
    targets: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sample one latent per condition row, render, score against ``targets`` (default: the conditions):
    (scores (N,), thumbnails (N, 3, h, w), latents (N, tokens, dim) on the CPU)."""
    device = next(prior.parameters()).device
    targets = cond if targets is None else targets
    rng = torch.Generator(device=device).manual_seed(options.seed + seed_offset)
    scores, thumbs, all_latents = [], [], []
    for start in range(0, cond.shape[0], options.batch_size):
        chunk = cond[start : start + options.batch_size].to(device)
        latents = prior.sample(chunk, options.sampling, generator=rng)
        images = generator.synthesize(latents.to(generator.device)).float()
        image_embeds = embed_images(encoder, images, batch_size=options.batch_size)
        wanted = targets[start : start + options.batch_size].to(image_embeds.device)
        scores.append(clip_scores(image_embeds, F.normalize(wanted.float(), dim=-1)).cpu())
        if images.shape[-1] > THUMBNAIL:
            images = F.interpolate(images, size=(THUMBNAIL, THUMBNAIL), mode="area")
        thumbs.append(images.cpu())
        all_latents.append(latents.float().cpu())
    return torch.cat(scores), torch.cat(thumbs), torch.cat(all_latents)


def attribute_results(generator: Generator, prompts: list[str], latents: Tensor, per_prompt: int) -> dict[str, float]:
    """``val/attributes`` (every named attribute right) and ``val/attributes/<name>`` for latents (P·N, tokens, dim)
    sampled ``per_prompt`` at a time for ``prompts``; empty unless the generator is an AttributeWorld."""
    from latentmap.evaluate import AttributeWorld, attribute_accuracy

    if not isinstance(generator, AttributeWorld):
        return {}
    per_layer = generator.space.expand(latents.to(generator.device)).cpu()
    grouped = per_layer.reshape(len(prompts), per_prompt, *per_layer.shape[1:])
    accuracy = attribute_accuracy(generator, prompts, grouped)
    if accuracy is None:
        return {}
    results = {"val/attributes": accuracy.pop("all")}
    results.update({f"val/attributes/{name}": value for name, value in accuracy.items()})
    return results


@torch.no_grad()
def validate(
    prior: Prior,
    generator: Generator,
    encoder: Encoder,
    vset: ValidationSet,
    options: ValidationOptions,
    *,
    grid_dir: Path | None = None,
) -> dict[str, float]:
    """Score ``prior`` (the EMA copy) and write one PNG grid per prompt under ``grid_dir``."""
    was_training = prior.training
    prior.eval()
    results: dict[str, float] = {}
    device = next(prior.parameters()).device
    targets = vset.text_embeds.repeat_interleave(options.samples_per_prompt, dim=0)
    cond = prior.text_conditions(targets.to(device))
    text_scores, thumbs, latents = render_and_score(prior, generator, encoder, cond, options, seed_offset=0,
                                                    targets=targets)
    if options.attributes:
        results.update(attribute_results(generator, vset.prompts, latents, options.samples_per_prompt))
    results["val/text_clip"] = text_scores.mean().item()
    if grid_dir is not None:
        write_grids(grid_dir, vset.prompts, thumbs, text_scores, options.samples_per_prompt)
    if vset.holdout_embeds.shape[0] > 0:
        image_scores, _, _ = render_and_score(prior, generator, encoder, vset.holdout_embeds, options, seed_offset=1)
        results["val/image_clip"] = image_scores.mean().item()
        results["val/loss"] = holdout_loss(prior, vset, options)
    prior.train(was_training)
    return results


def holdout_loss(prior: Prior, vset: ValidationSet, options: ValidationOptions) -> float:
    """The training loss on held-out pairs, with fixed noise."""
    device = next(prior.parameters()).device
    rng = torch.Generator(device=device).manual_seed(options.seed + 2)
    total, count = 0.0, 0
    for start in range(0, vset.holdout_latents.shape[0], options.batch_size):
        latents = vset.holdout_latents[start : start + options.batch_size].to(device)
        embeds = vset.holdout_embeds[start : start + options.batch_size].to(device)
        total += prior.loss(latents, embeds, generator=rng).item() * latents.shape[0]
        count += latents.shape[0]
    return total / max(count, 1)


def write_grids(folder: Path, prompts: list[str], images: Tensor, scores: Tensor, per_prompt: int) -> list[Path]:
    """One contact sheet per prompt: its samples captioned with their CLIP scores."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, prompt in enumerate(prompts):
        rows = slice(index * per_prompt, (index + 1) * per_prompt)
        captions = [f"{s:.3f}" for s in scores[rows].tolist()]
        sheet = contact_sheet(images[rows], captions, columns=per_prompt, title=prompt)
        path = folder / f"{index:02d}-{slug(prompt)}.png"
        sheet.save(path, format="PNG")
        paths.append(path)
    return paths


def slug(text: str, limit: int = 40) -> str:
    """A filename-safe short form of a prompt."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def describe(results: dict[str, Any]) -> str:
    """``attributes 0.812 | text 0.301 | image 0.712 | held-out loss 0.0412`` for the progress bar and log."""
    parts = []
    if "val/attributes" in results:
        parts.append(f"attributes {results['val/attributes']:.3f}")
    if "val/text_clip" in results:
        parts.append(f"text {results['val/text_clip']:.3f}")
    if "val/image_clip" in results:
        parts.append(f"image {results['val/image_clip']:.3f}")
    if "val/loss" in results:
        parts.append(f"held-out loss {results['val/loss']:.4f}")
    return " | ".join(parts)
