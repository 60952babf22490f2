"""Every core command module becomes a command of ``latentmap``, and one that cannot be imported
stops the command line with an error naming it (never a command that silently disappears)."""

from __future__ import annotations

import importlib
import sys

import click
import pytest

import latentmap.commands
from latentmap import cli as cli_module


def test_every_core_command_module_is_a_command_of_the_cli():
    assert len(set(cli_module.COMMAND_MODULES)) == len(cli_module.COMMAND_MODULES)
    for module_name in cli_module.COMMAND_MODULES:
        command = importlib.import_module(f"latentmap.commands.{module_name}").command
        assert isinstance(command, click.Command)
        assert cli_module.cli.commands.get(command.name) is command, module_name


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
