"""The demo workspace `kuberde up` creates when given no files.

With OpenSSH installed it is a real `sshd` on a loopback port, with a generated host key
(trusted through the CLI's known_hosts, so host key checking stays on) and the user's SSH
identity authorised: their own keys, else the platform-managed key (`kuberde.cli.sshkeys`).
Without `sshd` it is a small HTTP server. Either way the workspace exposes a *workspace
port* (22 or 8080) that the runtime maps to the real loopback port, as a pod's container
port would be.
"""

from __future__ import annotations

import os
import pwd
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kuberde.cli import sshkeys
from kuberde.local.accounts import Account, owner_name
from kuberde.local.runtime import LOCAL_PORTS_ANNOTATION
from kuberde.local.sshd import find_sshd, prepare_sshd
from kuberde.resource import API_VERSION, KIND

__all__ = [
    "DEMO_NAME",
    "DemoWorkspace",
    "current_user",
    "demo_workspace",
]

DEMO_NAME = "demo"
DEMO_TTL = "5m"


@dataclass(frozen=True)
class DemoWorkspace:
    document: dict[str, Any]
    kind: str
    workspace_port: int
    local_port: int
    known_hosts: Path | None
    identity_file: Path | None
    #: Who ssh logs in as: the account the demo's sshd runs as.
    login: str


def current_user() -> str:
    """The OS user we run as (not $USER, which anyone can set) as an owner name."""
    return owner_name(pwd.getpwuid(os.geteuid()).pw_name)


def _stable_port(path: Path) -> int:
    """A free loopback port, remembered so the workspace keeps it across restarts."""
    if path.exists() and path.read_text().strip().isdigit():
        return int(path.read_text())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    path.write_text(str(port))
    return port


def _sshd_demo(
    directory: Path, server_directory: Path, port: int, account: Account
) -> tuple[list[str], Path, Path]:
    """sshd, running as `account`, trusting the user's SSH identity (their own key, else the
    managed one); its host key is recorded in the CLI's known_hosts as `demo.kuberde`,
    replacing an older one."""
    files = prepare_sshd(
        server_directory,
        port,
        account=account,
        client_directory=directory,
        comment="kuberde-demo",
        extra_authorized_keys=sshkeys.public_keys(),
    )
    known_hosts = sshkeys.record_host_key(f"{DEMO_NAME}.kuberde", files.host_public_key())
    sshkeys.record_login(f"{DEMO_NAME}.kuberde", account.name)
    return files.argv, known_hosts, sshkeys.identities()[0]


def demo_workspace(state_dir: Path, owner: str, account: Account) -> DemoWorkspace:
    """The demo for `owner`, whose workloads run as `account`: what the server reads is the
    account's (in its home when that is not us); the rest stays in the state directory."""
    directory = state_dir / "demo"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    server_directory = directory if account.uid == os.geteuid() else account.home / ".kuberde-demo"
    port = _stable_port(directory / "port")
    known_hosts = identity = None
    if find_sshd() is not None:
        argv, known_hosts, identity = _sshd_demo(directory, server_directory, port, account)
        kind, workspace_port = "ssh", 22
    else:
        site = server_directory / "www"
        site.mkdir(parents=True, exist_ok=True)
        (site / "index.html").write_text("<h1>Hello from your KubeRDE demo workspace</h1>\n")
        for path in (server_directory, site, site / "index.html"):
            os.chown(path, account.uid, account.gid)
        argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
        argv += ["--directory", str(site)]
        kind, workspace_port = "http", 8080
    document = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": DEMO_NAME,
            "annotations": {LOCAL_PORTS_ANNOTATION: f"{workspace_port}={port}"},
        },
        "spec": {
            "owner": owner,
            "ttl": DEMO_TTL,
            "localTarget": f"127.0.0.1:{workspace_port}",
            "workload": {"command": argv},
        },
    }
    return DemoWorkspace(document, kind, workspace_port, port, known_hosts, identity, account.name)
