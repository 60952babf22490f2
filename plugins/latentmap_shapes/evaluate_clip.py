"""Zero-shot retrieval accuracy of an encoder on the shapes world (``python -m latentmap_shapes.evaluate_clip``).

Renders random latents from a fixed seed and, for each attribute, asks which caption among that
attribute's classes ("a red shape", "a blue shape", ...) has the highest cosine similarity with
each image. Also colour x shape among 32 captions, all five attributes among 1152 full captions,
and the other direction (text -> image): for each colour x shape caption, is the best-scoring
image one of that colour and shape?
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence

import torch
from torch import Tensor

from latentmap import Encoder
from latentmap_shapes.captions import describe
from latentmap_shapes.generator import ShapesGenerator
from latentmap_shapes.vocabulary import VOCABULARY

EVAL_SEED = 1234
ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "position", "size", "background")


@torch.no_grad()
def embed_images_in_batches(encoder: Encoder, images: Tensor, batch_size: int = 256) -> Tensor:
    return torch.cat([encoder.embed_image(chunk, normalize=True) for chunk in images.split(batch_size)])


def _combinations(parts: Sequence[str]) -> list[dict[str, int]]:
    ranges = [range(len(VOCABULARY[part])) for part in parts]
    return [dict(zip(parts, combo)) for combo in itertools.product(*ranges)]


def _classify(image_embeddings: Tensor, encoder: Encoder, parts: Sequence[str], truth: dict[str, Tensor]) -> float:
    """Fraction of images whose best caption, among every combination of ``parts``, is the true one."""
    combos = _combinations(parts)
    text = encoder.embed_text([describe(combo, parts) for combo in combos], normalize=True)
    best = (image_embeddings @ text.T).argmax(dim=-1)
    table = torch.tensor([[combo[part] for part in parts] for combo in combos])
    predicted = table[best]
    correct = torch.ones(len(best), dtype=torch.bool)
    for column, part in enumerate(parts):
        correct &= predicted[:, column] == truth[part]
    return correct.float().mean().item()


def _text_to_image(image_embeddings: Tensor, encoder: Encoder, parts: Sequence[str], truth: dict[str, Tensor]) -> float:
    """For each caption of ``parts`` that some image matches: is the top-scoring image a match?"""
    hits, total = 0, 0
    combos = _combinations(parts)
    text = encoder.embed_text([describe(combo, parts) for combo in combos], normalize=True)
    best = (text @ image_embeddings.T).argmax(dim=-1)
    for combo, image_index in zip(combos, best.tolist()):
        matches = torch.ones(len(image_embeddings), dtype=torch.bool)
        for part in parts:
            matches &= truth[part] == combo[part]
        if matches.any():
            total += 1
            hits += int(matches[image_index])
    return hits / max(total, 1)


def zero_shot_report(encoder: Encoder, samples: int = 2048, seed: int = EVAL_SEED) -> dict[str, float]:
    """Accuracy in [0, 1] per task (keys as in :data:`CHANCE`), on ``samples`` random images."""
    world = ShapesGenerator()
    latents = world.sample_latents(samples, generator=torch.Generator().manual_seed(seed))
    truth = world.decode_attributes(latents)
    with torch.no_grad():
        images = torch.cat([world.synthesize(chunk) for chunk in latents.split(256)])
    embeddings = embed_images_in_batches(encoder, images)
    report = {attribute: _classify(embeddings, encoder, (attribute,), truth) for attribute in ATTRIBUTES}
    report["colour x shape"] = _classify(embeddings, encoder, ("colour", "shape"), truth)
    report["all five"] = _classify(embeddings, encoder, ("size", "colour", "shape", "position", "background"), truth)
    report["text->image colour x shape"] = _text_to_image(embeddings, encoder, ("colour", "shape"), truth)
    report["text->image colour x shape x position"] = _text_to_image(
        embeddings, encoder, ("colour", "shape", "position"), truth
    )
    return report


CHANCE: dict[str, float] = {
    "shape": 1 / 4, "colour": 1 / 8, "position": 1 / 9, "size": 1 / 2, "background": 1 / 2,
    "colour x shape": 1 / 32, "all five": 1 / 1152,
    "text->image colour x shape": 1 / 32, "text->image colour x shape x position": 1 / 288,
}


def markdown_table(report: dict[str, float]) -> str:
    lines = ["| task | accuracy | chance |", "|---|---|---|"]
    for task, value in report.items():
        lines.append(f"| {task} | {100 * value:.1f}% | {100 * CHANCE[task]:.1f}% |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="safetensors file (default: the shipped shapes_clip)")
    parser.add_argument("--samples", type=int, default=2048, help="random images to classify")
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from latentmap_shapes.encoder import ShapesClipEncoder

    report = zero_shot_report(ShapesClipEncoder(args.weights), samples=args.samples, seed=args.seed)
    print(json.dumps(report, indent=2) if args.json else markdown_table(report))


if __name__ == "__main__":
    main()
