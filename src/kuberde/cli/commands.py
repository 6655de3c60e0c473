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

from kuberde.cli import sshkeys
from kuberde.cli.base import Gateway, NameArgument, command, complete_names, fail, gateway_command
from kuberde.cli.config import ClientSettings
from kuberde.cli.sshconfig import (
    DEFAULT_SSH_PORT,
    HOST_SUFFIX,
    SshConfigError,
    merge_config,
    render_block,
    ssh_argv,
    ssh_environment,
    strip_host_suffix,
)
from kuberde.files import write_private
from kuberde.naming import InvalidName, validate_name

__all__ = ["config_ssh", "connect", "kuberde_command", "port_forward", "register", "ssh"]


class Kind(StrEnum):
    SSH = "ssh"
    TCP = "tcp"
    PORT_FORWARD = "port-forward"
    HTTP = "http"


PortOption = Annotated[
    int | None,
    typer.Option(
        "--port",
        "-p",
        metavar="PORT",
        help="Workspace port (default: the workspace's localTarget).",
        show_default=False,
    ),
]


def register(app: typer.Typer) -> None:
    """Mount the data-path commands on the main `kuberde` app."""
    gateway_command(app, "connect")(connect)
    gateway_command(app, "ssh", context_settings={"ignore_unknown_options": True})(ssh)
    gateway_command(app, "port-forward")(port_forward)
    command(app, "config-ssh")(config_ssh)


def kuberde_command() -> list[str]:
    """How ssh can start this CLI again: the `kuberde` script we run as, else `python -m`."""
    script = Path(sys.argv[0])
    if script.name == "kuberde" and script.is_file() and os.access(script, os.X_OK):
        return [str(script.absolute())]
    return [sys.executable, "-m", "kuberde"]


def _workspace(value: str) -> str:
    try:
        return validate_name(strip_host_suffix(value), "workspace")
    except InvalidName as exc:
        raise typer.BadParameter(str(exc), param_hint="NAME") from None


def _check_exists(settings: ClientSettings, name: str) -> dict[str, Any]:
    """Fail now, with KubeRDE's message, if the gateway knows no such workspace of ours;
    otherwise what it knows (`id`, `owner`, `online`, `login`)."""
    from kuberde.cli.api import call

    found: dict[str, Any] = call(settings, "GET", f"/api/agents/{name}")
    return found


def _run(main: Coroutine[Any, Any, int], *, interrupted: int) -> int:
    from kuberde import aio

    try:
        return aio.run(main)
    except KeyboardInterrupt:
        return interrupted


def connect(
    gateway: Gateway,
    name: NameArgument,
    port: PortOption = None,
    kind: Annotated[Kind, typer.Option("--kind", help="Connection kind.")] = Kind.TCP,
) -> None:
    """Bridge stdin/stdout to a workspace port (ssh's ProxyCommand).

    Examples:

    \b
      ssh -o ProxyCommand='kuberde connect %n --port %p --kind ssh' demo.kuberde
      echo hello | kuberde connect demo --port 7000
    """
    from kuberde.cli.connect import run_connect

    workspace = _workspace(name)
    _valid_port(port)
    raise typer.Exit(run_connect(gateway.settings(), workspace, port, kind.value))


def _valid_port(port: int | None) -> None:
    if port is not None and not 1 <= port <= 65535:
        raise typer.BadParameter(f"{port} is not a port (1-65535)", param_hint="--port")


