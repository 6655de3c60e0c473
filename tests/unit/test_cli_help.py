"""`kuberde --help` and every command's help: plain metavars, examples, shared flags."""

from __future__ import annotations

import re

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from kuberde.cli.base import LogLevel, derived_metavar
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
    "extend", "open", "login", "whoami", "doctor",
]  # fmt: skip
#: Gateway commands that only ever use the stored token, so take no `--token`.
STORED_TOKEN_ONLY = ["logout"]
#: Commands that do not talk to a gateway: each is here with the reason.
NO_GATEWAY = {
    "agent": "dials the gateway with its own agent credential from the environment",
    "backup": "talks to the Kubernetes API",
    "completion": "prints a script",
    "config-ssh": "writes ~/.ssh/config from local files",
    "operator": "talks to the Kubernetes API",
    "restore": "talks to the Kubernetes API",
    "server": "is the gateway",
    "token": "signs with the key in the state directory",
    "up": "runs the gateway",
    "user-add": "writes the users file in the state directory",
}


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


@pytest.mark.parametrize("name", GATEWAY_COMMANDS + STORED_TOKEN_ONLY)
def test_every_gateway_command_takes_the_shared_connection_flags(name: str) -> None:
    text = _help([name])
    flags = ["--server URL", "--ca-file FILE", "--log-level debug|info|warning|error"]
    for flag in flags if name in STORED_TOKEN_ONLY else [*flags, "--token TOKEN"]:
        assert flag in text, f"{name}: {flag}"
    assert text.count("--server URL") == 1, "one definition of the connection flags"


def test_every_command_is_classified_as_talking_to_the_gateway_or_not() -> None:
    top = sorted(ROOT.commands)  # type: ignore[attr-defined]
    assert top == sorted([*GATEWAY_COMMANDS, *STORED_TOKEN_ONLY, *NO_GATEWAY])


def test_workspace_arguments_are_called_name_everywhere() -> None:
    for name in ("delete", "wake", "stop", "logs", "connect", "port-forward"):
        assert f"kuberde {name} [OPTIONS] NAME" in _help([name])
    assert "kuberde ssh [OPTIONS] [USER@]NAME" in _help(["ssh"])


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_option_metavars_are_plain_words(path: list[str]) -> None:
    """`--state-dir DIR`, never a parameter name such as `STATE_DIR`."""
    text = _help(path)
    assert not re.search(r"--[a-z-]+ [A-Z]+_[A-Z_]+\b", text), text


@pytest.mark.parametrize(
    ("name", "annotation", "expected"),
    [
        ("state_dir", str, "DIR"),
        ("mgmt_token_file", str, "FILE"),
        ("wake_timeout", float, "SECONDS"),
        ("sweep_interval", float, "SECONDS"),
        ("listen", str, "HOST:PORT"),
        ("max_streams_per_user", int, "N"),
        ("oidc_client_id", str, "ID"),
        ("log_level", LogLevel, "debug|info|warning|error"),
    ],
)
def test_derived_metavars(name: str, annotation: object, expected: str) -> None:
    assert derived_metavar(name, annotation) == expected
