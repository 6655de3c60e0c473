"""Leader failover: `python -m bench.failover [--rounds N]`.

Two operator replicas (processes, leader election on, the production Lease: 5 s, renew
deadline 3.5 s, retry 1 s) against the emulated API server and a real gateway. Each round the
leader has scaled an idle workspace to zero; the leader is then killed (SIGKILL: a crash, so
the Lease is not handed over) and a user's wake is requested at the same moment. Reported per
round: how long until the other replica holds the Lease, and until it acted (the wake's
replicas 1 written). The killed replica is started again and stands by for the next round.

Timings are the point here, so this is a benchmark, not a test; the runbook test only checks
that the survivor acts.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import kmock

from bench import ROOT
from bench.procs import Child, Processes, free_port
from bench.stack import clean_env, operator_argv
from bench.stats import percentile
from kuberde.auth import LocalTokenVerifier, load_or_create_signing_key
from kuberde.gateway.app import create_app
from kuberde.gateway.server import ListenAddress, bind_socket, socket_url, start_site
from kuberde.naming import STOP_ANNOTATION, WAKE_ANNOTATION
from kuberde.plan import request_time_text
from kuberde.testing.kube import ApiServer, emulator, write_kubeconfig

__all__ = ["main", "run"]

NAMESPACE = "kuberde"
NAME = "sleepy"
DEPLOYMENT = f"user-bench-{NAME}"
DEPLOYMENTS = "apps/v1/deployments"
LEASES = "coordination.k8s.io/v1/leases"
LEASE = "kuberde-operator"
POLL = 0.02
WAIT = 60.0


def _say(message: str) -> None:
    print(f"[failover] {message}", file=sys.stderr, flush=True)


def _stored(server: ApiServer, resource: str, name: str) -> dict[str, Any] | None:
    for stored in server.find_all(resource, NAMESPACE):
        if stored.raw["metadata"]["name"] == name:
            raw: dict[str, Any] = stored.raw
            return raw
    return None


def _holder(server: ApiServer) -> str:
    lease = _stored(server, LEASES, LEASE)
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def _holds(server: ApiServer, replica: str) -> bool:
    """Whether `replica` (its POD_NAME; the identity adds a suffix) holds the Lease."""
    return _holder(server).startswith(f"{replica}_")


def _replicas(server: ApiServer) -> int | None:
    deployment = _stored(server, DEPLOYMENTS, DEPLOYMENT)
    return int(deployment["spec"].get("replicas", 1)) if deployment is not None else None


async def _until(check: Callable[[], bool], what: str, children: list[Child]) -> float:
    """Seconds until `check` holds, polled every 20 ms; fails after a minute."""
    began = time.monotonic()
    while not check():
        for child in children:
            child.check_running()
        if time.monotonic() - began > WAIT:
            raise TimeoutError(f"no {what} within {WAIT:g}s")
        await asyncio.sleep(POLL)
    return time.monotonic() - began


def _agent() -> dict[str, Any]:
    return {
        "apiVersion": "kuberde.io/v1",
        "kind": "RDEAgent",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "owner": "bench",
            "ttl": "1s",
            "localTarget": "127.0.0.1:22",
            "workload": {"image": "lscr.io/linuxserver/openssh-server:latest"},
        },
    }


async def _request(http: aiohttp.ClientSession, annotation: str) -> None:
    """What the gateway writes when a user connects (a wake) or runs `kuberde stop`."""
    patch = {"metadata": {"annotations": {annotation: request_time_text(datetime.now(UTC))}}}
    path = f"/apis/kuberde.io/v1/namespaces/{NAMESPACE}/rdeagents/{NAME}"
    headers = {"Content-Type": "application/merge-patch+json"}
    async with http.patch(path, json=patch, headers=headers) as response:
        assert response.status == 200, await response.text()


async def measure(procs: Processes, work: Path, rounds: int) -> list[tuple[float, float]]:
    """(Lease taken over, first action) in seconds after each kill."""
    key_dir = work / "state"
    key = load_or_create_signing_key(key_dir)
    server = emulator()
    gateway_sock = bind_socket(ListenAddress("127.0.0.1", 0))
    runner = await start_site(
        create_app(LocalTokenVerifier.from_signing_key(key)), gateway_sock, None
    )
    results: list[tuple[float, float]] = []
    try:
        async with server, kmock.Server(server) as http_server:
            url = str(http_server.url).rstrip("/")
            write_kubeconfig(work / "kubeconfig", url, NAMESPACE)
            gateway = socket_url(gateway_sock, tls=False)

            def start(name: str) -> Child:
                argv = operator_argv(
                    work / "kubeconfig", gateway, key_dir, port=free_port(), interval=1
                )
                return procs.start(name, argv, env=clean_env(work, {"POD_NAME": name}), cwd=ROOT)

            replicas = {name: start(name) for name in ("operator-a", "operator-b")}
            await _until(lambda: bool(_holder(server)), "leader", list(replicas.values()))
            for child in replicas.values():
                if not _holds(server, child.name):
                    await asyncio.to_thread(child.wait_for_log, "Standing by", WAIT)
            async with aiohttp.ClientSession(base_url=url) as http:
                collection = f"/apis/kuberde.io/v1/namespaces/{NAMESPACE}/rdeagents"
                async with http.post(collection, json=_agent()) as response:
                    assert response.status in (200, 201), await response.text()
                for number in range(1, rounds + 1):
                    # A stop, not the TTL: no agent runs here, and the TTL waits for one.
                    await _request(http, STOP_ANNOTATION)
                    await _until(lambda: _replicas(server) == 0, "stop", [])
                    leader = _holder(server).split("_", 1)[0]
                    survivor = next(name for name in replicas if name != leader)
                    replicas[leader].popen.send_signal(signal.SIGKILL)
                    killed = time.monotonic()
                    await _request(http, WAKE_ANNOTATION)
                    took_over = await _until(
                        functools.partial(_holds, server, survivor), "takeover", []
                    )
                    await _until(lambda: _replicas(server) == 1, "wake", [])
                    acted = time.monotonic() - killed
                    results.append((took_over, acted))
                    _say(
                        f"round {number}: {leader} killed; {survivor} leads after "
                        f"{took_over:.1f}s, woke the workspace after {acted:.1f}s"
                    )
                    procs.stop(replicas[leader])
                    replicas[leader] = start(leader)
                    # Measured from a standby that is standing by, not from one starting up.
                    await asyncio.to_thread(replicas[leader].wait_for_log, "Standing by", WAIT)
    finally:
        await runner.cleanup()
    return results


def render(results: list[tuple[float, float]]) -> str:
    takeovers = [t for t, _ in results]
    actions = [a for _, a in results]
    lines = [
        "Leader failover (Lease 5 s, retry 1 s; the leader SIGKILLed)",
        f"{'round':>5}  {'Lease taken over':>16}  {'survivor acted':>14}",
        *(f"{n:>5}  {t:>15.1f}s  {a:>13.1f}s" for n, (t, a) in enumerate(results, 1)),
        f"{'p50':>5}  {percentile(takeovers, 0.5):>15.1f}s  {percentile(actions, 0.5):>13.1f}s",
        f"{'max':>5}  {max(takeovers):>15.1f}s  {max(actions):>13.1f}s",
    ]
    return "\n".join(lines)


async def run(rounds: int) -> list[tuple[float, float]]:
    work = Path(tempfile.mkdtemp(prefix="kuberde-failover-"))
    try:
        with Processes(work) as procs:
            results = await measure(procs, work, rounds)
    except BaseException:
        _say(f"logs kept in {work}")
        raise
    shutil.rmtree(work, ignore_errors=True)
    print(render(results), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="leaders killed (default 3)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    asyncio.run(run(args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
