"""``latentmap edit``: render a strip of edits (one per direction) for a prompt's sample or saved latents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from latentmap.commands.pipeline_options import (
    build_pipeline,
    checkpoint_options,
    quiet_option,
    sampler_options,
    settings_from,
)
from latentmap.errors import LatentmapError


@click.command("edit")
@click.argument("prompt", required=False)
@checkpoint_options(required=False)
@click.option("--generator", "generator_name", default=None,
              help="Generator for --latents without a checkpoint (a registered name).")
@click.option("--latents", "latents_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Latents to edit (.safetensors written by sample/optimize).")
@click.option("--index", type=int, default=None, help="Only this latent of --latents.")
@click.option("--direction", "directions", multiple=True, required=True,
              help="Direction file: ours (.safetensors) or InterFaceGAN-style .npy/.pt. Repeatable.")
@click.option("--strengths", default="-3,0,3", show_default=True, help="Comma-separated strengths.")
@click.option("--layers", default=None, help="Apply only on these style layers (e.g. 0-7) [all].")
@click.option("--candidates", type=int, default=16, show_default=True, help="Candidates for PROMPT; the best is edited.")
@sampler_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="edits", show_default=True, help="Output folder.")
@quiet_option
def command(prompt: str | None, generator_name: str | None, latents_file: str | None, index: int | None,
            directions: tuple[str, ...], strengths: str, layers: str | None, candidates: int, seed: int, out: str,
            quiet: bool, **kwargs: Any) -> None:
    """Apply edit directions at several strengths to PROMPT's best sample or to saved --latents.

    \b
    latentmap edit --checkpoint best.safetensors "an arctic explorer" --direction smile.safetensors --strengths -2,0,2
    latentmap edit --generator stylegan2-ffhq --latents samples/000-x/latents.safetensors --direction age.npy
    """
    import latentmap
    from latentmap.edit import load_direction, parse_layers, parse_strengths, render_edits
    from latentmap.images import contact_sheet, save_png
    from latentmap.config import parse_pairs
    from latentmap.options import resolve_device
    from latentmap.sample import sample, slugify

    values = parse_strengths(strengths)
    if bool(prompt) == bool(latents_file):
        raise LatentmapError("give exactly one of PROMPT or --latents")
    loaded = [load_direction(path) for path in directions]
    if kwargs.get("checkpoint"):
        pipeline = build_pipeline(kwargs)
        generator = pipeline.generator
    elif prompt:
        raise LatentmapError("editing a PROMPT needs --checkpoint (the prior samples its latent)")
    elif generator_name:
        pipeline = None
        generator = latentmap.get_generator(generator_name,
                                            **parse_pairs(kwargs["generator_options"], flag="--generator-option"))
        generator = generator.to(resolve_device(kwargs["device"]))
    else:
        raise LatentmapError("--latents needs --checkpoint or --generator to know which generator renders them")
    for direction in loaded:
        direction.check(generator)
    chosen = parse_layers(layers, generator.space.layers) if layers else None

    if prompt:
        settings = settings_from(pipeline, kwargs)
        result = sample(pipeline, [prompt], candidates=candidates, keep=1, settings=settings, seed=seed,
                        keep_images=False, progress=not quiet)
        per_layer, labels = result.per_layer[0], [prompt]
    else:
        per_layer = load_latents(latents_file, generator.space, index=index)
        labels = [f"{Path(latents_file).name}[{i if index is None else index}]" for i in range(per_layer.shape[0])]

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = []
    for number, direction in enumerate(loaded):
        images = render_edits(generator, per_layer, direction, values, layers=chosen, progress=not quiet)  # (B, S, 3, H, W)
        name = Path(direction.info["file"]).stem
        folder = out_dir / f"{number:02d}-{slugify(name)}"
        for b in range(images.shape[0]):
            for s, value in enumerate(values):
                save_png(images[b, s], folder / f"{b:02d}-strength{value:+g}.png")
        captions = [f"{v:+g}" for _ in range(images.shape[0]) for v in values]
        sheet = out_dir / f"{number:02d}-{slugify(name)}.png"
        contact_sheet(images.flatten(0, 1), captions, columns=len(values),
                      title=f"{name}: {', '.join(labels)}"[:80]).save(sheet)
        log.append({"direction": direction.info["file"], "strengths": values, "layers": chosen, "sheet": str(sheet),
                    "images": str(folder), "sources": labels})
        click.echo(f"{name}: {sheet}")
    (out_dir / "edits.json").write_text(json.dumps(log, indent=2) + "\n", encoding="utf-8")


def load_latents(path: str, space: Any, *, index: int | None = None) -> Any:
    """Per-layer latents (B, layers, dim) from a latents file (``per_layer`` or ``latents`` key, or one tensor)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise LatentmapError(f"latents file {path!r} is not a readable safetensors file ({exc})") from None
    for key in ("per_layer", "latents"):
        if key in tensors:
            latents = tensors[key]
            break
    else:
        if len(tensors) != 1:
            raise LatentmapError(f"latents file {path!r} has no 'per_layer' or 'latents' tensor")
        latents = next(iter(tensors.values()))
    latents = latents.float()
    if latents.ndim == 2:
        latents = latents[None]
    if latents.ndim != 3 or latents.shape[2] != space.dim or latents.shape[1] not in (space.tokens, space.layers):
        raise LatentmapError(f"latents file {path!r} holds shape {tuple(latents.shape)}; space {space.name!r} needs "
                             f"(B, {space.tokens}, {space.dim}) or (B, {space.layers}, {space.dim})")
    if latents.shape[1] != space.layers:
        latents = space.expand(latents)
    if index is not None:
        if not 0 <= index < latents.shape[0]:
            raise LatentmapError(f"--index {index} is outside the {latents.shape[0]} latents of {path!r}")
        latents = latents[index : index + 1]
    return latents
