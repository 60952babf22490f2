"""Shared pieces of the text-fidelity experiments (bench/text_fidelity.py): data, a small training loop, scoring.

The loop is the recipe's (``latentmap.training.loop.Trainer.train_step``): per-step random stream
``step_generator(seed, 0, step)``, LAFITE noise on the conditions, the prior's loss (timesteps, noise and
the condition-dropout mask from the same stream), AdamW with weight decay on matrices, gradient
clipping, EMA; only the batch order is simpler (one seeded permutation per epoch) and it runs in
memory, so a setting can be scored every few hundred steps without writing checkpoints.

Scoring never renders an image: the shapes world decodes every sampled latent's attributes exactly
(``latentmap_shapes.decode_attributes``), so a curve point costs one batched prior call. Re-ranking
(by the encoder's CLIP score of rendered images) is left to the final measurements.

Nothing here pairs an image with a text: the correction's text statistics come from a caption corpus
of *random* attributes (``caption_corpus``) or from a prompt file, and the image statistics from the
training data.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from prompt_sets import PromptCase, load_prompt_set  # noqa: E402

from latentmap.data.augment import lafite_noise  # noqa: E402
from latentmap.prior.condition_gap import correct_text, gap_statistics  # noqa: E402


# ------------------------------------------------------------------------------------------------ data
def load_pairs(data_dir: Path, *, holdout: int = 64) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """All training (latents, embeddings) of a dataset folder in shard order (the last ``holdout`` left out)."""
    from latentmap.data.manifest import load_manifest
    from latentmap.data.shards import read_shard

    manifest = load_manifest(data_dir)
    latents, embeds = [], []
    for entry in manifest.shards:
        lat, emb = read_shard(Path(data_dir) / entry["file"])
        latents.append(lat.float())
        embeds.append(emb.float())
    latents_all, embeds_all = torch.cat(latents), torch.cat(embeds)
    keep = latents_all.shape[0] - holdout
    info = {"encoder_sha256": manifest.encoder.get("weights_sha256"), "samples": manifest.samples,
            "latent_mean": manifest.latent_mean, "latent_std": manifest.latent_std}
    return latents_all[:keep], embeds_all[:keep], info


def caption_corpus(count: int, seed: int = 1) -> list[str]:
    """``count`` varied captions of RANDOM attribute draws (no image behind them: an unpaired text corpus)."""
    from latentmap_shapes import decode_attributes
    from latentmap_shapes.captions import training_caption

    g = torch.Generator().manual_seed(seed)
    attributes = decode_attributes(torch.randn(count, 3, 8, generator=g))
    rng = random.Random(seed)
    return [training_caption({k: int(v[i]) for k, v in attributes.items()}, rng) for i in range(count)]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


# -------------------------------------------------------------------------------------------- settings
@dataclass
class Setting:
    """One experiment: the recipe's training with a few knobs changed."""

    name: str
    steps: int = 2000
    samples: int = 49_936  # training pairs used (the recipe: all 50,000 but its 64 held out)
    batch_size: int = 256
    lr: float = 3e-4
    dim: int = 128
    depth: int = 4
    heads: int = 4
    dim_head: int = 32
    cond_drop_prob: float = 0.2
    normalize_cond: bool = True
    noise_alpha: float = 1.0
    noise_shape: str = "sphere"  # sphere (LAFITE) | text (per-dimension spread of unit text embeddings)
    ema_beta: float = 0.999
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def shaped_noise(cond: Tensor, alpha: float, spread: Tensor, generator: torch.Generator) -> Tensor:
    """LAFITE with a per-dimension shape: a step of length ``alpha`` along eps ⊙ spread (unit), norms kept."""
    norm = cond.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    direction = cond / norm
    eps = torch.randn(cond.shape, generator=generator) * spread
    moved = direction + alpha * F.normalize(eps, dim=-1)
    return F.normalize(moved, dim=-1) * norm


# ---------------------------------------------------------------------------------------------- scoring
GUIDANCES = (1.0,)


def case_groups(cases: list[PromptCase]) -> dict[str, list[int]]:
    """Indices of the prompts each measure is taken over."""
    cs = [i for i, c in enumerate(cases) if set(c.truth) == {"colour", "shape"}]
    multi = [i for i, c in enumerate(cases) if 3 <= len(c.truth) <= 5]
    position = [i for i in multi if "position" in cases[i].truth]
    return {"cs": cs, "multi": multi, "position": position, "every": list(range(len(cases)))}


