"""The paper's evaluation protocol (Table 1): mean CLIP score with and without re-ranking, time per prompt.

For each prompt (prefixed, e.g. "A photograph of a person with glasses") sample ``candidates``
latents, render and score them. *Without re-ranking* is the mean score over all candidates (the
expected score of a single sample); *with re-ranking* the mean of each prompt's best candidate.
Time per prompt is measured like the paper's timing script: prompts one at a time by default
(``prompts_per_batch=1``), after one untimed warm-up, with the GPU synchronised.

Worlds that know the truth of what they render can report attribute accuracy too, without the
core knowing anything about them: a generator that has both optional methods

- ``decode_attributes(latents) -> dict[str, LongTensor (B,)]``: the class of each attribute an
  image rendered from ``latents`` (the per-layer latents that were synthesised) shows, and
- ``prompt_attributes(prompt: str) -> dict[str, int]``: the classes a prompt asks for (only the
  attributes it names),

gets per-attribute and all-attributes accuracy, for a random candidate and for the re-ranked best.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from latentmap.errors import LatentmapError
from latentmap.pipeline import Pipeline, SamplerSettings
from latentmap.sample import as_prompts, sample_from_conditions

__all__ = ["AttributeWorld", "attribute_accuracy", "evaluate", "prefixed"]

DEFAULT_PREFIX = "A photograph of"


@runtime_checkable
class AttributeWorld(Protocol):
    """A generator that can say which attribute classes its images show and a prompt asks for."""

    def decode_attributes(self, latents: Tensor) -> dict[str, Tensor]: ...

    def prompt_attributes(self, prompt: str) -> dict[str, int]: ...


def prefixed(prompts: list[str], prefix: str | None) -> list[str]:
    """``"A photograph of" + " " + prompt`` for each prompt (no prefix: unchanged)."""
    if not prefix:
        return list(prompts)
    return [f"{prefix.rstrip()} {prompt.strip()}" for prompt in prompts]


def attribute_accuracy(
    world: AttributeWorld, prompts: list[str], per_layer: Tensor
) -> dict[str, float] | None:
    """Fraction of samples showing what their prompt asks, per attribute and for all named ones at once.

    ``per_layer`` is (P, N, layers, dim): N samples for each of the P prompts. Prompts that name no
    attribute are skipped; None when no prompt names any.
    """
    hits: dict[str, list[Tensor]] = {}
    all_hits: list[Tensor] = []
    samples = per_layer.shape[1]
    for p, prompt in enumerate(prompts):
        wanted = world.prompt_attributes(prompt)
        if not wanted:
            continue
        decoded = world.decode_attributes(per_layer[p])
        correct = torch.ones(samples, dtype=torch.bool)
        for name, target in wanted.items():
            if name not in decoded:
                raise LatentmapError(f"prompt attribute {name!r} of {prompt!r} is not among the decoded ones "
                                     f"({', '.join(decoded)})")
            match = decoded[name].cpu() == int(target)
            hits.setdefault(name, []).append(match)
            correct &= match
        all_hits.append(correct)
    if not all_hits:
        return None
    result = {name: float(torch.cat(values).float().mean()) for name, values in sorted(hits.items())}
    result["all"] = float(torch.cat(all_hits).float().mean())
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(
    pipeline: Pipeline,
    prompts: str | list[str],
    *,
    prefix: str | None = DEFAULT_PREFIX,
    candidates: int = 16,
    settings: SamplerSettings | None = None,
    seed: int = 0,
    prompts_per_batch: int = 1,
    batch_size: int = 16,
    warmup: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the protocol and return a JSON-ready report (scores, timing, settings, per-prompt results)."""
    prompts = [p for p in as_prompts(prompts) if p.strip()]
    if not prompts:
        raise LatentmapError("no prompts to evaluate: the prompts file is empty")
    if prompts_per_batch < 1:
        raise LatentmapError(f"--prompts-per-batch must be at least 1, got {prompts_per_batch}")
    settings = settings or pipeline.defaults()
    texts = prefixed(prompts, prefix)
    world = pipeline.generator if isinstance(pipeline.generator, AttributeWorld) else None

    def run(batch: list[str], batch_seed: int):
        cond = pipeline.embed_prompts(batch)
        return sample_from_conditions(pipeline, cond, cond, batch, candidates=candidates, keep=1,
                                      settings=settings, seed=batch_seed, batch_size=batch_size,
                                      keep_images=False, keep_candidates=world is not None,
                                      progress=False)

    if warmup:
        run(texts[:1], seed)
    _sync(pipeline.device)
    results, times = [], []
    batches = [texts[i : i + prompts_per_batch] for i in range(0, len(texts), prompts_per_batch)]
    for index, batch in enumerate(tqdm(batches, desc="eval", unit="batch", disable=not progress)):
        started = time.perf_counter()
        result = run(batch, seed + index)
        _sync(pipeline.device)
        times.append((time.perf_counter() - started) / len(batch))
        results.append(result)

    all_scores = torch.cat([r.candidate_scores for r in results])  # (P, C)
    best_scores = all_scores.max(dim=1).values
    report: dict[str, Any] = {
        "checkpoint": pipeline.checkpoint,
        "generator": pipeline.generator.identity(),
        "encoder": pipeline.encoder.identity(),
        "prompts": len(prompts),
        "prefix": prefix,
        "candidates": candidates,
        "seed": seed,
        "prompts_per_batch": prompts_per_batch,
        "settings": settings.to_dict(),
        "clip_score": float(all_scores.mean()),
        "clip_score_reranked": float(best_scores.mean()),
        "seconds_per_prompt": statistics.fmean(times),
        "seconds_per_prompt_median": statistics.median(times),
        "device": _describe_device(pipeline.device),
        "per_prompt": [
            {"prompt": text, "mean_score": round(float(row.mean()), 6), "best_score": round(float(row.max()), 6)}
            for text, row in zip(texts, all_scores)
        ],
    }
    if world is not None:
        per_layer = torch.cat([r.candidate_per_layer for r in results])  # (P, C, layers, dim)
        kept = torch.cat([r.kept for r in results])  # (P, 1)
        best = per_layer[torch.arange(per_layer.shape[0])[:, None], kept]
        report["attribute_accuracy"] = attribute_accuracy(world, prompts, per_layer)
        report["attribute_accuracy_reranked"] = attribute_accuracy(world, prompts, best)
    return report


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def format_report(report: dict[str, Any]) -> str:
    """The few lines ``latentmap eval`` prints."""
    lines = [
        f"prompts: {report['prompts']}  candidates: {report['candidates']}  prefix: {report['prefix']!r}",
        f"CLIP score (no re-ranking): {report['clip_score']:.4f}",
        f"CLIP score (best of {report['candidates']}): {report['clip_score_reranked']:.4f}",
        f"seconds per prompt: {report['seconds_per_prompt']:.4f} on {report['device']}",
    ]
    for key, title in (("attribute_accuracy", "attribute accuracy"),
                       ("attribute_accuracy_reranked", "attribute accuracy (re-ranked)")):
        if report.get(key):
            lines.append(f"{title}: " + ", ".join(f"{k} {v:.3f}" for k, v in report[key].items()))
    return "\n".join(lines)
