"""Options shared by the commands that use a trained prior (sample, eval, directions, edit, optimize).

Not a command module itself (``latentmap.cli`` only loads the modules it lists): click decorators
for checkpoint/device/override options and sampler settings, and the helpers that turn them into a
:class:`~latentmap.pipeline.Pipeline`, sampler settings and a prompt list; also ``--quiet`` and
``--json``, which every command that has them spells the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from latentmap.config import parse_pairs
from latentmap.errors import LatentmapError
from latentmap.precision import FLOAT32, PRECISIONS, accepted_names, canonical_precision

if TYPE_CHECKING:  # the pipeline (and torch) only once a command runs: listing commands stays light
    from latentmap.pipeline import Pipeline, SamplerSettings

F = Callable[..., Any]


quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars (results still print).")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON document on stdout instead of text (progress and warnings: stderr).")


def echo_json(document: Any) -> None:
    """The one JSON document a ``--json`` command prints on stdout."""
    click.echo(json.dumps(document, indent=2))


def _canonical_precision_flag(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """The ``--precision`` value in latentmap.precision's spelling (``bf16`` -> ``bfloat16``); None stays None."""
    if value is None:
        return None
    try:
        return canonical_precision(value)
    except LatentmapError:
        raise click.BadParameter(f"must be one of {accepted_names()}; got {value!r}") from None


def precision_flag(*, default: str | None, help: str) -> Callable[[F], F]:
    """``--precision`` for the generator and encoder (latentmap.precision's names, its aliases accepted)."""
    return click.option("--precision", default=default, show_default=default is not None, metavar="|".join(PRECISIONS),
                        callback=_canonical_precision_flag, help=help)


precision_option = precision_flag(
    default=FLOAT32,
    help="Generator and encoder compute precision (autocast; bfloat16/float16 only where the device has them natively).")


def apply_precision(pipeline: Pipeline, precision: str) -> None:
    """Run the pipeline's generator and encoder in ``precision`` (the prior stays float32); refuses in one line."""
    from latentmap.precision_models import with_precision

    pipeline.generator, pipeline.encoder = with_precision(pipeline.generator, pipeline.encoder, precision)


def checkpoint_options(required: bool = True) -> Callable[[F], F]:
    """``--checkpoint``, ``--device``, ``--generator-option``, ``--encoder-option``, ``--no-check-identity``."""

    def decorate(func: F) -> F:
        options = [
            click.option("--checkpoint", "checkpoint", type=click.Path(dir_okay=False), required=required,
                         help="Prior checkpoint (.safetensors); it names its encoder and generator."),
            click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
            click.option("--generator-option", "generator_options", multiple=True, metavar="KEY=VALUE",
                         help="Override a generator option recorded in the checkpoint (e.g. path=/weights/ffhq.pkl)."),
            click.option("--encoder-option", "encoder_options", multiple=True, metavar="KEY=VALUE",
                         help="Override an encoder option recorded in the checkpoint."),
            click.option("--no-check-identity", is_flag=True,
                         help="Use the checkpoint even if the rebuilt encoder/generator differ from the recorded ones."),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


# Shorthand flags for sampling settings most priors declare; any other goes through --sampling KEY=VALUE.
SAMPLING_FLAGS = ("steps", "sampler", "guidance", "eta")


def sampler_options(func: F | None = None, *, steps_flag: str = "--steps") -> Any:
    """The prior's sampling settings (``--sampling KEY=VALUE`` and the shorthands ``--steps``, ``--sampler``,
    ``--guidance``, ``--eta``) and ``--truncation``; unset ones keep the checkpoint's recipe values.

    The values are checked against the loaded prior's ``Sampling`` declaration, so the flags mean
    whatever the prior declares (``latentmap list priors --options``). ``steps_flag`` renames the steps
    option where ``--steps`` means something else (optimize).
    """

    def decorate(func: F) -> F:
        options = [
            click.option(steps_flag, "steps", type=int, default=None, help="Sampling steps [recipe, else the prior's default]."),
            click.option("--sampler", default=None, help="Sampler name, e.g. ddim, ddpm [recipe, else the prior's default]."),
            click.option("--guidance", type=float, default=None, help="Classifier-free guidance scale [recipe, else 1.0]."),
            click.option("--eta", type=float, default=None, help="DDIM eta (0: deterministic given the start noise)."),
            click.option("--sampling", "sampling_pairs", multiple=True, metavar="KEY=VALUE",
                         help="Any sampling setting the prior declares (repeatable)."),
            click.option("--truncation", type=float, default=None, help="Truncation psi toward the mean latent [recipe, else 1.0]."),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate(func) if func is not None else decorate


def build_pipeline(kwargs: dict[str, Any]) -> Pipeline:
    """A pipeline from the values of :func:`checkpoint_options` (popped from ``kwargs``)."""
    from latentmap.pipeline import load_pipeline

    return load_pipeline(
        kwargs.pop("checkpoint"),
        device=kwargs.pop("device"),
        generator_options=parse_pairs(kwargs.pop("generator_options"), flag="--generator-option"),
        encoder_options=parse_pairs(kwargs.pop("encoder_options"), flag="--encoder-option"),
        check_identity=not kwargs.pop("no_check_identity"),
    )


def settings_from(pipeline: Pipeline | None, kwargs: dict[str, Any]) -> SamplerSettings | None:
    """Sampling settings: the checkpoint's recipe values updated by the flags given (popped from ``kwargs``)."""
    changes = {key: kwargs.pop(key) for key in SAMPLING_FLAGS}
    changes = {key: value for key, value in changes.items() if value is not None}  # unset flags keep the recipe's
    changes.update(parse_pairs(kwargs.pop("sampling_pairs"), flag="--sampling"))
    truncation = kwargs.pop("truncation")
    if pipeline is None:
        return None
    return pipeline.settings(truncation=truncation, where="command line", **changes)


def gather_prompts(prompts: tuple[str, ...], prompts_file: str | None) -> list[str]:
    """Prompts from arguments and a prompts file (a path, or a packaged list such as paper-eval-64.txt)."""
    from latentmap.recipe import read_prompts, resolve_prompts_file

    gathered = [p for p in prompts if p.strip()]
    if prompts_file:
        path = resolve_prompts_file(prompts_file, Path.cwd())
        if path is None:
            raise LatentmapError(f"prompts file {prompts_file!r} not found (nor among the packaged prompt lists)")
        gathered += read_prompts(path)
    return gathered
