"""The ``latentmap`` command line: a click group, its core commands, and plugins' commands.

Every command lives in its own module under ``latentmap.commands`` (a click command named
``command``, module ``foo_bar`` for command ``foo-bar``); plugins add theirs through the
``register_commands`` hook. A ``LatentmapError`` anywhere becomes one ``Error: ...`` line and exit
code 2, never a traceback.

Nothing heavy is imported up front: a command's module is imported when the command is named, and
all of them (with the plugins, for their commands) only when the commands are listed (``--help``).
Command modules keep torch and the pipeline out of their top-level imports, so even the full listing
needs no torch; ``--version`` imports no command at all.
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
    "interpolate",
    "export_hub",
    "demo",
]


class UserError(click.ClickException):
    """Printed as ``Error: message``; exit code 2, like click's usage errors."""

    exit_code = 2


class LatentmapGroup(click.Group):
    """The ``latentmap`` group: commands are loaded on demand, and a LatentmapError becomes a one-line
    error with exit code 2.

    A core command's module is imported when its name is asked for; listing the commands (``--help``)
    imports every core module and loads the plugins, whose ``register_commands`` add theirs; a name that
    is not a core command loads the plugins too, in case one of them provides it.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        _add_core_commands()
        _add_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            module_name = cmd_name.replace("-", "_")
            if module_name in COMMAND_MODULES and cmd_name == _command_name(module_name):
                self.add_command(_core_command(module_name))
            else:
                _add_plugin_commands()
        return super().get_command(ctx, cmd_name)

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
    _add_plugin_commands()  # register_commands too (commands are otherwise added only when listed)
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
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON instead of text: name, description, plugin, options (and sampling settings) of each.")
def list_command(kind: str, show_options: bool, as_json: bool) -> None:
    """List the generators, encoders, priors or latent spaces that plugins provide."""
    from latentmap.config import describe_options
    from latentmap.plugins import get_plugin_manager

    manager = get_plugin_manager()
    registry = manager.registry(kind)
    if as_json:
        click.echo(json.dumps([
            {"name": name, "description": registration.description, "plugin": registration.plugin,
             "options": [info.to_dict() for info in describe_options(registration.options)],
             "sampling": ([info.to_dict() for info in describe_options(registration.sampling)]
                          if registration.sampling is not None else None)}
            for name, registration in sorted(registry.items())], indent=2))
    else:
        _print_registry(kind, registry, show_options)
    for info in manager.failed_plugins():
        click.echo(f"warning: plugin {info.name!r} failed: {info.errors[0]}", err=True)


def _print_registry(kind: str, registry: dict[str, Any], show_options: bool) -> None:
    """``latentmap list KIND`` as text: one line each, and with ``--options`` their declarations."""
    from latentmap.config import describe_options

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


def _command_name(module_name: str) -> str:
    """The command a core module defines: ``build_data`` -> ``build-data``."""
    return module_name.replace("_", "-")


def _core_command(module_name: str) -> click.Command:
    """The command of one module of COMMAND_MODULES; one that is missing or broken is a bug: raise naming it."""
    qualified = f"latentmap.commands.{module_name}"
    try:
        module = importlib.import_module(qualified)
    except Exception as exc:
        raise ImportError(f"core command module {qualified} cannot be imported: {type(exc).__name__}: {exc}") from exc
    command = getattr(module, "command", None)
    if not isinstance(command, click.Command):
        raise ImportError(f"core command module {qualified} defines no click command named `command`")
    if command.name != _command_name(module_name):
        raise ImportError(f"core command module {qualified} defines command {command.name!r}, "
                          f"expected {_command_name(module_name)!r} (the module's name with dashes)")
    return command


def _add_core_commands() -> None:
    """Add the command of every module in COMMAND_MODULES (raising, naming it, for one missing or broken)."""
    for module_name in COMMAND_MODULES:
        if _command_name(module_name) not in cli.commands:
            cli.add_command(_core_command(module_name))


_plugin_commands_from: list[Any] = []  # the plugin manager whose commands were added (reloaded plugins: again)


def _add_plugin_commands() -> None:
    """Let every plugin's ``register_commands`` add its commands, once per plugin manager."""
    from latentmap.plugins import get_plugin_manager

    manager = get_plugin_manager()
    if manager in _plugin_commands_from:
        return
    _plugin_commands_from[:] = [manager]
    manager.load()
    for impl in manager.pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:  # a broken plugin must not break the command line
            info = manager.infos.get(impl.plugin_name)
            if info is not None:
                info.errors.append(f"register_commands failed: {type(exc).__name__}: {exc}")


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(prog_name="latentmap")
    except LatentmapError as exc:  # raised outside a command (e.g. while parsing)
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
