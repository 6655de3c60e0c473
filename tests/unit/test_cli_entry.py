"""The fast `kuberde connect` argument parser, and that it hands everything else to Typer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kuberde.cli.commands import Kind
from kuberde.cli.entry import CONNECTION_KINDS, ConnectArgs, parse_connect
from kuberde.mux.preamble import KINDS
from tests.loaded_modules import run_listing_packages


def test_kinds_match_the_typer_command_and_the_preamble() -> None:
    assert CONNECTION_KINDS == {kind.value for kind in Kind} == KINDS


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["connect", "dev"], ConnectArgs("dev")),
        (
            ["connect", "dev.kuberde", "--port", "22", "--kind", "ssh"],
            ConnectArgs("dev", 22, "ssh"),
        ),
        (["connect", "--port=2222", "user-alice-dev"], ConnectArgs("user-alice-dev", 2222)),
        (["connect", "dev", "-p", "80", "-p8080"], ConnectArgs("dev", 8080)),
        (
            ["connect", "dev", "--server", "http://h:1", "--token=t", "--ca-file", "/ca"],
            ConnectArgs("dev", server="http://h:1", token="t", ca_file="/ca"),
        ),
    ],
)
def test_connect_lines_it_takes(argv: list[str], expected: ConnectArgs) -> None:
    assert parse_connect(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["ssh", "dev"],
        ["--log-level", "debug", "connect", "dev"],
        ["connect"],
        ["connect", "--help"],
        ["connect", "dev", "--help"],
        ["connect", "a", "b"],
        ["connect", "dev", "--port"],
        ["connect", "dev", "--port", "0"],
        ["connect", "dev", "--port", "65536"],
        ["connect", "dev", "--port", "x"],
        ["connect", "dev", "-p=22"],
        ["connect", "dev", "--kind", "udp"],
        ["connect", "Bad_Name"],
        ["connect", "dev", "--unknown", "1"],
        ["connect", "dev", "-x"],
        ["connect", "dev", "--"],
    ],
)
def test_anything_else_goes_to_typer(argv: list[str]) -> None:
    assert parse_connect(argv) is None


TYPER_PATH_HEAVY = (
    "aiohttp",
    "asyncio",
    "uvloop",
    "kopf",
    "kubernetes_asyncio",
    "pydantic",
    "yaml",
)


def test_the_typer_app_loads_without_the_heavy_libraries() -> None:
    """Every `kuberde` command pays for what `kuberde.cli.main` imports before it runs;
    each command loads what it needs itself."""
    script = (
        "import sys, kuberde.cli.main\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({TYPER_PATH_HEAVY!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["version"], 0),
        (["ls", "--help"], 0),
        (["port-forward", "--help"], 0),
        (["logs", "dev", "--tail", "abc"], 2),
        (["ls", "--output", "xml"], 2),
    ],
)
def test_commands_run_without_pydantic_or_aiohttp(
    args: list[str], code: int, tmp_path: Path
) -> None:
    """Typer would convert every option value through pydantic (~100 ms of start-up);
    kuberde.cli.coercion converts ours, bad values included. `version` with no gateway
    configured sends no request, and the API client needs no aiohttp anyway."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "KUBERDE_CONFIG": "/nonexistent"}
    done, loaded = run_listing_packages(args, env, timeout=60)
    assert done.returncode == code, done.stderr
    assert "typer" in loaded
    assert not {"pydantic", "aiohttp"} & loaded
