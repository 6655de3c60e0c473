"""Operator at scale: `python -m bench.operator_scale [--quick] [--agents N]`.

What a steady fleet costs the cluster and the operator: API writes per minute once nothing
changes (goal 0), how long one TTL sweep and one status cycle over every agent take, and the
operator's memory (goal under 250 MiB; the runbook's limit is 512 Mi).

The API server is KMock's emulator over HTTP, plus what a real one does and KMock does not:
uids, resourceVersions, generations, watch bookmarks, and serving N objects in linear time
(`kuberde.testing.kube`); convergence is therefore bounded by a pure-Python API server. The
gateway is the real app answering `GET /mgmt/agents` with an entry for every agent, all
offline (as `--kubernetes` would list them). A stand-in kubelet gives every Deployment a
Running pod, so the status updater lists and matches N pods each cycle. The agents exist
before the operator starts, as after an operator restart; the operator is its own process,
started like the Deployment starts it, so its RSS is its own.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kmock
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bench import ROOT
from bench.procs import Child, Processes, free_port, rss_kib
from bench.stack import clean_env, operator_argv
from bench.stats import percentile
from kuberde import naming
from kuberde.auth import LocalTokenVerifier, SigningKey, load_or_create_signing_key
from kuberde.gateway.app import create_app
from kuberde.gateway.directory import AgentRecord, WakeError
from kuberde.gateway.server import ListenAddress, bind_socket, socket_url, start_site
from kuberde.testing.kube import RDEAGENTS, ApiServer, emulator, running_pod, write_kubeconfig

__all__ = ["FULL", "QUICK", "Plan", "main", "render", "run"]

NAMESPACE = "kuberde"
OWNER = "bench"
TTL = "5m"
TTL_SECONDS = 300.0
DEPLOYMENTS = "apps/v1/deployments"
PODS = "v1/pods"
CREATE_CONCURRENCY = 16
#: Convergence is bounded by the emulator (pure Python), not by the operator.
CONVERGE_TIMEOUT = 900.0
SETTLE_TIMEOUT = 180.0
POLL = 0.25
GOAL_TTL_MS = 200.0
GOAL_RSS_MIB = 250.0
LIMIT_RSS_MIB = 512.0

_TTL_LINE = re.compile(r"TTL enforcer completed (?P<agents>\d+) agents in (?P<ms>\d+)ms")
_STATUS_LINE = re.compile(r"Status updater processed in (?P<ms>\d+)ms \((?P<agents>\d+) agents\)")
_MONITOR_LINE = re.compile(r"Server monitor checked in (?P<ms>\d+)ms \((?P<agents>\d+) agents\)")


@dataclass(frozen=True)
class Plan:
    """How many agents, how long the steady-state window, how often the operator's loops run."""

    agents: int
    window: float
    interval: float = 2.0

    @property
    def quiet(self) -> float:
        """Steady state: this long without a single write (three status cycles)."""
        return 3 * self.interval


FULL = Plan(agents=1000, window=60.0)
QUICK = Plan(agents=200, window=20.0)


def _say(message: str) -> None:
    print(f"[operator-scale] {message}", file=sys.stderr, flush=True)


def _agent_body(name: str) -> dict[str, Any]:
    """One of the runbook's workspaces: an SSH server, TTL 5m."""
    return {
        "apiVersion": "kuberde.io/v1",
        "kind": "RDEAgent",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "owner": OWNER,
            "ttl": TTL,
            "localTarget": "127.0.0.1:2222",
            "workload": {
                "image": "lscr.io/linuxserver/openssh-server:latest",
                "ports": [{"name": "ssh", "containerPort": 2222}],
            },
        },
    }


async def _create_agents(http: aiohttp.ClientSession, names: Sequence[str]) -> None:
    """POST every RDEAgent, a few at a time, as `kubectl apply` of a large fleet would."""
    pending = iter(names)
    collection = f"/apis/kuberde.io/v1/namespaces/{NAMESPACE}/rdeagents"

    async def worker() -> None:
        for name in pending:
            async with http.post(collection, json=_agent_body(name)) as response:
                if response.status >= 300:
                    text = await response.text()
                    raise RuntimeError(f"creating RDEAgent {name}: HTTP {response.status} {text}")

    await asyncio.gather(*(worker() for _ in range(CREATE_CONCURRENCY)))


