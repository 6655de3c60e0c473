"""Gateway memory per idle connected agent.

A fresh `kuberde server` is warmed up with a few agents (so imported code and first-use
allocations are in the baseline), its RSS is read, then a thousand more agents connect from
a few swarm processes (`bench.swarm`), and RSS is read again once they are all online and
the gateway has settled.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import ROOT
from bench.procs import Child, Processes, rss_kib, wait_for
from bench.stack import BENCH_USER, Gateway, clean_env, start_gateway

__all__ = ["MemoryResult", "measure_gateway_memory"]

WARMUP_AGENTS = 8
CONNECT_TIMEOUT = 180.0
SETTLE_SECONDS = 2.0


@dataclass(frozen=True)
class MemoryResult:
    agents: int
    baseline_kib: int
    loaded_kib: int
    connect_seconds: float

    @property
    def kib_per_agent(self) -> float:
        return (self.loaded_kib - self.baseline_kib) / self.agents

    def summary(self) -> dict[str, float | int]:
        return {
            "agents": self.agents,
            "baseline_rss_kib": self.baseline_kib,
            "loaded_rss_kib": self.loaded_kib,
            "kib_per_agent": self.kib_per_agent,
            "connect_seconds": self.connect_seconds,
        }


def _swarm(
    procs: Processes, work: Path, gateway: Gateway, name: str, agent_names: list[str]
) -> Child:
    token_file = work / f"{name}.tokens"
    token_file.write_text(
        "".join(gateway.issuer.mint_agent(BENCH_USER, agent) + "\n" for agent in agent_names)
    )
    token_file.chmod(0o600)
    argv = [sys.executable, "-m", "bench.swarm", gateway.ws_url, str(token_file)]
    if gateway.ca_file is not None:
        argv += ["--ca-file", str(gateway.ca_file)]
    return procs.start(name, argv, env=clean_env(work), cwd=ROOT)


def _connected(swarms: list[Child], gateway: Gateway, expected: int) -> bool:
    return all("connected" in swarm.log_text() for swarm in swarms) and (
        gateway.agents_online() >= expected
    )


def _settled_rss(pid: int) -> int:
    time.sleep(SETTLE_SECONDS)
    return rss_kib(pid)


def measure_gateway_memory(
    procs: Processes, work: Path, *, tls: bool, agents: int, swarms: int = 2
) -> MemoryResult:
    key = "wss" if tls else "ws"
    gateway = start_gateway(procs, work, f"memory-gateway-{key}", tls=tls)
    started: list[Child] = [gateway.child]
    try:
        warm = _swarm(
            procs, work, gateway, f"swarm-{key}-warmup", [f"warm-{i}" for i in range(WARMUP_AGENTS)]
        )
        started.append(warm)
        wait_for(
            lambda: _connected([warm], gateway, WARMUP_AGENTS),
            CONNECT_TIMEOUT,
            "the warm-up agents",
            watch=[warm, gateway.child],
        )
        baseline = _settled_rss(gateway.child.pid)
        names = [f"idle-{i:05d}" for i in range(agents)]
        began = time.monotonic()
        crowd = [
            _swarm(procs, work, gateway, f"swarm-{key}-{part}", names[part::swarms])
            for part in range(swarms)
        ]
        started += crowd
        wait_for(
            lambda: _connected(crowd, gateway, WARMUP_AGENTS + agents),
            CONNECT_TIMEOUT,
            f"{agents} agents",
            watch=[*crowd, gateway.child],
            interval=0.1,
        )
        connect_seconds = time.monotonic() - began
        loaded = _settled_rss(gateway.child.pid)
    finally:
        for child in reversed(started):
            procs.stop(child)
    return MemoryResult(agents, baseline, loaded, connect_seconds)
