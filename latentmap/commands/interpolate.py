"""``latentmap interpolate``: images from one prompt to another, a strip and an animated GIF, from the same noise."""

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

GIF_MIN_SIDE = 128  # small generators render tiny images: the GIF shows them enlarged (nearest neighbour)


@click.command("interpolate")
@click.argument("prompt_a")
@click.argument("prompt_b")
@checkpoint_options()
@click.option("--frames", type=int, default=8, show_default=True, help="Images from PROMPT_A to PROMPT_B, both included.")
@sampler_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the noise every frame shares.")
@click.option("--duration", type=int, default=150, show_default=True, help="Milliseconds per GIF frame.")
@click.option("--out", type=click.Path(file_okay=False), default="interpolation", show_default=True, help="Output folder.")
@quiet_option
def command(prompt_a: str, prompt_b: str, frames: int, seed: int, duration: int, out: str, quiet: bool,
            **kwargs: Any) -> None:
    """Interpolate from PROMPT_A to PROMPT_B in the condition space, with the same noise for every frame.

    Writes strip.png (the frames in a row), interpolation.gif (one frame each, looping), latents.safetensors
    (for `latentmap edit --latents`) and
    interpolation.json into --out. The first and last frames are what one sample of each prompt alone
    with the same --seed gives (no re-ranking: it would pick other noise for some frames).

    \b
    latentmap interpolate --checkpoint best.safetensors "a red circle" "a blue star" --frames 8 --out interp/
    """
    from safetensors.torch import save_file

    from latentmap.images import contact_sheet, tensor_to_pil

    if frames < 2:
        raise LatentmapError(f"--frames must be at least 2, got {frames}")
    if duration < 1:
        raise LatentmapError(f"--duration must be a positive number of milliseconds, got {duration}")
    pipeline = build_pipeline(kwargs)
    settings = settings_from(pipeline, kwargs)
    latents = pipeline.interpolation_latents(prompt_a, prompt_b, frames=frames, seed=seed, settings=settings)
    images = pipeline.render(latents)

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = [index / (frames - 1) for index in range(frames)]
    title = f"{prompt_a} -> {prompt_b}"
    contact_sheet(images, [f"t={t:.2f}" for t in steps], columns=frames, title=title[:80]).save(out_dir / "strip.png")
    pictures = [_enlarged(tensor_to_pil(image)) for image in images]
    pictures[0].save(out_dir / "interpolation.gif", save_all=True, append_images=pictures[1:], duration=duration, loop=0)
    per_layer = pipeline.space.expand(latents.float()) if latents.shape[1] != pipeline.space.layers else latents
    save_file({"latents": latents.float().cpu().contiguous(), "per_layer": per_layer.float().cpu().contiguous()},
              str(out_dir / "latents.safetensors"))
    info = {"prompts": [prompt_a, prompt_b], "frames": frames, "t": steps, "seed": seed,
            "settings": (settings or pipeline.defaults()).to_dict(), "checkpoint": pipeline.checkpoint,
            "interpolation": "spherical in direction, linear in length, of the raw prompt embeddings; same noise"}
    (out_dir / "interpolation.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    click.echo(f"wrote {frames} frames to {out_dir}: strip.png, interpolation.gif, latents.safetensors")


def _enlarged(picture: Any) -> Any:
    from PIL import Image

    scale = -(-GIF_MIN_SIDE // min(picture.size))
    if scale <= 1:
        return picture
    return picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