def ssh(
    gateway: Gateway,
    destination: Annotated[
        str,
        typer.Argument(
            metavar="[USER@]NAME", help="Workspace to log in to.", autocompletion=complete_names
        ),
    ],
    ssh_args: Annotated[
        list[str] | None,
        typer.Argument(
            help="Options and command for ssh (put them after `--`).", metavar="ARGS..."
        ),
    ] = None,
    port: Annotated[
        int, typer.Option("--port", "-p", metavar="PORT", help="Workspace port of sshd.")
    ] = DEFAULT_SSH_PORT,
) -> None:
    """Run OpenSSH to a workspace through `kuberde connect`, host key checked.

    After a KubeRDE error (the workspace went away, the gateway did) that error is all it
    prints, and it exits 1; otherwise the exit code is ssh's.

    Examples:

    \b
      kuberde ssh demo
      kuberde ssh alice@dev -- -L 8888:127.0.0.1:8888
      kuberde ssh demo -- uname -a
    """
    user, _, agent = destination.rpartition("@")
    name = _workspace(agent)
    _valid_port(port)
    settings = gateway.settings()
    # Under `kuberde up` the workspace's sshd may run as an account of its own.
    login = _check_exists(settings, name).get("login")
    known_hosts = sshkeys.known_hosts_file()
    listed = name + HOST_SUFFIX in sshkeys.listed_aliases()
    own_keys = sshkeys.user_keys()
    try:
        identity_file = None if own_keys else str(sshkeys.managed_key())
    except sshkeys.ManagedKeyError as exc:
        fail(str(exc))
    argv = ssh_argv(
        kuberde_command(),
        name,
        user=user or (login if isinstance(login, str) else None),
        port=port,
        extra=ssh_args or [],
        known_hosts=str(known_hosts) if listed else None,
        identity_file=identity_file,
    )
    from kuberde.cli.sshrun import run_ssh

    try:
        code = run_ssh(argv, ssh_environment(settings, os.environ))
    except FileNotFoundError:
        fail("ssh not found: install the OpenSSH client (apt-get install openssh-client)")
    except OSError as exc:
        fail(f"cannot run ssh: {exc.strerror or exc}")
    raise typer.Exit(code)


def port_forward(
    gateway: Gateway,
    name: NameArgument,
    ports: Annotated[
        list[str],
        typer.Argument(
            metavar="[LOCAL:]REMOTE...",
            help="`2022:22` listens on 2022 for port 22; `22` uses the same port; `:22` any.",
            show_default=False,
        ),
    ],
    address: Annotated[
        str, typer.Option("--address", metavar="ADDRESS", help="Local address to listen on.")
    ] = "127.0.0.1",
) -> None:
    """Forward local ports to a workspace, like `kubectl port-forward`; runs until Ctrl-C.

    Examples:

    \b
      kuberde port-forward demo 2022:22     # then, elsewhere: ssh -p 2022 ...@127.0.0.1
      kuberde port-forward dev 8888 :5432
    """
    from kuberde.cli.portforward import PortMapping, parse_port_mapping, serve_port_forward

    workspace = _workspace(name)
    mappings: list[PortMapping] = []
    for spec in ports:
        try:
            mappings.append(parse_port_mapping(spec))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="[LOCAL:]REMOTE") from None
    settings = gateway.settings()
    _check_exists(settings, workspace)
    raise typer.Exit(
        _run(serve_port_forward(settings, workspace, mappings, address), interrupted=0)
    )


def config_ssh(
    write: Annotated[
        bool, typer.Option("--write", help="Update the ssh config instead of printing the block.")
    ] = False,
    ssh_config: Annotated[
        Path,
        typer.Option("--ssh-config", metavar="FILE", help="The ssh client configuration file."),
    ] = Path("~/.ssh/config"),
) -> None:
    """Let plain `ssh NAME.kuberde` work: a managed block in ~/.ssh/config.

    Examples:

    \b
      kuberde config-ssh            # print the block
      kuberde config-ssh --write    # then: ssh demo.kuberde
    """
    try:
        identities = [str(key) for key in sshkeys.identities(create=write)]
    except sshkeys.ManagedKeyError as exc:
        fail(str(exc))
    block = render_block(
        kuberde_command(),
        identities=identities,
        known_hosts=str(sshkeys.known_hosts_file()),
        hosts=sshkeys.listed_aliases(),
        logins=sshkeys.logins(),
    )
    if not write:
        typer.echo(block, nl=False)
        return
    path = ssh_config.expanduser()
    try:
        message = _update_ssh_config(path, block)
    except SshConfigError as exc:
        fail(f"{path}: {exc}")
    except OSError as exc:
        fail(f"cannot update {path}: {exc.strerror or exc}")
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
        write_private(backup, original)
    write_private(target, merged.encode("utf-8", errors="surrogateescape"))
    if original is None:
        return f"wrote {path}"
    return f"updated {path} (the previous version is in {backup})"
