"""``latentmap build-data``: make the (latent, image embedding) dataset a prior trains on.

Settings come from flags, or from a recipe's ``generator``, ``encoder`` and ``data`` sections
(``latentmap build-data recipes/ffhq.yaml``), with any flag given overriding the recipe. Under
``torchrun`` every process builds its share of the shards.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from latentmap.commands.pipeline_options import precision_flag, quiet_option
from latentmap.config import parse_pairs
from latentmap.errors import LatentmapError
from latentmap.recipe import DataSection, EncoderSection, load_recipe

if TYPE_CHECKING:
    from latentmap.data.builder import BuildSummary

# Defaults and choices are the recipe's: a flag left out means what the key left out of a recipe means.
DATA = DataSection()
DEFAULT_ENCODER = EncoderSection().name
DTYPES = list(next(f for f in dataclasses.fields(DataSection) if f.name == "dtype").metadata["choices"])
# --flag -> key of the data section
DATA_FLAGS = {"out": "dir", "samples": "samples", "batch_size": "batch_size", "shard_size": "shard_size",
              "seed": "seed", "dtype": "dtype", "device": "device", "precision": "precision"}


def _settings(
    recipe_path: str | None,
    overrides: tuple[str, ...],
    flags: dict[str, Any],
    generator_options: dict[str, Any],
    encoder_options: dict[str, Any],
) -> dict[str, Any]:
    """Arguments of ``build_data``: the recipe file's (if any), with the flags the user actually gave applied."""
    if recipe_path is not None:
        recipe = load_recipe(recipe_path, overrides)
        settings = dict(data=recipe.data, generator=recipe.generator.name, encoder=recipe.encoder.name,
                        generator_options=recipe.generator.factory_options(),
                        encoder_options=recipe.encoder.factory_options())
    elif overrides:
        raise LatentmapError("--set needs a recipe file: latentmap build-data RECIPE.yaml --set data.samples=1000")
    else:
        for key, flag in (("generator", "--generator"), ("samples", "--samples"), ("out", "--out")):
            if flags.get(key) is None:
                raise LatentmapError(f"build-data needs {flag} (or a recipe file that sets it)")
        settings = dict(data=DATA, encoder=DEFAULT_ENCODER, generator_options={}, encoder_options={})
    given = {key: value for key, value in flags.items() if value is not None}
    settings["data"] = dataclasses.replace(
        settings["data"], **{key: given[flag] for flag, key in DATA_FLAGS.items() if flag in given})
    settings.update({key: given[key] for key in ("generator", "encoder") if key in given})
    if "space" in given:
        settings["generator_options"]["space"] = given["space"]
    settings["generator_options"].update(generator_options)
    settings["encoder_options"].update(encoder_options)
    return settings


def print_build_summary(summary: BuildSummary) -> None:
    """The end-of-build summary, printed once (by rank 0 under torchrun)."""
    from latentmap.distributed import main_process

    if main_process():
        click.echo(summary.describe())


@click.command("build-data")
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("--generator", "generator", help="Registered generator name (see `latentmap list generators`).")
@click.option("--space", help="Latent space: w, w3, w+ (default: the generator's).")
@click.option("--encoder", "encoder", help=f"Encoder as prefix:spec [default: {DEFAULT_ENCODER}].")
@click.option("--samples", type=click.IntRange(min=1), help="Number of (latent, embedding) pairs.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Dataset folder (created; an existing one is resumed).")
@click.option("--batch-size", type=click.IntRange(min=1), help=f"Samples per forward pass [default: {DATA.batch_size}].")
@click.option("--shard-size", type=click.IntRange(min=1), help=f"Samples per shard file [default: {DATA.shard_size}].")
@click.option("--seed", type=int, help=f"Dataset seed; shard i draws from (seed, i) [default: {DATA.seed}].")
@click.option("--dtype", type=click.Choice(DTYPES), help=f"Storage dtype of latents and embeddings [default: {DATA.dtype}].")
@click.option("--device", help=f"auto, cpu, cuda, cuda:1 ... [default: {DATA.device}].")
@precision_flag(default=None, help=f"Generator and encoder compute precision (autocast; refused where the device has "
                                   f"no native support) [default: {DATA.precision}].")
@click.option("--save-images", is_flag=True, help="Also write thumbnails per shard and contact-sheet.png.")
@click.option("--generator-option", "-G", "generator_options", multiple=True, metavar="KEY=VALUE",
              help="Option for the generator (weights=..., truncation=0.7); repeatable.")
@click.option("--encoder-option", "-E", "encoder_options", multiple=True, metavar="KEY=VALUE",
              help="Option for the encoder; repeatable.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value (data.samples=1000).")
@quiet_option
def command(
    recipe: str | None,
    overrides: tuple[str, ...],
    generator_options: tuple[str, ...],
    encoder_options: tuple[str, ...],
    save_images: bool,
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
    from latentmap.data.builder import build_data

    settings = _settings(recipe, overrides, flags, parse_pairs(generator_options, flag="--generator-option"),
                         parse_pairs(encoder_options, flag="--encoder-option"))
    print_build_summary(build_data(**settings, save_images=save_images, progress=not quiet))
