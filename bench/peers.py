"""The paths under test, all on loopback, all up at once so one run compares them fairly.

- direct: the client talks to the target itself (the floor);
- ssh: OpenSSH `ssh -N -L` with its default cipher to a private `sshd`, as a user would;
- ssh_tty: the same forwards from an interactive `ssh -tt -L` session (reference only: it
  shows what Nagle's algorithm costs `ssh -N` on new streams, see `start_ssh`);
- ws / wss: client → `kuberde port-forward` → gateway → agent → target, in the clear and
  over TLS with a self-signed certificate (ssh always encrypts: only wss is like for like).

Each path exposes a local port per target role (sink, echo, banner) and the pids whose CPU
time is the path's cost.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import ROOT
from bench.procs import Child, Processes, cpu_seconds, descendants, free_port, wait_for_port
from bench.stack import start_agent, start_gateway, start_port_forward
from kuberde.local.sshd import find_sshd, prepare_sshd

__all__ = [
    "BenchPath",
    "Ports",
    "direct",
    "find_openssh",
    "start_kuberde",
    "start_ssh",
    "start_target",
]

START_TIMEOUT = 30.0
AGENT_NAME = "target"


@dataclass(frozen=True)
class Ports:
    sink: int
    echo: int
    banner: int

    def as_list(self) -> list[int]:
        return [self.sink, self.echo, self.banner]


@dataclass
class BenchPath:
    key: str
    label: str
    ports: Ports
    #: Role (gateway, agent, ssh, ...) → the live pids whose CPU time is this path's cost.
    processes: dict[str, Callable[[], list[int]]] = field(default_factory=dict)
    note: str = ""

    @contextlib.contextmanager
    def metered(self, totals: dict[str, float]) -> Iterator[None]:
        """Add the CPU seconds each role spends during the block to `totals` (a pid that
        started during it counts whole)."""
        before = self._cpu()
        yield
        for role, pids in self._cpu().items():
            spent = sum(
                seconds - before.get(role, {}).get(pid, 0.0) for pid, seconds in pids.items()
            )
            totals[role] = totals.get(role, 0.0) + spent

    def _cpu(self) -> dict[str, dict[int, float]]:
        return {
            role: {pid: cpu_seconds(pid) for pid in pids()} for role, pids in self.processes.items()
        }


def start_target(procs: Processes) -> tuple[Child, Ports]:
    argv = [sys.executable, "-m", "bench.target", "--sink", "0", "--echo", "0", "--banner", "0"]
    child = procs.start("target", argv, cwd=ROOT)
    ports = json.loads(child.wait_for_log(r"\{.*\}", START_TIMEOUT).group(0))
    return child, Ports(**ports)


def find_openssh() -> tuple[str, str] | None:
    """(ssh, sshd) as absolute paths (sshd refuses to run otherwise), or None."""
    ssh, sshd = shutil.which("ssh"), find_sshd()
    return (ssh, sshd) if ssh and sshd else None


def direct(target: Ports) -> BenchPath:
    return BenchPath("direct", "direct TCP", target)


def start_ssh(
    procs: Processes, work: Path, target: Ports, openssh: tuple[str, str], *, tty: bool = False
) -> BenchPath:
    """A private sshd on a high port and `ssh -L` for each role, default cipher.

    `ssh -N` leaves TCP_NODELAY off on its connection (OpenSSH sets it only for interactive
    sessions), so Nagle's algorithm meets delayed ACKs on a new forward's first bytes. With
    `tty`, the client runs a terminal session (`-tt ... sleep`) alongside the forwards, as a
    user logged in with `ssh -L` would, and gets TCP_NODELAY.
    """
    key = "ssh_tty" if tty else "ssh"
    directory = work / key
    directory.mkdir()
    port = free_port()
    # Under /tmp, which is world writable: StrictModes would refuse every path here.
    files = prepare_sshd(directory, port, comment="kuberde-bench", strict_modes=False)
    (directory / "known_hosts").write_text(files.known_hosts_line(f"[127.0.0.1]:{port}"))
    ssh_binary, _ = openssh
    sshd = procs.start(f"sshd-{key}", files.argv)
    sshd.wait_for_log(rf"Server listening on 127\.0\.0\.1 port {port}", START_TIMEOUT)
    local = Ports(free_port(), free_port(), free_port())
    forwards = [
        f"-L127.0.0.1:{mine}:127.0.0.1:{theirs}"
        for mine, theirs in zip(local.as_list(), target.as_list(), strict=True)
    ]
    options = [
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={directory / 'known_hosts'}",
        "-o",
        "IdentitiesOnly=yes",
        "-i",
        str(files.client_key),
        "-p",
        str(port),
    ]
    destination = f"{getpass.getuser()}@127.0.0.1"
    mode, command = (["-tt"], ["sleep", "86400"]) if tty else (["-N"], [])
    forwarding = [*options, "-o", "ExitOnForwardFailure=yes", *forwards, destination]
    ssh = procs.start(key, [ssh_binary, *mode, *forwarding, *command])
    for role_port in local.as_list():
        wait_for_port(role_port, START_TIMEOUT, f"ssh -L on port {role_port}")
    ssh.check_running()
    # The forwarding client runs without -v (logging would tax every new forward); a
    # one-shot verbose login with the same options tells which cipher they negotiate.
    probe = subprocess.run(
        [ssh_binary, "-v", *options, destination, "true"],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    cipher = re.search(r"kex: server->client cipher: (\S+)", probe.stderr)
    return BenchPath(
        key,
        "ssh -L (tty)" if tty else "ssh -N -L",
        local,
        {"ssh": lambda: [ssh.pid], "sshd": lambda: [sshd.pid, *descendants(sshd.pid)]},
        note=f"cipher {cipher.group(1)}" if cipher else "",
    )


def start_kuberde(procs: Processes, work: Path, target: Ports, *, tls: bool) -> BenchPath:
    """Gateway, agent (LOCAL_TARGET the sink, the other roles allowed) and port-forward."""
    key = "wss" if tls else "ws"
    gateway = start_gateway(procs, work, f"gateway-{key}", tls=tls)
    agent = start_agent(
        procs,
        work,
        gateway,
        AGENT_NAME,
        local_port=target.sink,
        allowed_ports=[target.echo, target.banner],
    )
    forward, local = start_port_forward(
        procs, f"port-forward-{key}", gateway.user_env(work), AGENT_NAME, target.as_list()
    )
    ports = Ports(local[target.sink], local[target.echo], local[target.banner])
    how = "TLS, self-signed certificate via KUBERDE_CA_FILE" if tls else "no TLS"
    return BenchPath(
        key,
        f"KubeRDE {key}",
        ports,
        {
            "gateway": lambda: [gateway.child.pid],
            "agent": lambda: [agent.pid],
            "port-forward": lambda: [forward.pid],
        },
        note=f"kuberde port-forward -> gateway -> agent, {how}",
    )