def _resource_of(path: str) -> str:
    """`deployments`, `rdeagents/status`, ... from a namespaced API path."""
    parts = path.strip("/").split("/")
    if "namespaces" not in parts:
        return path
    rest = parts[parts.index("namespaces") + 2 :]
    return "/".join(rest[:1] + rest[2:3])


class _Cluster:
    """Direct reads of the emulator's store, and the kubelet's part of the cluster."""

    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self.pods: set[str] = set()

    def _live(self, resource: str) -> Iterator[dict[str, Any]]:
        for stored in self.server.find_all(resource, NAMESPACE):
            yield stored.raw

    def run_pods(self) -> int:
        """A Running pod for every Deployment (none ever scales here); the Deployment count."""
        count = 0
        for deployment in self._live(DEPLOYMENTS):
            count += 1
            name = deployment["metadata"]["name"]
            if name in self.pods or int(deployment["spec"].get("replicas", 1)) < 1:
                continue
            pod = f"{name}-bench"
            self.server.objects[PODS, NAMESPACE, pod] = running_pod(deployment, pod, NAMESPACE)
            self.pods.add(name)
        return count

    def statuses_settled(self, expected: int) -> bool:
        """Every RDEAgent's status names its pod and the generation the operator saw."""
        self.run_pods()
        settled = 0
        for agent in self._live(RDEAGENTS):
            status = agent.get("status") or {}
            generation = agent["metadata"].get("generation")
            if status.get("pod") and status.get("observedGeneration") == generation:
                settled += 1
        return settled >= expected

    def request_count(self) -> int:
        return len(self.server.calls)

    def writes_since(self, mark: int) -> list[str]:
        """`METHOD resource` of every write after `mark`; Lease renewals are not the fleet's."""
        return [
            f"{call.method} {_resource_of(call.path)}"
            for call in self.server.calls[mark:]
            if call.is_write and "/leases" not in call.path
        ]


# ---- the gateway ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Directory:
    """The agents the gateway would learn from RDEAgents with `--kubernetes`, fixed here."""

    known: Mapping[str, AgentRecord]

    def lookup(self, agent_id: str) -> AgentRecord | None:
        return self.known.get(agent_id)

    def records(self) -> list[AgentRecord]:
        return list(self.known.values())

    async def catch_up(self, *agent_ids: str) -> None:
        """Fixed: always current."""

    async def request_wake(self, agent_id: str, requested_by: str) -> None:
        raise WakeError("nothing is woken during the operator benchmark")


class _GatewayThread:
    """The real gateway app on its own thread and loop, so the emulator's load (same process)
    cannot delay its answers: in a cluster they are separate pods."""

    def __init__(self, key: SigningKey, directory: _Directory) -> None:
        self._key = key
        self._directory = directory
        self._sock = bind_socket(ListenAddress("127.0.0.1", 0))
        self.url = socket_url(self._sock, tls=False)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gateway", daemon=True)
        self._runner: web.AppRunner | None = None

    async def _serve(self) -> web.AppRunner:
        app = create_app(LocalTokenVerifier.from_signing_key(self._key), directory=self._directory)
        return await start_site(app, self._sock, None)

    def start(self) -> None:
        self._thread.start()
        self._runner = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10.0)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10.0)
            self._runner = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)
        self._loop.close()
        self._sock.close()


# ---- the operator's own numbers ---------------------------------------------------------------


def _cycle_times(log: str, pattern: re.Pattern[str]) -> list[tuple[int, float]]:
    """(agents, milliseconds) of every loop cycle the operator logged with `pattern`."""
    return [(int(match["agents"]), float(match["ms"])) for match in pattern.finditer(log)]