def attribute_scores(cases: list[PromptCase], latents: Tensor) -> dict[str, float]:
    """Accuracy of latents (P, N, tokens, dim) sampled for ``cases``, no re-ranking.

    ``colour_shape``: colour and shape right, on the colour+shape prompts; ``all_3_5``: every named
    attribute right, on prompts naming 3-5; ``position_3_5``: position right, on those of them naming one;
    ``all``: every named attribute right, on every prompt; ``attr/<name>``: per attribute, every prompt.
    """
    from latentmap_shapes import decode_attributes

    prompts, samples = latents.shape[:2]
    decoded = decode_attributes(latents.reshape(prompts * samples, *latents.shape[2:]).float().cpu())
    decoded = {k: v.reshape(prompts, samples) for k, v in decoded.items()}
    right: list[dict[str, Tensor]] = [{n: decoded[n][p] == t for n, t in c.truth.items()} for p, c in enumerate(cases)]
    every = torch.stack([torch.stack(list(r.values())).all(0) for r in right]).float()  # (P, N)
    groups = case_groups(cases)
    out: dict[str, float] = {}
    if groups["cs"]:
        out["colour_shape"] = float(torch.stack([right[i]["colour"] & right[i]["shape"] for i in groups["cs"]]).float().mean())
    if groups["multi"]:
        out["all_3_5"] = float(every[groups["multi"]].mean())
    if groups["position"]:
        out["position_3_5"] = float(torch.stack([right[i]["position"] for i in groups["position"]]).float().mean())
    out["all"] = float(every.mean())
    names = sorted({n for r in right for n in r})
    for name in names:
        out[f"attr/{name}"] = float(torch.cat([r[name] for r in right if name in r]).float().mean())
    return out


# Sampling-time variants scored on the same weights: (name, correction, text corpus, guidance). The
# correction only changes the conditions handed to the sampler, so one training run measures them all.
VARIANTS: tuple[tuple[str, str, str, float], ...] = (
    ("none", "none", "captions", 1.0),
    ("mean", "mean", "captions", 1.0),
    ("whiten", "whiten", "captions", 1.0),
    ("whiten(tune corpus)", "whiten", "tune", 1.0),
    ("none@g2", "none", "captions", 2.0),
    ("whiten@g2", "whiten", "captions", 2.0),
)


class Scorer:
    """Samples ``candidates`` latents per tune prompt from a prior, for every variant, and scores them (fixed noise)."""

    def __init__(self, cases: list[PromptCase], text_embeds: Tensor, corpora: dict[str, Tensor], *,
                 candidates: int = 8, steps: int = 25, sampler: str = "ddim",
                 variants: tuple[tuple[str, str, str, float], ...] = VARIANTS, seed: int = 1234) -> None:
        self.cases, self.text_embeds, self.corpora = cases, text_embeds, corpora
        self.candidates, self.steps, self.sampler, self.variants, self.seed = candidates, steps, sampler, variants, seed

    @torch.no_grad()
    def __call__(self, prior: Any, image_embeds: Tensor) -> dict[str, float]:
        was = prior.training
        prior.eval()
        normalized = prior.options.normalize_cond
        stats = {corpus: gap_statistics(image_embeds, embeds, normalized=normalized)
                 for corpus, embeds in self.corpora.items()}
        result: dict[str, float] = {}
        for name, correction, corpus, guidance in self.variants:
            conditions = correct_text(self.text_embeds, stats[corpus], correction, normalized=normalized)
            cond = conditions.repeat_interleave(self.candidates, dim=0)
            settings = prior.sampling(steps=self.steps, sampler=self.sampler, guidance=guidance)
            rng = torch.Generator().manual_seed(self.seed)
            latents = prior.sample(cond, settings, generator=rng)
            latents = latents.reshape(len(self.cases), self.candidates, *latents.shape[1:])
            tag = "" if name == "none" else f"|{name}"
            result.update({f"{k}{tag}": v for k, v in attribute_scores(self.cases, latents).items()})
        prior.train(was)
        return result


# --------------------------------------------------------------------------------------------- training
def build_prior(setting: Setting, info: dict[str, Any], cond_dim: int) -> Any:
    from latentmap import get_prior

    prior = get_prior("diffusion", tokens=3, latent_dim=8, cond_dim=cond_dim, dim=setting.dim, depth=setting.depth,
                      heads=setting.heads, dim_head=setting.dim_head, timesteps=1000, schedule="cosine",
                      objective="x0", cond_drop_prob=setting.cond_drop_prob, normalize_cond=setting.normalize_cond)
    prior.set_latent_stats(info["latent_mean"], info["latent_std"])
    return prior


