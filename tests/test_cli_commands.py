"""Every core command module becomes a command of ``latentmap``, and one that cannot be imported
stops the command line with an error naming it (never a command that silently disappears).

Commands are loaded on demand: ``import latentmap.cli`` and ``latentmap --version`` import no command
and no torch, and even the full listing (``--help``) imports no torch."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import click
import pytest

import latentmap.commands
from latentmap import cli as cli_module


def test_every_core_command_module_is_a_command_of_the_cli():
    assert len(set(cli_module.COMMAND_MODULES)) == len(cli_module.COMMAND_MODULES)
    ctx = click.Context(cli_module.cli)
    for module_name in cli_module.COMMAND_MODULES:
        command = importlib.import_module(f"latentmap.commands.{module_name}").command
        assert isinstance(command, click.Command)
        assert cli_module.cli.get_command(ctx, command.name) is command, module_name
    assert {command.replace("_", "-") for command in cli_module.COMMAND_MODULES} <= set(cli_module.cli.list_commands(ctx))


@pytest.fixture
def fresh_cli(monkeypatch, tmp_path):
    """An empty group to add to, and a folder of extra ``latentmap.commands`` modules."""
    monkeypatch.setattr(cli_module, "cli", click.Group("latentmap-test"))
    monkeypatch.setattr(latentmap.commands, "__path__", [*latentmap.commands.__path__, str(tmp_path)])
    yield tmp_path
    for name in [n for n in sys.modules if n.startswith("latentmap.commands.fixture_")]:
        del sys.modules[name]


def test_a_missing_core_command_module_raises_naming_it(monkeypatch, fresh_cli):
    monkeypatch.setattr(cli_module, "COMMAND_MODULES", ["train", "no_such_command"])
    with pytest.raises(ImportError, match=r"latentmap\.commands\.no_such_command cannot be imported"):
        cli_module._add_core_commands()
    assert list(cli_module.cli.commands) == ["train"]


def test_a_core_command_module_that_fails_while_importing_raises_naming_it(monkeypatch, fresh_cli):
    (fresh_cli / "fixture_broken.py").write_text("import click\nraise RuntimeError('half-finished refactor')\n")
    monkeypatch.setattr(cli_module, "COMMAND_MODULES", ["fixture_broken"])
    with pytest.raises(ImportError, match=r"latentmap\.commands\.fixture_broken .*half-finished refactor"):
        cli_module._add_core_commands()


def test_a_core_command_module_without_a_command_raises_naming_it(monkeypatch, fresh_cli):
    (fresh_cli / "fixture_commandless.py").write_text("def command():\n    pass\n")
    monkeypatch.setattr(cli_module, "COMMAND_MODULES", ["fixture_commandless"])
    with pytest.raises(ImportError, match=r"latentmap\.commands\.fixture_commandless defines no click command"):
        cli_module._add_core_commands()


def test_a_core_command_module_whose_command_has_another_name_raises_naming_it(monkeypatch, fresh_cli):
    (fresh_cli / "fixture_renamed.py").write_text("import click\n@click.command('other-name')\ndef command():\n    pass\n")
    monkeypatch.setattr(cli_module, "COMMAND_MODULES", ["fixture_renamed"])
    with pytest.raises(ImportError, match=r"latentmap\.commands\.fixture_renamed defines command 'other-name'"):
        cli_module._add_core_commands()


BUILTIN_PLUGINS = {**os.environ, "LATENTMAP_LOAD_PLUGINS": "openclip,stylegan,shapes,flow"}


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=BUILTIN_PLUGINS,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_importing_the_cli_imports_no_torch_and_no_command():
    loaded = _python("import sys, latentmap.cli; print('torch' in sys.modules, "
                     "any(m.startswith('latentmap.commands.') for m in sys.modules))")
    assert loaded.split() == ["False", "False"]


def test_a_command_named_imports_only_its_own_module():
    code = ("import sys, click; from latentmap.cli import COMMAND_MODULES, cli; "
            "print(cli.get_command(click.Context(cli), 'train').name, "
            "sorted(m for m in COMMAND_MODULES if f'latentmap.commands.{m}' in sys.modules))")
    assert _python(code).strip() == "train ['train']"


def test_help_lists_core_and_plugin_commands_without_importing_torch():
    out = subprocess.run([sys.executable, "-m", "latentmap", "--help"], capture_output=True, text=True,
                         env=BUILTIN_PLUGINS, timeout=300)
    assert out.returncode == 0, out.stderr
    listed = {line.split()[0] for line in out.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert {"sample", "train", "eval", "directions", "plugins", "list", "convert-stylegan"} <= listed
    code = ("import sys; from click.testing import CliRunner; from latentmap.cli import cli; "
            "result = CliRunner().invoke(cli, ['--help']); assert 'convert-stylegan' in result.output, result.output; "
            "print('torch' in sys.modules)")
    assert _python(code).strip() == "False"


def test_version_imports_no_command():
    code = ("import sys; from click.testing import CliRunner; from latentmap.cli import cli; "
            "print(CliRunner().invoke(cli, ['--version']).output.strip(), 'torch' in sys.modules, "
            "any(m.startswith(('latentmap.commands.', 'latentmap_')) for m in sys.modules))")
    from latentmap import __version__

    assert _python(code).split() == ["latentmap,", "version", __version__, "False", "False"]


def test_a_plugin_whose_commands_fail_is_reported_by_plugins_and_breaks_nothing(tmp_path):
    (tmp_path / "fixture_bad_commands.py").write_text(
        "from latentmap import hookimpl\n"
        "@hookimpl\n"
        "def register_commands(cli):\n"
        "    raise RuntimeError('no commands today')\n")
    env = {**BUILTIN_PLUGINS, "LATENTMAP_PLUGIN_MODULES": "fixture_bad_commands",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    listed = subprocess.run([sys.executable, "-m", "latentmap", "plugins", "--json"], capture_output=True, text=True,
                            env=env, timeout=300)
    assert listed.returncode == 0, listed.stderr
    (info,) = [p for p in json.loads(listed.stdout) if p["name"] == "fixture_bad_commands"]
    assert info["errors"] == ["register_commands failed: RuntimeError: no commands today"]
    helped = subprocess.run([sys.executable, "-m", "latentmap", "--help"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert helped.returncode == 0 and "convert-stylegan" in helped.stdout
