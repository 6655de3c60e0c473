"""KubeRDE's own processes for a benchmark: gateway, agent and `kuberde port-forward`.

Each is the real command a user would run, configured the documented way (flags for the
gateway, environment for the agent and the CLI). Credentials are minted in-process with
the gateway's signing key, exactly as `kuberde token` would.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import ROOT
from bench.certs import write_self_signed
from bench.procs import Child, Processes, wait_for
from kuberde.auth import TokenIssuer, load_or_create_signing_key
from kuberde.local.demo import current_user
from kuberde.testing.python import SHARED_PYTHON, workload_env

#: The interpreter of `kuberde up` workloads: the owner's account must be able to run it.
BENCH_PYTHON = SHARED_PYTHON or sys.executable

__all__ = [
    "BENCH_PYTHON",
    "BENCH_USER",
    "KUBERDE",
    "Gateway",
    "clean_env",
    "get_json",
    "start_agent",
    "start_gateway",
    "start_port_forward",
    "workspace_document",
]

KUBERDE = (sys.executable, "-m", "kuberde")
START_TIMEOUT = 30.0
BENCH_USER = "bench"
#: Prefixes of the caller's variables that would configure our children behind our back.
_CALLERS_SETTINGS = (
    "KUBERDE_",
    "AGENT_",
    "SERVER_URL",
    "LOCAL_TARGET",
    "ALLOWED_PORTS",
    "PORT_MAP",
)


def clean_env(work: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment without the caller's KubeRDE settings, and a CLI config of our own.

    A developer's ~/.config/kuberde or exported AGENT_TOKEN must neither leak into nor be
    overwritten by the benchmark.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith(_CALLERS_SETTINGS)}
    env["KUBERDE_CONFIG"] = str(work / "cli-config.json")
    env.update(extra or {})
    return env


@dataclass
class Gateway:
    child: Child
    url: str
    state_dir: Path
    issuer: TokenIssuer
    ca_file: Path | None

    @property
    def ws_url(self) -> str:
        return re.sub(r"^http", "ws", self.url) + "/ws"

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.ca_file is None:
            return None
        return ssl.create_default_context(cafile=str(self.ca_file))

    def agents_online(self) -> int:
        online: int = get_json(self.url + "/readyz", self.ssl_context())["agents_online"]
        return online

    def user_env(self, work: Path) -> dict[str, str]:
        """What `kuberde port-forward` and friends need to reach this gateway as our user."""
        extra = {"KUBERDE_SERVER": self.url, "KUBERDE_TOKEN": self.issuer.mint_user(BENCH_USER)}
        if self.ca_file is not None:
            extra["KUBERDE_CA_FILE"] = str(self.ca_file)
        return clean_env(work, extra)


def operator_argv(
    kubeconfig: Path,
    gateway: str,
    state: Path,
    *,
    port: int,
    interval: float,
    namespace: str = "kuberde",
    leader_election: bool = True,
) -> list[str]:
    """`kuberde operator` against the emulated cluster, its loops every `interval` seconds."""
    every = f"{interval:g}"
    return [
        sys.executable,
        "-m",
        "kuberde",
        "--log-level",
        "info",
        "operator",
        *("--kubeconfig", str(kubeconfig), "--namespace", namespace),
        *("--server-api", gateway, "--state-dir", str(state), "--listen", f"127.0.0.1:{port}"),
        *("--monitor-interval", every, "--ttl-interval", every, "--status-interval", every),
        *(() if leader_election else ("--no-leader-election",)),
    ]


def get_json(url: str, context: ssl.SSLContext | None, token: str | None = None) -> Any:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10.0, context=context) as reply:
        return json.loads(reply.read())


def start_gateway(procs: Processes, work: Path, name: str, *, tls: bool) -> Gateway:
    """`kuberde server` on a free loopback port, over TLS with a self-signed certificate
    when `tls`; returns once it prints the URL it listens on."""
    state_dir = work / f"{name}-state"
    issuer = TokenIssuer(load_or_create_signing_key(state_dir))
    argv = [*KUBERDE, "server", "--listen", "127.0.0.1:0", "--state-dir", str(state_dir)]
    ca_file: Path | None = None
    if tls:
        ca_file, key_file = write_self_signed(work / f"{name}-tls")
        argv += ["--tls-cert", str(ca_file), "--tls-key", str(key_file)]
    child = procs.start(name, argv, env=clean_env(work))
    url = child.wait_for_log(r"KubeRDE gateway listening on (\S+)", START_TIMEOUT).group(1)
    return Gateway(child, url, state_dir, issuer, ca_file)


def start_agent(
    procs: Processes,
    work: Path,
    gateway: Gateway,
    name: str,
    *,
    local_port: int,
    allowed_ports: list[int],
) -> Child:
    """`kuberde agent` for workspace `name` of the benchmark user; returns once online."""
    token_file = work / f"{gateway.child.name}-{name}.token"
    token_file.write_text(gateway.issuer.mint_agent(BENCH_USER, name))
    token_file.chmod(0o600)
    extra = {
        "SERVER_URL": gateway.ws_url,
        "AGENT_TOKEN_FILE": str(token_file),
        "LOCAL_TARGET": f"127.0.0.1:{local_port}",
        "ALLOWED_PORTS": ",".join(map(str, allowed_ports)),
    }
    if gateway.ca_file is not None:
        extra["KUBERDE_CA_FILE"] = str(gateway.ca_file)
    online_before = gateway.agents_online()
    child = procs.start(
        f"{gateway.child.name}-agent-{name}", [*KUBERDE, "agent"], env=clean_env(work, extra)
    )
    wait_for(
        lambda: gateway.agents_online() > online_before,
        START_TIMEOUT,
        f"agent {name} to connect",
        watch=[child, gateway.child],
    )
    return child


def start_port_forward(
    procs: Processes, name: str, env: Mapping[str, str], agent: str, remote_ports: list[int]
) -> tuple[Child, dict[int, int]]:
    """`kuberde port-forward AGENT :PORT...`; returns the child and remote → local ports."""
    argv = [*KUBERDE, "port-forward", agent, *(f":{port}" for port in remote_ports)]
    child = procs.start(name, argv, env=env)
    pattern = r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)"
    wait_for(
        lambda: len(re.findall(pattern, child.log_text())) >= len(remote_ports),
        START_TIMEOUT,
        f"{name} to listen",
        watch=[child],
    )
    local = {int(remote): int(port) for port, remote in re.findall(pattern, child.log_text())}
    return child, local


def workspace_document(
    name: str, port: int, command: list[str], apps: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A `kuberde up` workspace of the OS user, never scaled down by TTL, whose workload is
    `command` (run from the repository root, with our import path: as root it runs as the
    user's own account, maybe with `BENCH_PYTHON`) serving `port`."""
    workload = {"command": command, "workingDir": str(ROOT), "env": workload_env()}
    spec: dict[str, Any] = {
        "owner": current_user(),
        "ttl": "0",
        "localTarget": f"127.0.0.1:{port}",
        "workload": workload,
    }
    if apps:
        spec["apps"] = apps
    return {
        "apiVersion": "kuberde.io/v1",
        "kind": "RDEAgent",
        "metadata": {"name": name},
        "spec": spec,
    }
