"""Wake latency under `kuberde up`: from a user's first byte to a scaled-down workspace to
the first byte back, next to the workload's own start time.

The workspace belongs to the OS user and its workload is the benchmark's echo server. The
CLI is used as `kuberde up` leaves it configured (its own config file, as a user's second
terminal would). Each round scales the workspace to zero with `kuberde stop`, waits until
its processes are gone and its agent is offline, then sends one byte through a
`kuberde port-forward` that stays up all along — the runbook's session check.
The workload's start time (process start to its port accepting) is measured by running
the same command standalone; what KubeRDE adds is the difference.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import ROOT
from bench.procs import Processes, StartError, accepts, free_port, wait_for
from bench.stack import (
    BENCH_PYTHON,
    KUBERDE,
    clean_env,
    get_json,
    start_port_forward,
    workspace_document,
)
from bench.stats import median
from kuberde.cli.config import load

__all__ = ["WakeResult", "measure_wake"]

WORKSPACE = "wake"
START_TIMEOUT = 60.0
WAKE_TIMEOUT = 120.0
POLL_INTERVAL = 0.001


@dataclass
class WakeResult:
    wake_seconds: list[float] = field(default_factory=list)
    workload_start_seconds: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        wake = median(self.wake_seconds)
        start = median(self.workload_start_seconds)
        return {
            "wake_s": wake,
            "wake_rounds_s": self.wake_seconds,
            "workload_start_s": start,
            "workload_start_runs_s": self.workload_start_seconds,
            "overhead_s": wake - start,
        }


def _workload(port: int) -> list[str]:
    return [BENCH_PYTHON, "-m", "bench.target", "--echo", str(port)]


def _workload_start(procs: Processes) -> float:
    """Seconds from starting the workload command to its port accepting a connection."""
    port = free_port()
    began = time.perf_counter()
    child = procs.start("workload-standalone", _workload(port), cwd=ROOT)
    try:
        while not accepts(port):
            child.check_running()
            if time.perf_counter() - began > START_TIMEOUT:
                raise StartError(f"the workload did not listen within {START_TIMEOUT:g}s")
            time.sleep(POLL_INTERVAL)
        return time.perf_counter() - began
    finally:
        procs.stop(child)


def _echo_once(port: int, timeout: float) -> float:
    """Seconds from sending one byte through `port` to its echo."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        began = time.perf_counter()
        sock.sendall(b"w")
        if sock.recv(1) != b"w":
            raise StartError("no echo through the woken workspace")
        return time.perf_counter() - began


def measure_wake(procs: Processes, work: Path, *, rounds: int, workload_starts: int) -> WakeResult:
    state_dir = work / "wake-state"
    cli_config = work / "wake-cli-config.json"
    user_env = clean_env(work, {"KUBERDE_CONFIG": str(cli_config)})
    port = free_port()
    document = work / "wake.yaml"
    document.write_text(yaml.safe_dump(workspace_document(WORKSPACE, port, _workload(port))))
    argv = [*KUBERDE, "up", "-f", str(document), "--state-dir", str(state_dir)]
    up = procs.start("kuberde-up", [*argv, "--listen", "127.0.0.1:0"], env=user_env)
    url = up.wait_for_log(r"KubeRDE is up: gateway (\S+)", START_TIMEOUT).group(1)
    token = load(cli_config).token

    def workspace() -> dict[str, Any]:
        view: dict[str, Any] = get_json(f"{url}/api/workspaces/{WORKSPACE}", None, token)
        return view

    def scaled_down() -> bool:
        return (
            workspace()["phase"] == "ScaledDown"
            and get_json(f"{url}/readyz", None)["agents_online"] == 0
            and not accepts(port)
        )

    result = WakeResult()
    try:
        wait_for(
            lambda: workspace()["phase"] == "Running" and workspace()["online"],
            START_TIMEOUT,
            "the workspace to run",
            watch=[up],
        )
        forward, local = start_port_forward(procs, "port-forward-wake", user_env, WORKSPACE, [port])
        _echo_once(local[port], START_TIMEOUT)
        for _ in range(rounds):
            subprocess.run(
                [*KUBERDE, "stop", WORKSPACE],
                env=user_env,
                check=True,
                timeout=START_TIMEOUT,
                capture_output=True,
            )
            wait_for(scaled_down, START_TIMEOUT, "the workspace to scale down", watch=[up])
            time.sleep(0.5)
            result.wake_seconds.append(_echo_once(local[port], WAKE_TIMEOUT))
        procs.stop(forward)
    finally:
        procs.stop(up)
    for _ in range(workload_starts):
        result.workload_start_seconds.append(_workload_start(procs))
    return result
