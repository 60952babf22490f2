"""``latentmap directions``: an edit direction from a positive and a negative prompt (or two image sets)."""

from __future__ import annotations

from typing import Any

import click

from latentmap.commands.pipeline_options import (
    build_pipeline, checkpoint_options, echo_json, json_option, quiet_option, sampler_options, settings_from,
)
from latentmap.errors import LatentmapError


@click.command("directions")
@click.argument("positive", required=False)
@click.argument("negative", required=False)
@checkpoint_options()
@click.option("--positive-images", multiple=True, type=click.Path(exists=True),
              help="Images (files or folders) for the positive side instead of a prompt.")
@click.option("--negative-images", multiple=True, type=click.Path(exists=True),
              help="Images (files or folders) for the negative side instead of a prompt.")
@click.option("--samples", type=int, default=64, show_default=True, help="Latents sampled for each side.")
@sampler_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Direction file (.safetensors).")
@quiet_option
@json_option
def command(positive: str | None, negative: str | None, positive_images: tuple[str, ...],
            negative_images: tuple[str, ...], samples: int, seed: int, out: str, quiet: bool, as_json: bool,
            **kwargs: Any) -> None:
    """Direction = mean latent for POSITIVE minus mean latent for NEGATIVE (paper, Appendix F).

    \b
    latentmap directions --checkpoint best.safetensors "a smiling person" "a person with a neutral face" --out smile.safetensors
    """
    from latentmap.config import plural
    from latentmap.edit import discover_direction, save_direction
    from latentmap.images import load_images

    if not out.endswith(".safetensors"):
        raise LatentmapError(f"--out {out!r}: direction files are written as .safetensors")
    sides: list[Any] = []
    for name, prompt, images in (("positive", positive, positive_images), ("negative", negative, negative_images)):
        if images and prompt:
            raise LatentmapError(f"give a {name} prompt or --{name}-images, not both")
        if not images and not (prompt and prompt.strip()):
            raise LatentmapError(f"no {name} prompt given: pass two prompts (positive, negative) or --{name}-images")
        sides.append(load_images(images) if images else prompt)
    pipeline = build_pipeline(kwargs)
    settings = settings_from(pipeline, kwargs)
    conds = [side if isinstance(side, str) else pipeline.embed_images(side) for side in sides]
    labels = tuple(side if isinstance(side, str) else ", ".join(group)
                   for side, group in zip(sides, (positive_images, negative_images)))
    direction = discover_direction(pipeline, conds[0], conds[1], samples=samples, seed=seed, settings=settings,
                                   labels=labels, progress=not quiet)
    path = save_direction(out, direction)
    norm = float(direction.vector.norm())
    if as_json:
        echo_json({**direction.info, "file": str(path), "norm": norm, "shape": list(direction.vector.shape),
                   "generator": direction.generator, "space": direction.space})
        return
    click.echo(f"direction {labels[0]!r} - {labels[1]!r}: norm {norm:.4f} over {plural(samples, 'sample')} each -> {path}")
