"""The ``latentmap`` command line: a click group, its core commands, and plugins' commands.

Every command lives in its own module under ``latentmap.commands`` (a click command named
``command``); plugins add theirs through the ``register_commands`` hook. A ``LatentmapError``
anywhere becomes one ``Error: ...`` line and exit code 2, never a traceback.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

import click

from latentmap import __version__
from latentmap.errors import LatentmapError

COMMAND_MODULES = [
    "build_data",
    "train",
    "run",
    "sample",
    "eval",
    "directions",
    "edit",
    "optimize",
    "import_clip2latent",
]


class UserError(click.ClickException):
    """Printed as ``Error: message``; exit code 2, like click's usage errors."""

    exit_code = 2


class LatentmapGroup(click.Group):
    """A click group that turns LatentmapError into a one-line error with exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LatentmapError as exc:
            raise UserError(str(exc)) from None


@click.group(cls=LatentmapGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="latentmap")
def cli() -> None:
    """Text-to-image for any pretrained generator: a diffusion prior from encoder embeddings to its latents.

    \b
    Typical use:
      latentmap build-data --generator stylegan2-ffhq --samples 1000000 --out data/ffhq
      latentmap train recipes/ffhq.yaml
      latentmap sample --checkpoint runs/ffhq/best.safetensors "a smiling woman with glasses"
    """


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def plugins_command(as_json: bool) -> None:
    """List plugins: distribution, version, hooks, and any error raised while loading."""
    from latentmap.plugins import get_plugin_manager, list_plugins

    manager = get_plugin_manager()
    for kind in ("generators", "encoders", "priors", "spaces"):
        try:
            manager.registry(kind)  # run the hooks so hook errors are recorded too
        except LatentmapError as exc:
            click.echo(f"warning: {exc}", err=True)
    infos = list_plugins()
    if as_json:
        click.echo(json.dumps([info.to_dict() for info in infos], indent=2))
        return
    for info in infos:
        status = "FAILED" if info.errors else "ok"
        dist = f"{info.distribution or '-'} {info.version or ''}".strip()
        click.echo(f"{info.name:<12} {status:<6} {dist:<24} hooks: {', '.join(info.hooks) or '-'}")
        for error in info.errors:
            click.echo(f"{'':<12} error: {error}")


@cli.command("list")
@click.argument("kind", type=click.Choice(["generators", "encoders", "priors", "spaces"]))
@click.option("--options", "show_options", is_flag=True,
              help="Also print each one's options (type, default, limits, help); for priors, their sampling settings.")
def list_command(kind: str, show_options: bool) -> None:
    """List the generators, encoders, priors or latent spaces that plugins provide."""
    from latentmap.config import describe_options
    from latentmap.plugins import get_plugin_manager

    manager = get_plugin_manager()
    registry = manager.registry(kind)
    if not registry:
        click.echo(f"no {kind} registered")
    for name in sorted(registry):
        registration = registry[name]
        shown = f"{name}:SPEC" if kind == "encoders" else name
        click.echo(f"{shown:<22} {registration.description}  [{registration.plugin}]")
        if not show_options:
            continue
        groups = [("options", registration.options)]
        if registration.sampling is not None:
            groups.append(("sampling settings", registration.sampling))
        for title, declared in groups:
            infos = describe_options(declared)
            click.echo(f"{'':<4}{title}:" + ("" if infos else " none"))
            for info in infos:
                click.echo(f"{'':<6}{info.line()}")
    for info in manager.failed_plugins():
        click.echo(f"warning: plugin {info.name!r} failed: {info.errors[0]}", err=True)


def _add_core_commands() -> None:
    """Add the command of every module in COMMAND_MODULES; one that is missing or broken is a bug: raise."""
    for module_name in COMMAND_MODULES:
        qualified = f"latentmap.commands.{module_name}"
        try:
            module = importlib.import_module(qualified)
        except Exception as exc:
            raise ImportError(f"core command module {qualified} cannot be imported: {type(exc).__name__}: {exc}") from exc
        command = getattr(module, "command", None)
        if not isinstance(command, click.Command):
            raise ImportError(f"core command module {qualified} defines no click command named `command`")
        cli.add_command(command)


def _add_plugin_commands() -> None:
    from latentmap.plugins import get_plugin_manager

    manager = get_plugin_manager()
    manager.load()
    for impl in manager.pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:  # a broken plugin must not break the command line
            info = manager.infos.get(impl.plugin_name)
            if info is not None:
                info.errors.append(f"register_commands failed: {type(exc).__name__}: {exc}")


_add_core_commands()
_add_plugin_commands()


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(prog_name="latentmap")
    except LatentmapError as exc:  # raised outside a command (e.g. while parsing)
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
