"""What a user waits for before anything happens: CLI start-up and whole `ssh` logins.

- CLI start-up: wall time of `kuberde` commands, from process start to exit: some that do
  no network work (`--version`, `--help`, a command's `--help`, `version` and `ls` with no
  gateway configured), `version`, which asks the gateway, and `ls`, which also goes through
  the stored login (kuberde.cli.api, the client of `ls` and friends);
- `kuberde connect` to its first byte: from process start until sshd's banner, relayed by
  gateway and agent, is on its stdout (the ProxyCommand's share of every `ssh`);
- `ssh true` wall time to one private sshd three ways: directly (`ssh -p PORT 127.0.0.1`),
  through `ssh -L` (a forward held open by a separate `ssh -N -L`), and as
  `ssh NAME.kuberde` does it (ProxyCommand `kuberde connect`). Rounds alternate the ways.
- `ssh` bulk copies the same three ways, up (`cat > /dev/null` fed from stdin, what `scp` and
  `rsync` to the workspace do) and down: the ProxyCommand relays every byte, so its per-byte
  cost (client-side WebSocket masking, above all) shows here.
"""

from __future__ import annotations

import getpass
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.procs import Processes, free_port, wait_for_port
from bench.stack import KUBERDE, clean_env, start_agent, start_gateway
from bench.stats import percentile
from kuberde.local.sshd import prepare_sshd

__all__ = ["CLI_COMMANDS", "CliRun", "Startup", "measure_startup"]

START_TIMEOUT = 30.0
RUN_TIMEOUT = 60.0
AGENT_NAME = "sshd"


@dataclass(frozen=True)
class CliRun:
    """A CLI command line to time, whether the gateway is configured, and how it exits."""

    words: list[str]
    gateway: bool = True
    exit_code: int = 0


CLI_COMMANDS: dict[str, CliRun] = {
    "--version": CliRun(["--version"]),
    "--help": CliRun(["--help"]),
    "ls --help": CliRun(["ls", "--help"]),
    "port-forward --help": CliRun(["port-forward", "--help"]),
    "version": CliRun(["version"]),
    "version (no gateway configured)": CliRun(["version"], gateway=False),
    # `kuberde server` alone serves no /api/workspaces: `ls` goes the whole way (stored
    # login, request, answer) and reports the gateway's 404, exit 1.
    "ls (gateway answers 404)": CliRun(["ls"], exit_code=1),
    "ls (no gateway configured)": CliRun(["ls"], gateway=False, exit_code=2),
}
SSH_WAYS = ("direct", "ssh_l", "kuberde")
COPY_DIRECTIONS = ("up", "down")
COPY_BYTES = 256 * 1024 * 1024


@dataclass
class Startup:
    cli: dict[str, list[float]]
    connect_first_byte: list[float]
    ssh: dict[str, list[float]]
    #: way → direction → MB/s per round.
    copy: dict[str, dict[str, list[float]]]

    def summary(self) -> dict[str, object]:
        def p50_ms(values: list[float]) -> dict[str, float | int]:
            return {
                "p50_ms": percentile(values, 0.5) * 1e3,
                "max_ms": max(values) * 1e3,
                "samples": len(values),
            }

        return {
            "cli": {name: p50_ms(values) for name, values in self.cli.items()},
            "connect_first_byte": p50_ms(self.connect_first_byte),
            "ssh": {way: p50_ms(values) for way, values in self.ssh.items()},
            "copy_mb_s": {
                way: {direction: percentile(rates, 0.5) for direction, rates in by.items()}
                for way, by in self.copy.items()
            },
        }


def _with_bytecode(env: dict[str, str], work: Path) -> dict[str, str]:
    """`env` letting Python cache bytecode, as every installed copy has it (pip compiles it;
    a clone's first run writes it): under PYTHONDONTWRITEBYTECODE, as some shells and CI
    set, each start-up would compile our modules anew. The cache goes to the run's own
    directory, not the source tree."""
    kept = {key: value for key, value in env.items() if key != "PYTHONDONTWRITEBYTECODE"}
    return {**kept, "PYTHONPYCACHEPREFIX": str(work / "pycache")}


def _wall(argv: Sequence[str], env: dict[str, str] | None = None, exit_code: int = 0) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        list(argv), env=env, capture_output=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL
    )
    elapsed = time.perf_counter() - started
    if done.returncode != exit_code:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-400:]!r}")
    return elapsed


