"""The `kuberde` executable. `kuberde connect` — ssh's ProxyCommand, run before every
`ssh NAME.kuberde` — is parsed here without loading Typer or anything else heavy; every
other command line, and any `connect` this parser is not sure of (`--help`, a bad value),
goes to the Typer app, which reports errors and help as usual.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CONNECTION_KINDS", "ConnectArgs", "main", "parse_connect"]

#: `kuberde connect --kind` values (the Typer command's choices; a test keeps them equal).
CONNECTION_KINDS = frozenset({"ssh", "tcp", "port-forward", "http"})
_VALUED = {
    "--port": "port",
    "-p": "port",
    "--kind": "kind",
    "--server": "server",
    "--token": "token",
    "--ca-file": "ca_file",
}


@dataclass(frozen=True)
class ConnectArgs:
    agent: str
    port: int | None = None
    kind: str = "tcp"
    server: str | None = None
    token: str | None = None
    ca_file: str | None = None


def _options(words: Sequence[str]) -> tuple[list[str], dict[str, str]] | None:
    """Positionals and option values (the last one wins, as with Click); None for any
    word this parser does not know."""
    positionals: list[str] = []
    values: dict[str, str] = {}
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if not word.startswith("-") or word == "-":
            positionals.append(word)
            continue
        if word.startswith("--"):
            name, sep, value = word.partition("=")
        elif word.startswith("-p") and len(word) > 2:
            name, sep, value = "-p", "=", word[2:]
        else:
            name, sep, value = word, "", ""
        if name not in _VALUED:
            return None
        if not sep:
            if index >= len(words):
                return None
            value = words[index]
            index += 1
        values[_VALUED[name]] = value
    return positionals, values


def parse_connect(argv: Sequence[str]) -> ConnectArgs | None:
    """`connect AGENT [--port N] [--kind K] [--server S] [--token T] [--ca-file F]`, or
    None when `argv` is anything else or anything this fast path would get wrong."""
    if not argv or argv[0] != "connect":
        return None
    parsed = _options(argv[1:])
    if parsed is None:
        return None
    positionals, values = parsed
    if len(positionals) != 1:
        return None
    from kuberde.cli.sshconfig import strip_host_suffix
    from kuberde.naming import InvalidName, validate_name

    try:
        agent = validate_name(strip_host_suffix(positionals[0]), "workspace")
    except InvalidName:
        return None
    raw_port = values.get("port")
    if raw_port is not None and not (raw_port.isdigit() and 1 <= int(raw_port) <= 65535):
        return None
    kind = values.get("kind", "tcp")
    if kind not in CONNECTION_KINDS:
        return None
    return ConnectArgs(
        agent=agent,
        port=int(raw_port) if raw_port is not None else None,
        kind=kind,
        server=values.get("server"),
        token=values.get("token"),
        ca_file=values.get("ca_file"),
    )


def main() -> None:
    args = parse_connect(sys.argv[1:])
    if args is None:
        from kuberde.cli.main import main as typer_main

        typer_main()
        return
    import os

    from kuberde.cli.config import ConfigError, resolve
    from kuberde.cli.connect import run_connect

    try:
        settings = resolve(args.server, args.token, os.environ, ca_file_flag=args.ca_file)
    except ConfigError as exc:
        print(f"kuberde: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_connect(settings, args.agent, args.port, args.kind))
