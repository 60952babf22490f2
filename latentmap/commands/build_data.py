"""``latentmap build-data``: make the (latent, image embedding) dataset a prior trains on.

Settings come from flags, or from a recipe's ``generator``, ``encoder`` and ``data`` sections
(``latentmap build-data recipes/ffhq.yaml``), with any flag given overriding the recipe. Under
``torchrun`` every process builds its share of the shards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from latentmap.errors import LatentmapError
from latentmap.options import parse_options, resolve_device

DTYPES = ["float16", "bfloat16", "float32"]
DEFAULT_ENCODER = "openclip:ViT-B-32/openai"
DEFAULTS = {"batch_size": 64, "shard_size": 10_000, "seed": 0, "dtype": "float16", "device": "auto"}


def _settings(recipe_path: str | None, overrides: tuple[str, ...], flags: dict[str, Any]) -> dict[str, Any]:
    """Merge recipe values (if any) with the flags the user actually gave; check what is required."""
    settings: dict[str, Any] = dict(DEFAULTS, generator_options={}, encoder_options={}, encoder=DEFAULT_ENCODER, space=None)
    if recipe_path is not None:
        from latentmap.recipe import load_recipe

        recipe = load_recipe(recipe_path, overrides)
        settings.update(
            generator=recipe.generator.name,
            space=recipe.generator.space,
            generator_options=dict(recipe.generator.options),
            encoder=recipe.encoder.name,
            encoder_options=dict(recipe.encoder.options),
            out=recipe.data.dir,
            samples=recipe.data.samples,
            batch_size=recipe.data.batch_size,
            shard_size=recipe.data.shard_size,
            seed=recipe.data.seed,
            dtype=recipe.data.dtype,
            device=recipe.data.device,
        )
    elif overrides:
        raise LatentmapError("--set needs a recipe file: latentmap build-data RECIPE.yaml --set data.samples=1000")
    for key, value in flags.items():
        if key.endswith("_options"):
            settings[key].update(value)
        elif value is not None:
            settings[key] = value
    for key, flag in (("generator", "--generator"), ("samples", "--samples"), ("out", "--out")):
        if settings.get(key) is None:
            raise LatentmapError(f"build-data needs {flag} (or a recipe file that sets it)")
    return settings


@click.command("build-data")
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("--generator", "generator", help="Registered generator name (see `latentmap list generators`).")
@click.option("--space", help="Latent space: w, w3, w+ (default: the generator's).")
@click.option("--encoder", "encoder", help=f"Encoder as prefix:spec [default: {DEFAULT_ENCODER}].")
@click.option("--samples", type=click.IntRange(min=1), help="Number of (latent, embedding) pairs.")
@click.option("--out", type=click.Path(file_okay=False), help="Dataset folder (created; an existing one is resumed).")
@click.option("--batch-size", type=click.IntRange(min=1), help=f"Samples per forward pass [default: {DEFAULTS['batch_size']}].")
@click.option("--shard-size", type=click.IntRange(min=1), help=f"Samples per shard file [default: {DEFAULTS['shard_size']}].")
@click.option("--seed", type=int, help="Dataset seed; shard i draws from (seed, i) [default: 0].")
@click.option("--dtype", type=click.Choice(DTYPES), help="Storage dtype of latents and embeddings [default: float16].")
@click.option("--device", help="auto, cpu, cuda, cuda:1 ... [default: auto].")
@click.option("--save-images", is_flag=True, default=None, help="Also write thumbnails per shard and contact-sheet.png.")
@click.option("--generator-option", "-G", "generator_options", multiple=True, metavar="KEY=VALUE",
              help="Option for the generator (weights=..., truncation=0.7); repeatable.")
@click.option("--encoder-option", "-E", "encoder_options", multiple=True, metavar="KEY=VALUE",
              help="Option for the encoder; repeatable.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value (data.samples=1000).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def command(
    recipe: str | None,
    overrides: tuple[str, ...],
    generator_options: tuple[str, ...],
    encoder_options: tuple[str, ...],
    quiet: bool,
    **flags: Any,
) -> None:
    """Build a dataset of (generator latent, encoder image embedding) pairs: no text needed.

    \b
      latentmap build-data --generator stylegan2-ffhq --samples 1000000 --out data/ffhq
      latentmap build-data recipes/ffhq.yaml
      torchrun --nproc-per-node 8 -m latentmap build-data recipes/ffhq.yaml

    Re-running the same command resumes after the last complete shard (and rebuilds any corrupt one).
    """
    import latentmap
    from latentmap.data.builder import BuildConfig, build_dataset
    from latentmap.data.distributed import DistContext

    flags["generator_options"] = parse_options(generator_options, flag="--generator-option")
    flags["encoder_options"] = parse_options(encoder_options, flag="--encoder-option")
    settings = _settings(recipe, overrides, flags)
    requested = resolve_device(settings["device"]).type
    dist = DistContext.from_environment(requested)
    try:
        device = resolve_device(settings["device"], dist.local_rank)
        generator_kwargs = dict(settings["generator_options"])
        if settings["space"] is not None:
            generator_kwargs["space"] = settings["space"]
        generator = latentmap.get_generator(settings["generator"], **generator_kwargs).to(device)
        encoder = latentmap.get_encoder(settings["encoder"], **settings["encoder_options"]).to(device)
        config = BuildConfig(
            out=Path(settings["out"]),
            samples=settings["samples"],
            batch_size=settings["batch_size"],
            shard_size=settings["shard_size"],
            seed=settings["seed"],
            dtype=settings["dtype"],
            save_images=bool(settings.get("save_images")),
            progress=not quiet,
        )
        summary = build_dataset(generator, encoder, config, dist=dist)
        if dist.is_main:
            click.echo(summary.describe())
    finally:
        dist.close()
