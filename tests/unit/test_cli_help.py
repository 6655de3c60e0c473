"""`kuberde --help` and every command's help: plain metavars, examples, shared flags."""

from __future__ import annotations

import re

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from kuberde.cli.main import app

ROOT = get_command(app)


def _commands() -> list[list[str]]:
    found = []
    for name, command in ROOT.commands.items():  # type: ignore[attr-defined]
        subcommands = getattr(command, "commands", None)
        if subcommands:
            found += [[name, sub] for sub in subcommands]
        else:
            found.append([name])
    return found


COMMANDS = _commands()
GATEWAY_COMMANDS = [
    "ls", "apply", "delete", "wake", "stop", "logs", "connect", "ssh", "port-forward", "version",
]  # fmt: skip


def _help(path: list[str]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_has_examples_and_no_python_types(path: list[str]) -> None:
    text = _help(path)
    assert "Examples:" in text
    assert not re.search(r"<(str|int|float|bool|path|list\[|int range)", text), text
    assert "[1<=x<=" not in text


@pytest.mark.parametrize("name", GATEWAY_COMMANDS)
def test_every_gateway_command_takes_the_shared_connection_flags(name: str) -> None:
    text = _help([name])
    for flag in ("--server URL", "--token TOKEN", "--ca-file FILE", "--log-level"):
        assert flag in text, f"{name}: {flag}"


def test_workspace_arguments_are_called_name_everywhere() -> None:
    for name in ("delete", "wake", "stop", "logs", "connect", "port-forward"):
        assert f"kuberde {name} [OPTIONS] NAME" in _help([name])
    assert "kuberde ssh [OPTIONS] [USER@]NAME" in _help(["ssh"])
