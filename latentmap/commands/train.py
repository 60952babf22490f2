"""``latentmap train RECIPE``: train a prior from a recipe (resume, overrides, multi-GPU via torchrun)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from latentmap.commands.pipeline_options import quiet_option

if TYPE_CHECKING:
    from latentmap.train import TrainResult


@click.command("train")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=str))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set train.batch_size=128 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue from the newest training state in train.out.")
@click.option("--no-validation", is_flag=True, help="Skip validation (no generator/encoder is loaded).")
@quiet_option
def command(recipe: str, overrides: tuple[str, ...], resume: bool, no_validation: bool, quiet: bool) -> None:
    """Train the diffusion prior described by RECIPE (a YAML file).

    \b
    Writes to train.out: last.safetensors and best.safetensors (EMA weights, ready for
    `latentmap sample`), metrics.jsonl and metrics.png, validation image grids, and full
    training states under states/ for --resume.
    \b
    Several GPUs or machines: torchrun --nproc-per-node 8 -m latentmap train RECIPE
    """
    from latentmap.recipe import load_recipe
    from latentmap.train import train

    loaded = load_recipe(recipe, overrides)
    print_training_summary(train(loaded, resume=resume, validation=not no_validation, progress=not quiet))


def print_training_summary(result: TrainResult) -> None:
    """One line on what training did, printed once (by rank 0 under torchrun)."""
    from latentmap.config import plural
    from latentmap.distributed import main_process

    if not main_process():
        return
    best = (f", best validation score {result.best_score:.4f} at step {result.best_step} (attribute accuracy where "
            "the world knows it, else text CLIP score)" if result.best_step >= 0 else "")
    click.echo(f"trained {plural(result.steps, 'step')} (final loss {result.final_loss:.4f}){best}; outputs in {result.out}")