def _metric_total(text: str, sample: str) -> float:
    """The sum of a metric's samples over all label sets (0 if absent)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        total += sum(point.value for point in family.samples if point.name == sample)
    return total


def _phases(text: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for point in family.samples:
            if point.name == "kuberde_operator_agents" and point.value:
                found[point.labels["phase"]] = int(point.value)
    return found


def _peak_rss_kib(pid: int) -> int:
    """The process's high-water RSS since it started (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise ProcessLookupError(pid)


async def _scrape(http: aiohttp.ClientSession, url: str) -> str:
    async with asyncio.timeout(10.0), http.get(url) as response:
        response.raise_for_status()
        return await response.text()


async def _until(check: Callable[[], bool], within: float, what: str, child: Child) -> float:
    """Seconds until `check` holds, polling; fails at once if the operator exits."""
    began = time.monotonic()
    while not check():
        child.check_running()
        if time.monotonic() - began > within:
            raise TimeoutError(f"no {what} within {within:g}s{child.tail()}")
        await asyncio.sleep(POLL)
    return time.monotonic() - began


async def _quiet(
    cluster: _Cluster, plan: Plan, child: Child, http: aiohttp.ClientSession, metrics: str
) -> bool:
    """Wait until `plan.quiet` seconds passed without a write or a reconcile (the engine
    has drained); False if that never happened."""
    began = time.monotonic()
    mark = cluster.request_count()
    reconciles = -1.0
    last_change = time.monotonic()
    while time.monotonic() - last_change < plan.quiet:
        child.check_running()
        cluster.run_pods()
        done = _metric_total(await _scrape(http, metrics), "kuberde_operator_reconciles_total")
        if cluster.writes_since(mark) or done != reconciles:
            last_change = time.monotonic()
        mark = cluster.request_count()
        reconciles = done
        if time.monotonic() - began > SETTLE_TIMEOUT:
            return False
        await asyncio.sleep(POLL)
    return True


def _summary(samples: list[tuple[int, float]], key: str) -> dict[str, float]:
    times = [ms for _, ms in samples]
    if not times:
        return {f"{key}_cycles": 0.0}
    return {
        f"{key}_cycles": float(len(times)),
        f"{key}_agents": float(max(count for count, _ in samples)),
        f"{key}_ms_p50": percentile(times, 0.5),
        f"{key}_ms_max": max(times),
    }


async def _steady_window(
    cluster: _Cluster, http: aiohttp.ClientSession, child: Child, metrics: str, plan: Plan
) -> dict[str, float]:
    """Everything measured while nothing changes: writes, loop durations, RSS."""
    before = await _scrape(http, metrics)
    mark = cluster.request_count()
    offset = child.log_path.stat().st_size
    rss_max = 0
    began = time.monotonic()
    while time.monotonic() - began < plan.window:
        child.check_running()
        cluster.run_pods()
        rss_max = max(rss_max, rss_kib(child.pid))
        await asyncio.sleep(0.5)
    elapsed = time.monotonic() - began
    after = await _scrape(http, metrics)
    writes = cluster.writes_since(mark)
    with child.log_path.open("rb") as log_file:
        log_file.seek(offset)
        log = log_file.read().decode(errors="replace")
    if writes:
        _say(f"writes in the window: {dict(Counter(writes))}")

    def delta(sample: str) -> float:
        return _metric_total(after, sample) - _metric_total(before, sample)

    _say(f"agents by phase: {_phases(after)}")
    return {
        "window_s": elapsed,
        "writes_window": float(len(writes)),
        "writes_per_min": len(writes) * 60.0 / elapsed,
        "requests_per_min": (cluster.request_count() - mark) * 60.0 / elapsed,
        "operator_writes_window": delta("kuberde_operator_api_writes_total"),
        "scale_downs_window": delta("kuberde_operator_scale_downs_total"),
        "reconciles_window": delta("kuberde_operator_reconciles_total"),
        "rss_mib_max": rss_max / 1024,
        "rss_mib_peak": _peak_rss_kib(child.pid) / 1024,
        **_summary(_cycle_times(log, _TTL_LINE), "ttl_sweep"),
        **_summary(_cycle_times(log, _STATUS_LINE), "status_cycle"),
        **_summary(_cycle_times(log, _MONITOR_LINE), "monitor"),
    }


