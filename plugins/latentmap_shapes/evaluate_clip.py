"""Zero-shot retrieval accuracy of an encoder on the shapes world (``python -m latentmap_shapes.evaluate_clip``).

Renders random latents from a fixed seed and, for each attribute, asks which caption among that
attribute's classes ("a red shape", "a blue shape", ...) has the highest cosine similarity with
each image. Also colour x shape among 32 captions, all five attributes among 1152 full captions,
and the other direction (text -> image): for each colour x shape caption, is the best-scoring
image one of that colour and shape? With ``--prompts FILE.jsonl`` (a prompt set with known truth,
e.g. ``bench/prompts/shapes-heldout.jsonl``): per attribute, how often the images retrieved for each
prompt have the class it names, for its own wordings and for the canonical wording of the same truth.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from latentmap import Encoder, LatentmapError
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


def _random_images(encoder: Encoder, samples: int, seed: int) -> tuple[dict[str, Tensor], Tensor]:
    """The truth and the image embeddings of ``samples`` random images of the world, drawn from ``seed``."""
    world = ShapesGenerator()
    latents = world.sample_latents(samples, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        images = torch.cat([world.synthesize(chunk) for chunk in latents.split(256)])
    return world.decode_attributes(latents), embed_images_in_batches(encoder, images)


def zero_shot_report(encoder: Encoder, samples: int = 2048, seed: int = EVAL_SEED) -> dict[str, float]:
    """Accuracy in [0, 1] per task (keys as in :data:`CHANCE`), on ``samples`` random images."""
    truth, embeddings = _random_images(encoder, samples, seed)
    report = {attribute: _classify(embeddings, encoder, (attribute,), truth) for attribute in ATTRIBUTES}
    report["colour x shape"] = _classify(embeddings, encoder, ("colour", "shape"), truth)
    report["all five"] = _classify(embeddings, encoder, ("size", "colour", "shape", "position", "background"), truth)
    report["text->image colour x shape"] = _text_to_image(embeddings, encoder, ("colour", "shape"), truth)
    report["text->image colour x shape x position"] = _text_to_image(
        embeddings, encoder, ("colour", "shape", "position"), truth
    )
    return report


def prompt_set_report(
    encoder: Encoder, cases: Sequence[tuple[str, Mapping[str, int]]], samples: int = 2048, seed: int = EVAL_SEED,
    top_k: int = 8,
) -> dict[str, dict[str, float]]:
    """Text -> image retrieval accuracy of prompts with known truth, as written and in canonical wording.

    ``cases`` are (prompt, attribute -> class index). For each prompt, the ``top_k`` of ``samples``
    random images closest to it are retrieved; an attribute's accuracy is the fraction of retrieved
    images whose class is the one the prompt names (over the prompts naming it), and ``all named``
    the fraction right in every named attribute. ``"varied"`` uses the prompts as written,
    ``"canonical"`` the same truths in :func:`describe`'s wording, so the two differ only in wording.
    """
    truth, embeddings = _random_images(encoder, samples, seed)
    wordings = {"varied": [text for text, _ in cases], "canonical": [describe(named) for _, named in cases]}
    report = {}
    for wording, prompts in wordings.items():
        with torch.no_grad():
            text = encoder.embed_text(prompts, normalize=True)
        retrieved = (text @ embeddings.T).topk(top_k, dim=-1).indices  # (P, k)
        right: dict[str, list[float]] = {attribute: [] for attribute in (*ATTRIBUTES, "all named")}
        for (_, named), indices in zip(cases, retrieved):
            all_right = torch.ones(top_k, dtype=torch.bool)
            for attribute, target in named.items():
                hits = truth[attribute][indices] == int(target)
                right[attribute].append(hits.float().mean().item())
                all_right &= hits
            right["all named"].append(all_right.float().mean().item())
        report[wording] = {key: sum(values) / len(values) for key, values in right.items() if values}
    return report


def read_prompt_cases(path: str, group: str | None = None) -> list[tuple[str, dict[str, int]]]:
    """(prompt, attribute -> class index) from a JSON-lines prompt set (``bench/prompts/*.jsonl``).

    ``group`` keeps only the lines whose ``"group"`` is that (e.g. ``"colour+shape"``).
    """
    from latentmap_shapes.vocabulary import class_index

    cases = []
    with open(path) as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                if group is None or record.get("group") == group:
                    cases.append((record["prompt"], {k: class_index(k, v) for k, v in record["attributes"].items()}))
    if not cases:
        raise LatentmapError(f"{path}: no prompts" + (f" in group {group!r}" if group else ""))
    return cases


def prompt_set_table(report: dict[str, dict[str, float]]) -> str:
    keys = [key for key in (*ATTRIBUTES, "all named") if key in report["varied"]]
    lines = ["| wording | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for wording in ("canonical", "varied"):
        lines.append(f"| {wording} | " + " | ".join(f"{100 * report[wording][key]:.1f}%" for key in keys) + " |")
    return "\n".join(lines)


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
    parser.add_argument("--prompts", default=None,
                        help="a JSON-lines prompt set (bench/prompts/shapes-heldout.jsonl): report text->image "
                             "retrieval per attribute for its wordings and for the canonical ones instead")
    parser.add_argument("--top-k", type=int, default=8, help="images retrieved per prompt with --prompts")
    parser.add_argument("--group", default=None, help="with --prompts: only this group (colour+shape, 3-5, other)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from latentmap_shapes.encoder import ShapesClipEncoder

    encoder = ShapesClipEncoder(args.weights)
    if args.prompts:
        cases = read_prompt_cases(args.prompts, args.group)
        by_prompt = prompt_set_report(encoder, cases, samples=args.samples, seed=args.seed, top_k=args.top_k)
        print(json.dumps(by_prompt, indent=2) if args.json else prompt_set_table(by_prompt))
        return
    report = zero_shot_report(encoder, samples=args.samples, seed=args.seed)
    print(json.dumps(report, indent=2) if args.json else markdown_table(report))


if __name__ == "__main__":
    main()
