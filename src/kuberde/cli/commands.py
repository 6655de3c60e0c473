"""The `connect`, `ssh`, `port-forward` and `config-ssh` commands; `register` mounts them.

Stdout carries only the byte stream (`connect`) or the requested output (`config-ssh`);
every message goes to stderr. Exit codes: 0 done, 1 connection error, 2 usage or
configuration error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Coroutine
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from kuberde import aio
from kuberde.cli.config import (
    ClientSettings,
    ConfigError,
    config_path,
    load,
    resolve,
    write_private_file,
)
from kuberde.cli.connect import connect_stdio
from kuberde.cli.portforward import PortMapping, parse_port_mapping, serve_port_forward
from kuberde.cli.sshconfig import (
    DEFAULT_SSH_PORT,
    HOST_SUFFIX,
    SshConfigError,
    lists_host,
    merge_config,
    render_block,
    ssh_argv,
    ssh_environment,
    strip_host_suffix,
)
from kuberde.naming import InvalidName, validate_name

__all__ = ["config_ssh", "connect", "kuberde_command", "port_forward", "register", "ssh"]

USAGE_ERROR = 2
CONNECTION_ERROR = 1


class Kind(StrEnum):
    SSH = "ssh"
    TCP = "tcp"
    PORT_FORWARD = "port-forward"
    HTTP = "http"


ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="Gateway URL such as http://127.0.0.1:8080 (default: $KUBERDE_SERVER, then the "
        "CLI config written by `kuberde up`).",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="User token (default: $KUBERDE_TOKEN, then the CLI config).",
        show_default=False,
    ),
]
CaFileOption = Annotated[
    str | None,
    typer.Option(
        "--ca-file",
        help="Extra CA certificate (PEM) to trust for the gateway (default: $KUBERDE_CA_FILE).",
        show_default=False,
    ),
]
AgentArgument = Annotated[
    str,
    typer.Argument(
        metavar="AGENT",
        help="Short name (`dev`), full agent ID (`user-alice-dev`) or `NAME.kuberde`.",
        show_default=False,
    ),
]


def register(app: typer.Typer) -> None:
    """Mount the data-path commands on the main `kuberde` app."""
    app.command("connect")(connect)
    app.command("ssh", context_settings={"ignore_unknown_options": True})(ssh)
    app.command("port-forward")(port_forward)
    app.command("config-ssh")(config_ssh)


def kuberde_command() -> list[str]:
    """How ssh can start this CLI again: the `kuberde` script we run as, else `python -m`."""
    script = Path(sys.argv[0])
    if script.name == "kuberde" and script.is_file() and os.access(script, os.X_OK):
        return [str(script.absolute())]
    return [sys.executable, "-m", "kuberde"]


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"kuberde: {message}", err=True)
    return typer.Exit(code)


def _settings(server: str | None, token: str | None, ca_file: str | None) -> ClientSettings:
    try:
        return resolve(server, token, os.environ, ca_file_flag=ca_file)
    except ConfigError as exc:
        raise _fail(str(exc), USAGE_ERROR) from None


def _agent(value: str) -> str:
    try:
        return validate_name(strip_host_suffix(value), "agent")
    except InvalidName as exc:
        raise typer.BadParameter(str(exc), param_hint="AGENT") from None


def _run(main: Coroutine[Any, Any, int], *, interrupted: int) -> int:
    try:
        return aio.run(main)
    except KeyboardInterrupt:
        return interrupted


def connect(
    agent: AgentArgument,
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            "-p",
            min=1,
            max=65535,
            help="Workspace port (default: the agent's LOCAL_TARGET).",
            show_default=False,
        ),
    ] = None,
    kind: Annotated[Kind, typer.Option("--kind", help="Connection kind.")] = Kind.TCP,
    server: ServerOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Bridge stdin/stdout to a workspace port (ssh's ProxyCommand)."""
    name = _agent(agent)
    settings = _settings(server, token, ca_file)
    raise typer.Exit(_run(connect_stdio(settings, name, port, kind.value), interrupted=130))