def run_setting(
    setting: Setting,
    latents: Tensor,
    embeds: Tensor,
    info: dict[str, Any],
    scorer: Scorer,
    corpus_embeds: Tensor,
    *,
    every: int,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``setting`` and score it every ``every`` steps; returns the JSON-ready record with its curve."""
    from latentmap.training.ema import EMA
    from latentmap.training.optim import make_optimizer, step_generator

    torch.manual_seed(setting.seed)
    latents, embeds = latents[: setting.samples], embeds[: setting.samples]
    prior = build_prior(setting, info, embeds.shape[1])
    ema = EMA(prior, beta=setting.ema_beta, every=1, warmup=True)
    optimizer = make_optimizer(prior, lr=setting.lr, weight_decay=1e-2, betas=(0.9, 0.999))
    spread = F.normalize(corpus_embeds, dim=-1).std(dim=0)
    curve: list[dict[str, Any]] = []
    started = time.perf_counter()
    train_seconds = 0.0
    order = torch.randperm(latents.shape[0], generator=torch.Generator().manual_seed(setting.seed))
    position, epoch = 0, 0
    for step in range(1, setting.steps + 1):
        if position + setting.batch_size > latents.shape[0]:
            epoch += 1
            order = torch.randperm(latents.shape[0], generator=torch.Generator().manual_seed(setting.seed + epoch))
            position = 0
        index = order[position : position + setting.batch_size]
        position += setting.batch_size
        tick = time.perf_counter()
        rng = step_generator(setting.seed, 0, step - 1, torch.device("cpu"))
        cond = embeds[index]
        if setting.noise_shape == "sphere":
            cond = lafite_noise(cond, setting.noise_alpha, generator=rng)
        elif setting.noise_shape == "text":
            cond = shaped_noise(cond, setting.noise_alpha, spread, rng)
        else:
            raise ValueError(f"unknown noise shape {setting.noise_shape!r}")
        loss = prior.loss(latents[index], cond, generator=rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(prior.parameters(), 1.0)
        optimizer.step()
        ema.update(prior)
        train_seconds += time.perf_counter() - tick
        if step % every == 0 or step == setting.steps:
            point = {"step": step, "loss": float(loss.detach()), **scorer(ema.model, embeds[:20_000])}
            curve.append(point)
            for variant in [v[0] for v in scorer.variants]:
                tag = "" if variant == "none" else f"|{variant}"
                progress(f"{setting.name} step {step} [{variant}]: cs {point.get('colour_shape' + tag, math.nan):.3f} "
                         f"all3-5 {point.get('all_3_5' + tag, math.nan):.3f} "
                         f"pos {point.get('position_3_5' + tag, math.nan):.3f}")
    return {"setting": asdict(setting), "curve": curve, "train_seconds": round(train_seconds, 1),
            "seconds": round(time.perf_counter() - started, 1), "load_average": load_average(),
            "encoder_sha256": info["encoder_sha256"]}


def summarise_curve(curve: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Peak, last and last − peak of one measure along a curve."""
    values = [p[key] for p in curve if key in p]
    if not values:
        return {}
    return {"peak": max(values), "peak_step": curve[values.index(max(values))]["step"], "last": values[-1],
            "drop": max(values) - values[-1]}


__all__ = ["PromptCase", "Scorer", "Setting", "attribute_scores", "caption_corpus", "load_pairs", "load_prompt_set",
           "run_setting", "sha256_of", "summarise_curve", "load_average"]


# ------------------------------------------------------------------------------------- goal measurements
def evaluate_checkpoint(path: Path, cases: list[PromptCase], *, candidates: int = 16, seed: int = 0,
                        settings: Any = None) -> dict[str, Any]:
    """A trained checkpoint on a prompt set, as users sample it: the recipe's default sampling settings,
    ``candidates`` per prompt; accuracy of every candidate (no re-ranking) and of each prompt's best by CLIP score."""
    from latentmap.pipeline import load_pipeline
    from latentmap.sample import sample_from_conditions

    pipe = load_pipeline(path, device="cpu")
    settings = settings or pipe.defaults()
    prompts = [c.prompt for c in cases]
    started = time.perf_counter()
    targets = pipe.embed_prompts(prompts)
    result = sample_from_conditions(pipe, targets, targets, prompts, kind="text", candidates=candidates, keep=1,
                                    settings=settings, seed=seed, keep_images=False, keep_candidates=True,
                                    progress=False)
    seconds = time.perf_counter() - started
    per_layer = result.candidate_per_layer  # (P, C, layers, dim); shapes: one layer per token
    best = result.candidate_scores.argmax(dim=1)
    reranked = per_layer[torch.arange(len(cases)), best][:, None]
    out = {"no_rerank": attribute_scores(cases, per_layer), "reranked": attribute_scores(cases, reranked),
           "clip_score": float(result.candidate_scores.mean()), "seconds": round(seconds, 2),
           "settings": settings.to_dict(), "candidates": candidates, "seed": seed,
           "encoder_sha256": pipe.encoder.identity().get("weights_sha256"), "load_average": load_average()}
    return out
