"""``latentmap run RECIPE``: the whole method in one command: build-data, train, then sample.

Each stage picks up where an interrupted run stopped (complete shards are kept, training resumes
from its newest state), so re-running the same command after a crash loses nothing.
"""

from __future__ import annotations

from pathlib import Path

import click

from latentmap.commands.pipeline_options import quiet_option


@click.command("run")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=str))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set train.steps=500 (repeatable).")
@quiet_option
def command(recipe: str, overrides: tuple[str, ...], quiet: bool) -> None:
    """Build the dataset, train the prior and sample the recipe's prompts (RECIPE is a YAML file).

    \b
    Outputs: the dataset in data.dir, the run in train.out (best.safetensors, metrics, grids),
    and the samples (PNGs, a contact sheet per prompt with CLIP scores, samples.jsonl) in
    sample.out (default: <train.out>/samples).
    """
    from latentmap.commands.build_data import print_build_summary
    from latentmap.commands.train import print_training_summary
    from latentmap.data.builder import build_data_from_recipe
    from latentmap.recipe import load_recipe
    from latentmap.train import train
    from latentmap.training.state import latest_state

    loaded = load_recipe(recipe, overrides)
    click.echo(f"[1/3] build-data -> {loaded.data.dir}")
    print_build_summary(build_data_from_recipe(loaded, progress=not quiet))

    resume = latest_state(Path(loaded.train.out) / "states") is not None
    click.echo(f"[2/3] train -> {loaded.train.out}" + (" (resuming)" if resume else ""))
    print_training_summary(train(loaded, resume=resume, progress=not quiet))

    click.echo("[3/3] sample")
    sample_recipe_prompts(loaded, progress=not quiet)


def sample_recipe_prompts(recipe, *, progress: bool = True) -> Path:
    """Sample the recipe's prompts from its best checkpoint; print each prompt's scores; return the folder."""
    from latentmap.pipeline import SamplerSettings, load_pipeline
    from latentmap.recipe import read_prompts
    from latentmap.sample import sample, write_samples

    checkpoint = Path(recipe.train.out) / "best.safetensors"
    if not checkpoint.is_file():
        checkpoint = Path(recipe.train.out) / "last.safetensors"
    pipeline = load_pipeline(checkpoint, device=recipe.train.device if recipe.train.device != "auto" else None)
    prompts = list(recipe.sample.prompts)
    if not prompts:
        prompts = read_prompts(recipe.validation.prompts)
    settings = SamplerSettings(pipeline.prior.sampling(recipe.sample.sampling), recipe.sample.truncation)
    result = sample(pipeline, prompts, candidates=recipe.sample.candidates, keep=recipe.sample.keep,
                    settings=settings, seed=recipe.train.seed, progress=progress)
    out = Path(recipe.sample.out) if recipe.sample.out is not None else Path(recipe.train.out) / "samples"
    jsonl = write_samples(result, out, overwrite=True, info={"checkpoint": str(checkpoint)})  # the run's own folder
    click.echo(f"samples of {checkpoint} (best {recipe.sample.keep} of {recipe.sample.candidates} by CLIP score):")
    for p, prompt in enumerate(result.labels):
        scores = ", ".join(f"{float(s):.3f}" for s in result.scores[p])
        click.echo(f"  {prompt!r}: {scores}")
    click.echo(f"images and contact sheets in {out}/ (index: {jsonl})")
    return out
