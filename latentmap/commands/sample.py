"""``latentmap sample``: prompts (or images) -> re-ranked images, contact sheets, latents and a JSON lines log."""

from __future__ import annotations

import json
from typing import Any

import click

from latentmap.commands.pipeline_options import (
    apply_precision,
    build_pipeline,
    checkpoint_options,
    echo_json,
    gather_prompts,
    json_option,
    precision_option,
    quiet_option,
    sampler_options,
    settings_from,
)
from latentmap.errors import LatentmapError


@click.command("sample")
@click.argument("prompts", nargs=-1)
@checkpoint_options()
@click.option("--prompts-file", type=str, default=None, help="One prompt per line (a path or a packaged list).")
@click.option("--image", "image_paths", multiple=True, type=click.Path(exists=True),
              help="Image prompt (file or folder): its embedding is the condition (image variations).")
@click.option("--candidates", type=int, default=None, help="Candidates per prompt [recipe, else 16].")
@click.option("--keep", type=int, default=None, help="Best candidates kept per prompt by CLIP score [recipe, else 4].")
@sampler_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the prior's noise (recorded).")
@click.option("--mix-layers", default=None, help="Style mixing: layers (e.g. 8-17) taken from random latents.")
@click.option("--mix-seed", type=int, default=None, help="Seed of the random latents for --mix-layers [--seed].")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Images rendered and scored at once.")
@click.option("--out", type=click.Path(file_okay=False), default="samples", show_default=True, help="Output folder.")
@click.option("--overwrite", is_flag=True, help="Replace the samples an earlier run left in --out.")
@precision_option
@quiet_option
@json_option
def command(prompts: tuple[str, ...], prompts_file: str | None, image_paths: tuple[str, ...],
            candidates: int | None, keep: int | None, seed: int, mix_layers: str | None, mix_seed: int | None,
            batch_size: int, out: str, overwrite: bool, precision: str, quiet: bool, as_json: bool,
            **kwargs: Any) -> None:
    """Sample images for PROMPTS with a trained prior, keep the best by CLIP score.

    \b
    latentmap sample --checkpoint best.safetensors "a smiling woman with glasses" --candidates 16 --keep 4
    latentmap sample --checkpoint best.safetensors --image face.png --out variations/

    A folder given to --image contributes its images except latentmap's own summaries (sheet.png,
    contact-sheet.png, metrics.png), so a previous sample folder can be given as it is.
    """
    from latentmap.config import plural
    from latentmap.images import image_files, load_images
    from latentmap.sample import refuse_to_replace_samples, sample, write_samples

    refuse_to_replace_samples(out, overwrite)  # before minutes of sampling, not after
    texts = gather_prompts(prompts, prompts_file)
    if not texts and not image_paths:
        raise LatentmapError("no prompts given: pass prompts, --prompts-file or --image")
    if texts and image_paths:
        raise LatentmapError("give text prompts or --image prompts, not both")
    pipeline = build_pipeline(kwargs)
    apply_precision(pipeline, precision)
    settings = settings_from(pipeline, kwargs)
    recipe_sample = pipeline.recipe_sample()
    candidates = candidates if candidates is not None else int(recipe_sample["candidates"])
    keep = keep if keep is not None else min(int(recipe_sample["keep"]), candidates)
    images = labels = None
    if image_paths:
        files = image_files(image_paths)
        images, labels = load_images(files), [file.name for file in files]
    result = sample(pipeline, texts or None, images=images, image_labels=labels, candidates=candidates, keep=keep,
                    settings=settings, seed=seed, mix_layers=mix_layers, mix_seed=mix_seed, batch_size=batch_size,
                    progress=not quiet)
    jsonl = write_samples(result, out, overwrite=overwrite, info={"checkpoint": pipeline.checkpoint})
    count = result.latents.shape[0] * result.latents.shape[1]
    if as_json:
        echo_json({
            "checkpoint": pipeline.checkpoint, "out": str(out), "samples_file": str(jsonl), "images": count,
            "seconds": round(result.seconds, 3),
            "prompts": [{"label": label, "kind": result.kind, "scores": [round(s, 6) for s in scores]}
                        for label, scores in zip(result.labels, result.scores.tolist())],
            "samples": [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()],
        })
        return
    for label, scores in zip(result.labels, result.scores.tolist()):
        click.echo(f"{label}: best score {scores[0]:.4f}")
    click.echo(f"wrote {plural(count, 'image')} to {out} ({jsonl.name}) in {result.seconds:.1f}s")