def ssh(
    destination: Annotated[
        str, typer.Argument(metavar="[USER@]AGENT", help="Workspace to log in to.")
    ],
    ssh_args: Annotated[
        list[str] | None,
        typer.Argument(help="Options and command for ssh (put them after `--`).", metavar="ARGS"),
    ] = None,
    port: Annotated[
        int,
        typer.Option("--port", "-p", min=1, max=65535, help="Workspace port of sshd."),
    ] = DEFAULT_SSH_PORT,
    server: ServerOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Run OpenSSH to a workspace through `kuberde connect`."""
    user, _, agent = destination.rpartition("@")
    name = _agent(agent)
    settings = _settings(server, token, ca_file)
    known_hosts, identity = _generated_ssh_files(name + HOST_SUFFIX)
    argv = ssh_argv(
        kuberde_command(),
        name,
        user=user or None,
        port=port,
        extra=ssh_args or [],
        known_hosts=known_hosts,
        identity_file=identity,
    )
    try:
        os.execvpe(argv[0], argv, ssh_environment(settings, os.environ))
    except FileNotFoundError:
        raise _fail("ssh not found: install the OpenSSH client", CONNECTION_ERROR) from None
    except OSError as exc:
        raise _fail(f"cannot run ssh: {exc.strerror or exc}", CONNECTION_ERROR) from None


def _generated_ssh_files(host: str) -> tuple[str | None, str | None]:
    """The known_hosts file and key `kuberde up` stored (config key `ssh`) for a workspace
    whose host key it generated, if that known_hosts file vouches for `host`."""
    try:
        stored = load(config_path()).extra.get("ssh")
    except ConfigError:
        return None, None
    if not isinstance(stored, dict) or not isinstance(stored.get("known_hosts"), str):
        return None, None
    known_hosts = stored["known_hosts"]
    try:
        listed = lists_host(Path(known_hosts).read_text(errors="replace"), host)
    except OSError:
        return None, None
    if not listed:
        return None, None
    identity = stored.get("identity_file")
    return known_hosts, identity if isinstance(identity, str) else None


def port_forward(
    agent: AgentArgument,
    ports: Annotated[
        list[str],
        typer.Argument(
            metavar="[LOCAL:]REMOTE...",
            help="`2022:22` listens on 2022 for port 22; `22` uses the same port; `:22` any.",
            show_default=False,
        ),
    ],
    address: Annotated[
        str, typer.Option("--address", help="Local address to listen on.")
    ] = "127.0.0.1",
    server: ServerOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Forward local ports to a workspace, one tunnel per accepted connection."""
    name = _agent(agent)
    mappings: list[PortMapping] = []
    for spec in ports:
        try:
            mappings.append(parse_port_mapping(spec))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="[LOCAL:]REMOTE") from None
    settings = _settings(server, token, ca_file)
    raise typer.Exit(_run(serve_port_forward(settings, name, mappings, address), interrupted=0))


def config_ssh(
    write: Annotated[
        bool, typer.Option("--write", help="Update the ssh config instead of printing the block.")
    ] = False,
    ssh_config: Annotated[
        Path, typer.Option("--ssh-config", help="The ssh client configuration file.")
    ] = Path("~/.ssh/config"),
) -> None:
    """Let plain `ssh NAME.kuberde` work: a managed block in ~/.ssh/config."""
    block = render_block(kuberde_command())
    if not write:
        typer.echo(block, nl=False)
        return
    path = ssh_config.expanduser()
    try:
        message = _update_ssh_config(path, block)
    except SshConfigError as exc:
        raise _fail(f"{path}: {exc}", CONNECTION_ERROR) from None
    except OSError as exc:
        raise _fail(f"cannot update {path}: {exc.strerror or exc}", CONNECTION_ERROR) from None
    typer.echo(message, err=True)


def _update_ssh_config(path: Path, block: str) -> str:
    """Write the merged config (0600, atomically) after backing the original up."""
    target = path.resolve() if path.is_symlink() else path
    try:
        original: bytes | None = target.read_bytes()
    except FileNotFoundError:
        original = None
    existing = (original or b"").decode("utf-8", errors="surrogateescape")
    merged = merge_config(existing, block)
    if merged == existing:
        return f"{path} is up to date"
    backup = target.with_name(target.name + ".bak")
    if original is not None:
        write_private_file(backup, original)
    write_private_file(target, merged.encode("utf-8", errors="surrogateescape"))
    if original is None:
        return f"wrote {path}"
    return f"updated {path} (the previous version is in {backup})"