def _first_byte(argv: Sequence[str], env: dict[str, str]) -> float:
    """Seconds from process start to the first byte on its stdout."""
    started = time.perf_counter()
    child = subprocess.Popen(
        list(argv), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        first = child.stdout.read(1)
        elapsed = time.perf_counter() - started
        if first != b"S":
            raise RuntimeError(f"expected sshd's banner, got {first!r}")
    finally:
        child.kill()
        child.communicate(timeout=RUN_TIMEOUT)
    return elapsed


def _copy_rate(ssh: Sequence[str], direction: str, env: dict[str, str]) -> float:
    """MB/s of one `ssh` bulk copy of COPY_BYTES, wall time of the whole command."""
    if direction == "up":
        argv = [
            "bash",
            "-c",
            f"head -c {COPY_BYTES} /dev/zero | {shlex.join(ssh)} 'cat > /dev/null'",
        ]
    else:
        argv = [*ssh, f"head -c {COPY_BYTES} /dev/zero"]
    return COPY_BYTES / _wall(argv, env) / 1e6


def measure_startup(procs: Processes, work: Path, *, rounds: int) -> Startup:
    directory = work / "startup-sshd"
    directory.mkdir()
    port = free_port()
    files = prepare_sshd(directory, port, comment="kuberde-bench-startup", strict_modes=False)
    known_hosts = directory / "known_hosts"
    ssh_l_port = free_port()
    known_hosts.write_text(
        files.known_hosts_line(
            f"[127.0.0.1]:{port}", f"[127.0.0.1]:{ssh_l_port}", f"{AGENT_NAME}.kuberde"
        )
    )
    sshd = procs.start("sshd-startup", files.argv)
    sshd.wait_for_log(rf"Server listening on 127\.0\.0\.1 port {port}", START_TIMEOUT)
    gateway = start_gateway(procs, work, "gateway-startup", tls=False)
    start_agent(procs, work, gateway, AGENT_NAME, local_port=port, allowed_ports=[])
    env = _with_bytecode(gateway.user_env(work), work)
    no_gateway = _with_bytecode(clean_env(work), work)
    options = [
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "IdentitiesOnly=yes",
        "-i",
        str(files.client_key),
    ]
    user = getpass.getuser()
    procs.start(
        "ssh-l-startup",
        [
            "ssh",
            "-N",
            *options,
            "-p",
            str(port),
            "-o",
            "ExitOnForwardFailure=yes",
            f"-L127.0.0.1:{ssh_l_port}:127.0.0.1:{port}",
            f"{user}@127.0.0.1",
        ],
    )
    wait_for_port(ssh_l_port, START_TIMEOUT, "ssh -L for the start-up benchmark")
    proxy = " ".join([*KUBERDE, "connect", "%n", "--port", "%p", "--kind", "ssh"])
    login = {
        "direct": ["ssh", *options, "-p", str(port), f"{user}@127.0.0.1"],
        "ssh_l": ["ssh", *options, "-p", str(ssh_l_port), f"{user}@127.0.0.1"],
        "kuberde": [
            "ssh",
            *options,
            "-o",
            f"ProxyCommand={proxy}",
            "-p",
            str(port),
            f"{user}@{AGENT_NAME}.kuberde",
        ],
    }
    ssh_argv = {way: [*argv, "true"] for way, argv in login.items()}
    connect_argv = [*KUBERDE, "connect", AGENT_NAME, "--port", str(port), "--kind", "ssh"]
    result = Startup(
        {name: [] for name in CLI_COMMANDS},
        [],
        {way: [] for way in SSH_WAYS},
        {way: {direction: [] for direction in COPY_DIRECTIONS} for way in SSH_WAYS},
    )
    cli_argv = {name: [*KUBERDE, *run.words] for name, run in CLI_COMMANDS.items()}

    def cli(name: str) -> float:
        run = CLI_COMMANDS[name]
        return _wall(cli_argv[name], env if run.gateway else no_gateway, run.exit_code)

    for argv in ssh_argv.values():  # warm caches, sshd and bytecode
        _wall(argv, env)
    for name in CLI_COMMANDS:
        cli(name)
    for _ in range(rounds):
        for name in CLI_COMMANDS:
            result.cli[name].append(cli(name))
        result.connect_first_byte.append(_first_byte(connect_argv, env))
        for way, argv in ssh_argv.items():
            result.ssh[way].append(_wall(argv, env))
        for way, argv in login.items():
            for direction in COPY_DIRECTIONS:
                result.copy[way][direction].append(_copy_rate(argv, direction, env))
    return result
