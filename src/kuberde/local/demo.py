"""The demo workspace `kuberde up` creates when given no files.

With OpenSSH installed it is a real `sshd` on a loopback port, with a generated host key
(trusted through the CLI's known_hosts, so host key checking stays on) and the user's SSH
identity authorised: their own keys, else the platform-managed key (`kuberde.cli.sshkeys`).
Without `sshd` it is a small HTTP server. Either way the workspace exposes a *workspace
port* (22 or 8080) that the runtime maps to the real loopback port, as a pod's container
port would be.
"""

from __future__ import annotations

import getpass
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kuberde.cli import sshkeys
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
_SSHD_LOCATIONS = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")


@dataclass(frozen=True)
class DemoWorkspace:
    document: dict[str, Any]
    kind: str
    workspace_port: int
    local_port: int
    known_hosts: Path | None
    identity_file: Path | None


def current_user() -> str:
    """The OS user as a valid owner name (lower-case DNS label)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", getpass.getuser().lower()).strip("-")
    return cleaned[:30] or "user"


def _stable_port(path: Path) -> int:
    """A free loopback port, remembered so the workspace keeps it across restarts."""
    if path.exists() and path.read_text().strip().isdigit():
        return int(path.read_text())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    path.write_text(str(port))
    return port


def _sshd_demo(directory: Path, port: int) -> tuple[list[str], Path, Path]:
    """sshd trusting the user's SSH identity (their own key, else the managed one); its host
    key is recorded in the CLI's known_hosts as `demo.kuberde`, replacing an older one."""
    files = prepare_sshd(
        directory, port, comment="kuberde-demo", extra_authorized_keys=sshkeys.public_keys()
    )
    known_hosts = sshkeys.record_host_key(f"{DEMO_NAME}.kuberde", files.host_public_key())
    return files.argv, known_hosts, sshkeys.identities()[0]


def demo_workspace(state_dir: Path, owner: str) -> DemoWorkspace:
    directory = state_dir / "demo"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    port = _stable_port(directory / "port")
    known_hosts = identity = None
    if find_sshd() is not None:
        argv, known_hosts, identity = _sshd_demo(directory, port)
        kind, workspace_port = "ssh", 22
    else:
        site = directory / "www"
        site.mkdir(exist_ok=True)
        (site / "index.html").write_text("<h1>Hello from your KubeRDE demo workspace</h1>\n")
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
    return DemoWorkspace(document, kind, workspace_port, port, known_hosts, identity)
