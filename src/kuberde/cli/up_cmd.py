"""`kuberde up`'s CLI side: write the user's CLI configuration and tell them what to run."""

from __future__ import annotations

import getpass
import shlex
import shutil
import sys
from pathlib import Path

from kuberde.cli.config import CliConfig, ConfigError, config_path, load, save
from kuberde.local.demo import DEMO_NAME, DemoWorkspace
from kuberde.local.up import Ready

__all__ = ["announce", "cli_program", "next_steps", "plain_ssh_command"]


def write_cli_config(server: str, token: str) -> Path:
    existing = _stored_config()
    # `ssh` held the demo's key paths before they had fixed places (kuberde.cli.sshkeys).
    extra = {key: value for key, value in existing.extra.items() if key != "ssh"}
    return save(CliConfig(server=server, token=token, extra=extra))


def _stored_config() -> CliConfig:
    """The user's existing CLI config, so keys we do not manage survive; empty if unreadable."""
    try:
        return load(config_path())
    except ConfigError:
        return CliConfig()


def cli_program(argv0: str, on_path: str | None) -> str:
    """How the user's shell runs this CLI: `kuberde` when that is on PATH, else the path it
    was started by (`make run` starts `.venv/bin/kuberde`, which may not be on PATH)."""
    started = Path(argv0)
    if started.name != "kuberde" or (on_path and Path(on_path).resolve() == started.resolve()):
        return "kuberde"
    return str(started)


def plain_ssh_command(demo: DemoWorkspace, local_port: int, user: str) -> str:
    """Plain OpenSSH to the demo through a `port-forward`, with its host key checked and the
    user's SSH identity (their own key, else the managed one) offered explicitly."""
    words = ["ssh", "-p", str(local_port)]
    if demo.identity_file is not None:
        words += ["-i", str(demo.identity_file)]
    if demo.known_hosts is not None:
        words += ["-o", f"UserKnownHostsFile={demo.known_hosts}"]
    words += ["-o", f"HostKeyAlias={DEMO_NAME}.kuberde", f"{user}@127.0.0.1"]
    return shlex.join(words)


def next_steps(
    url: str, demo: DemoWorkspace | None, config_file: Path, program: str, *, user: str
) -> str:
    lines = [f"KubeRDE is up: gateway {url}", f"CLI configuration written to {config_file}"]
    if demo is not None and demo.kind == "ssh":
        lines += [
            "",
            "The demo workspace runs OpenSSH. In another terminal:",
            f"  {program} ls -o wide",
            f"  {program} ssh demo",
            f"  {program} config-ssh --write    # then plain `ssh {user}@demo.kuberde` works too",
            f"  {program} stop demo             # scale to zero; connecting wakes it again",
            "",
            "Or through a local port, like kubectl port-forward. Keep this running:",
            f"  {program} port-forward demo 2022:22",
            "and, in a third terminal, while it runs:",
            f"  {plain_ssh_command(demo, 2022, user)}",
        ]
    elif demo is not None:
        lines += [
            "",
            "The demo workspace serves HTTP (install openssh-server for an SSH demo):",
            f"  {program} ls -o wide",
            f"  {program} port-forward demo 8888:8080   # then open http://127.0.0.1:8888",
        ]
    lines.append("Press Ctrl-C to stop; workspace state is kept in the state directory.")
    return "\n".join(lines)


def announce(ready: Ready) -> None:
    """Point the CLI at the gateway that just came up, and print the next steps."""
    config_file = write_cli_config(ready.url, ready.token)
    program = cli_program(sys.argv[0], shutil.which("kuberde"))
    # Plain ssh logs in as the account the demo's sshd runs as.
    login = ready.demo.login if ready.demo is not None else getpass.getuser()
    steps = next_steps(ready.url, ready.demo, config_file, program, user=login)
    print(steps, file=sys.stderr, flush=True)