async def _start_operator(
    procs: Processes, work: Path, plan: Plan, cluster: _Cluster, gateway: str, port: int
) -> tuple[Child, dict[str, float]]:
    """Start the operator on the existing fleet; wait for convergence, then for quiet."""
    metrics = f"http://127.0.0.1:{port}/metrics"
    argv = operator_argv(
        work / "kubeconfig",
        gateway,
        work / "state",
        port=port,
        interval=plan.interval,
        leader_election=False,
    )
    _say("starting the operator")
    child = procs.start("operator", argv, env=clean_env(work), cwd=ROOT)
    converge = await _until(
        lambda: cluster.run_pods() >= plan.agents, CONVERGE_TIMEOUT, "Deployments", child
    )
    _say(f"every Deployment exists after {converge:.1f}s; settling")
    began = time.monotonic()
    await _until(
        lambda: cluster.statuses_settled(plan.agents), SETTLE_TIMEOUT, "status everywhere", child
    )
    async with aiohttp.ClientSession() as http:
        quiet = await _quiet(cluster, plan, child, http, metrics)
    if not quiet:
        _say(f"writes or reconciles never stopped for {plan.quiet:g}s; measuring anyway")
    return child, {"converge_s": converge, "settle_s": time.monotonic() - began}


async def measure(procs: Processes, work: Path, plan: Plan) -> dict[str, float]:
    """Start the emulator, gateway and operator under `procs`; return the numbers."""
    key = load_or_create_signing_key(work / "state")
    names = [f"ws-{index:04d}" for index in range(plan.agents)]
    ids = {name: naming.agent_id(OWNER, name) for name in names}
    directory = _Directory({ids[name]: AgentRecord(ids[name], OWNER, name) for name in names})
    server = emulator()
    cluster = _Cluster(server)
    results: dict[str, float] = {"agents": float(plan.agents), "interval_s": plan.interval}
    async with server, kmock.Server(server) as http_server:
        url = str(http_server.url).rstrip("/")
        write_kubeconfig(work / "kubeconfig", url, NAMESPACE)
        _say(f"creating {plan.agents} RDEAgents in the emulator")
        began = time.monotonic()
        async with aiohttp.ClientSession(base_url=url) as http:
            await _create_agents(http, names)
        results["create_s"] = time.monotonic() - began
        ttl_expiry = began + TTL_SECONDS
        gateway = _GatewayThread(key, directory)
        child: Child | None = None
        try:
            gateway.start()
            port = free_port()
            child, startup = await _start_operator(procs, work, plan, cluster, gateway.url, port)
            results.update(startup)
            if time.monotonic() + plan.window > ttl_expiry:
                _say("the window reaches the agents' TTL: scale-downs will count as writes")
            _say(f"steady state: measuring for {plan.window:g}s")
            async with aiohttp.ClientSession() as http:
                metrics = f"http://127.0.0.1:{port}/metrics"
                results.update(await _steady_window(cluster, http, child, metrics, plan))
        finally:
            if child is not None:
                await asyncio.to_thread(procs.stop, child)
            gateway.stop()
    return results


# ---- the report -------------------------------------------------------------------------------


def _cell(results: Mapping[str, float], key: str, fmt: str) -> str:
    return fmt.format(results[key]) if key in results else "—"


