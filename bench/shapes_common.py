"""Shared pieces of the shapes-world benchmark: the fixed prompt set, its truth, and how accuracy is scored.

The shapes world knows what every latent renders (``latentmap_shapes.decode_attributes``), and the
benchmark writes its prompts from attribute classes (``latentmap_shapes.describe``), so every
prompt's truth is known without parsing text. Two groups of prompts:

- ``colour x shape``: every colour with every shape, ``"a red circle"`` (8 x 4 = 32 prompts);
- ``colour x shape x position``: the same 32 pairs, each at one position chosen by a fixed rule
  (``(4 * colour + shape) % 9``, so every position is used 3 or 4 times), ``"a red circle in the top
  left"``. The full 288-prompt product would multiply the cost of every setting by 5 and add nothing
  the fixed subset does not show.

Accuracy of a sample: *colour+shape* = both its colour and its shape are the prompt's; *all named*
= every attribute the prompt names is right (colour+shape for the first group, colour+shape+position
for the second). Chance for a uniformly random latent: 1/32 and 1/288.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from latentmap_shapes import COLOURS, POSITIONS, SHAPES, decode_attributes, describe

GROUPS = ("colour x shape", "colour x shape x position")


@dataclass(frozen=True)
class PromptCase:
    """One benchmark prompt: its text, its group and the classes it names (attribute -> index)."""

    text: str
    group: str
    truth: dict[str, int]


def position_for(colour: int, shape: int) -> int:
    """The fixed position index of a (colour, shape) pair in the position group."""
    return (len(SHAPES) * colour + shape) % len(POSITIONS)


def prompt_cases(groups: tuple[str, ...] = GROUPS) -> list[PromptCase]:
    """The benchmark's prompts, in a fixed order (colour-major, then shape)."""
    cases = []
    for group in groups:
        if group not in GROUPS:
            raise ValueError(f"unknown prompt group {group!r}; expected one of {GROUPS}")
        for colour in range(len(COLOURS)):
            for shape in range(len(SHAPES)):
                truth = {"colour": colour, "shape": shape}
                if group == GROUPS[1]:
                    truth["position"] = position_for(colour, shape)
                cases.append(PromptCase(describe(truth, parts=("colour", "shape", "position")), group, truth))
    return cases


def sample_hits(cases: list[PromptCase], latents: Tensor) -> dict[str, Tensor]:
    """Per-sample correctness (P, N) bool of ``latents`` (P, N, tokens, dim), N samples per prompt.

    Keys: ``colour_shape`` (colour and shape right) and ``all_named`` (every named attribute right).
    """
    prompts, samples = latents.shape[:2]
    if prompts != len(cases):
        raise ValueError(f"{prompts} groups of latents for {len(cases)} prompts")
    decoded = decode_attributes(latents.reshape(prompts * samples, *latents.shape[2:]).float().cpu())
    decoded = {name: values.reshape(prompts, samples) for name, values in decoded.items()}
    colour_shape = torch.zeros(prompts, samples, dtype=torch.bool)
    all_named = torch.zeros(prompts, samples, dtype=torch.bool)
    for p, case in enumerate(cases):
        right = {name: decoded[name][p] == target for name, target in case.truth.items()}
        colour_shape[p] = right["colour"] & right["shape"]
        named = torch.ones(samples, dtype=torch.bool)
        for match in right.values():
            named &= match
        all_named[p] = named
    return {"colour_shape": colour_shape, "all_named": all_named}


def summarise(cases: list[PromptCase], latents: Tensor, scores: Tensor) -> dict[str, float]:
    """Accuracy without re-ranking (every sample counts) and with it (each prompt's best-scored sample).

    ``latents`` (P, N, tokens, dim), ``scores`` (P, N) CLIP scores of the rendered samples against
    their prompt. Also per prompt group, and the mean CLIP score of all samples and of the best ones.
    """
    hits = sample_hits(cases, latents)
    best = scores.argmax(dim=1)
    rows = torch.arange(len(cases))
    result: dict[str, float] = {
        "clip_score": float(scores.mean()),
        "clip_score_reranked": float(scores.max(dim=1).values.mean()),
    }
    groups = {group: torch.tensor([case.group == group for case in cases]) for group in GROUPS}
    for key, table in hits.items():
        result[key] = float(table.float().mean())
        result[f"{key}_reranked"] = float(table[rows, best].float().mean())
        for group, mask in groups.items():
            if not bool(mask.any()):
                continue
            tag = group.replace(" x ", "_")
            result[f"{key}[{tag}]"] = float(table[mask].float().mean())
            result[f"{key}_reranked[{tag}]"] = float(table[rows, best][mask].float().mean())
    return result