def render(results: Mapping[str, float]) -> str:
    """The results as a table, each goal next to its value."""
    agents = int(results.get("agents", 0))

    def pair(key: str) -> str:
        p50, top = f"{key}_ms_p50", f"{key}_ms_max"
        if p50 not in results:
            return "no cycle logged"
        return f"{results[p50]:.0f} / {results[top]:.0f} ms"

    def met(ok: bool | None) -> str:
        return "—" if ok is None else ("yes" if ok else "NO")

    writes = results.get("writes_per_min")
    ttl_max = results.get("ttl_sweep_ms_max")
    rss = results.get("rss_mib_max")
    rows = [
        ("create the RDEAgents", _cell(results, "create_s", "{:.1f} s"), "", None),
        ("converge: every Deployment", _cell(results, "converge_s", "{:.1f} s"), "", None),
        ("settle: statuses, queue drained", _cell(results, "settle_s", "{:.1f} s"), "", None),
        (
            "API writes / min (steady state)",
            _cell(results, "writes_per_min", "{:.1f}"),
            "0",
            None if writes is None else writes == 0,
        ),
        (
            "TTL sweep p50 / max",
            pair("ttl_sweep"),
            f"< {GOAL_TTL_MS:.0f} ms",
            None if ttl_max is None else ttl_max < GOAL_TTL_MS,
        ),
        ("status cycle p50 / max", pair("status_cycle"), "", None),
        ("gateway monitor p50 / max", pair("monitor"), "", None),
        (
            "operator RSS, max in window",
            _cell(results, "rss_mib_max", "{:.0f} MiB"),
            f"< {GOAL_RSS_MIB:.0f} MiB (limit {LIMIT_RSS_MIB:.0f} Mi)",
            None if rss is None else rss < GOAL_RSS_MIB,
        ),
        (
            "operator RSS, peak incl. converge",
            _cell(results, "rss_mib_peak", "{:.0f} MiB"),
            "",
            None,
        ),
    ]
    headers = ("measure", "value", "goal", "met")
    cells = [(name, value, goal or "—", met(ok)) for name, value, goal, ok in rows]
    widths = [max(len(row[i]) for row in [headers, *cells]) for i in range(4)]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i != 1 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    rule = "-" * len(line(headers))
    title = (
        f"Operator at scale: {agents} RDEAgents, KMock emulator over HTTP, operator process, "
        f"loops every {results.get('interval_s', 0):g} s, window {results.get('window_s', 0):.0f} s"
    )
    notes = [
        f"writes in the window: {results.get('writes_window', 0):.0f} seen by the API server, "
        f"{results.get('operator_writes_window', 0):.0f} counted by the operator; "
        f"scale-downs: {results.get('scale_downs_window', 0):.0f}; "
        f"all requests: {results.get('requests_per_min', 0):.0f}/min; "
        f"reconciles: {results.get('reconciles_window', 0):.0f}",
        f"cycles in the window: {results.get('ttl_sweep_cycles', 0):.0f} TTL sweeps over "
        f"{results.get('ttl_sweep_agents', 0):.0f} agents, "
        f"{results.get('status_cycle_cycles', 0):.0f} status cycles over "
        f"{results.get('status_cycle_agents', 0):.0f} agents (each lists every agent pod)",
    ]
    body = [title, rule, line(headers), rule, *(line(row) for row in cells), rule]
    return "\n".join([*body, *notes])


async def run(quick: bool, *, agents: int | None = None, keep: bool = False) -> dict[str, float]:
    """Run the benchmark, print its table, return the numbers (seconds, ms, MiB, counts).

    The operator's log is kept (and its directory named) with `keep`, or when the run fails.
    """
    plan = QUICK if quick else FULL
    if agents is not None:
        plan = dataclasses.replace(plan, agents=agents)
    work = Path(tempfile.mkdtemp(prefix="kuberde-operator-scale-"))
    try:
        with Processes(work) as procs:
            results = await measure(procs, work, plan)
    except BaseException:
        _say(f"logs kept in {work}")
        raise
    if keep:
        _say(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(render(results), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.operator_scale", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.agents} agents, shorter")
    parser.add_argument("--agents", type=int, help="number of RDEAgents (overrides the mode)")
    parser.add_argument("--keep", action="store_true", help="keep the operator's log")
    args = parser.parse_args(argv)
    if args.agents is not None and args.agents < 1:
        parser.error("--agents must be at least 1")
    asyncio.run(run(args.quick, agents=args.agents, keep=args.keep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
