"""`python -m bench.soak [--minutes N | --quick]`: the gateway under heavy and hostile load.

One real `kuberde server` process on loopback. Agents (the project's own yamux sessions,
echoing every stream and checking the SHA-256 trailer the user put after the payload) and
honest users (streams of random sizes, each echo checked against the SHA-256 of what was
sent) run in worker processes (`bench.soakpeers`), as many clients would, from many loopback
addresses. Faults are injected on purpose: agents killed and restarted at random, one
gateway restart at half time; after a quiet first fifth (the baseline), attackers run from
this process, each from its own address: an agent flooding pings without reading, a user
opening streams past their limit, and clients sending request headers a byte at a time.

It prints transfers completed, failed (each with the injected fault that explains it; the
user retries) and corrupted (must be 0), stream setup p50/p99 per minute beside the event
loop lag of the gateway (its `kuberde_event_loop_lag_seconds`, scraped each second) and of
every worker (each runs `LoopLag` too), the gateway's RSS and open file descriptors per
interval, and honest users' setup latency while attacked
against the quiet baseline. Defaults are the issue's: 10 minutes, 1,000 agents, 200 users,
1 KiB-64 MiB; scale them down with flags on a small machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from bench.procs import Child, Processes, cpu_seconds, free_port, rss_kib
from bench.soakpeers import WAIT, WorkerConfig, WorkerResults, load_results
from bench.stack import KUBERDE, START_TIMEOUT, clean_env
from bench.stats import percentile
from kuberde.auth import TokenIssuer, load_or_create_signing_key
from kuberde.gateway.connections import raise_fd_limit
from kuberde.mux import Flag, FrameType
from kuberde.mux.frame import encode_header

KIB = 1024
MIB = 1024 * KIB
SAMPLE_INTERVAL = 10.0
#: A failure this soon after an agent was killed (or the gateway came back) is theirs.
FAULT_SHADOW = 30.0
#: Share of the agents that must be back before a gateway restart counts as over.
BACK_SHARE = 0.98
#: Where each attacker connects from; honest clients use 127.1.x.x and 127.2.x.x.
FLOOD_ADDRESS, HOG_ADDRESS, SLOW_ADDRESS = "127.3.0.1", "127.3.0.2", "127.3.0.3"
#: Streams the hog opens at once.
HOG_OPENERS = 16
#: The probe user's workspace (its user dials from 127.2.x.x after the honest users).
PROBE_WORKSPACE = ("prober", "probe")
LAG_METRIC = "kuberde_event_loop_lag_seconds"
LAG_SCRAPE_INTERVAL = 1.0


@dataclass
class Timeline:
    """What this process did when, in `time.monotonic()` (the workers' clock too)."""

    attack_from: float = float("inf")
    #: (down, back) of each gateway restart
    restarts: list[tuple[float, float]] = field(default_factory=list)
    #: (time, RSS KiB, open fds)
    gateway: list[tuple[float, int, int]] = field(default_factory=list)
    attack: Counter[str] = field(default_factory=Counter)
    #: (time, {process: CPU seconds so far}) of the gateway and every worker
    cpu: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    #: (time, the gateway's loop-lag gauge in seconds)
    gateway_lag: list[tuple[float, float]] = field(default_factory=list)


def gauge(text: str, name: str) -> float | None:
    """The value of an unlabelled metric in Prometheus text format, if it is there."""
    for line in text.splitlines():
        metric, _, value = line.partition(" ")
        if metric == name:
            with contextlib.suppress(ValueError):
                return float(value)
    return None


def per_minute(samples: list[tuple[float, float]], started: float) -> dict[int, list[float]]:
    """(time, value) samples grouped by the minute of the run they fall in."""
    buckets: dict[int, list[float]] = {}
    for at, value in samples:
        buckets.setdefault(int((at - started) // 60), []).append(value)
    return buckets


def cpu_shares(
    earlier: dict[str, float], later: dict[str, float], seconds: float
) -> dict[str, float]:
    """Per process, the share of one core it used between two samples (a restarted
    gateway's counter starts again, so a drop is not counted)."""
    return {
        name: max(0.0, later[name] - earlier[name]) / seconds
        for name in later
        if name in earlier and seconds > 0
    }


def explain(
    failure: tuple[float, str, str], kills: dict[str, list[float]], timeline: Timeline
) -> str:
    """The injected fault that explains a failed attempt, or `unexplained: WHAT`."""
    at, agent, what = failure
    for down, back in timeline.restarts:
        if down <= at <= back + FAULT_SHADOW:
            return "gateway restart"
    if any(killed <= at <= killed + FAULT_SHADOW for killed in kills.get(agent, ())):
        return "agent killed"
    return f"unexplained: {what}"


def _slices(items: list[tuple[int, str, str]], parts: int) -> list[list[tuple[int, str, str]]]:
    return [items[n::parts] for n in range(parts)]


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path, procs: Processes) -> None:
        self.args = args
        self.work = work
        self.procs = procs
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = work / "gateway-state"
        self.issuer = TokenIssuer(load_or_create_signing_key(self.state_dir))
        self.timeline = Timeline()
        self.gateway: Child | None = None
        self.starts = 0
        self.started = time.monotonic()
        self.deadline = self.started + args.minutes * 60
        self.workspaces = [(f"u{n % args.users}", f"w{n}") for n in range(args.agents)]
        self.workspaces.append(PROBE_WORKSPACE)
        self.workers: list[tuple[Child, Path]] = []
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
        )

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def client(self, address: str) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, local_addr=(address, 0)),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    # ---- the gateway ----------------------------------------------------------------------

    def start_gateway(self) -> None:
        argv = [
            *KUBERDE,
            "server",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--state-dir",
            str(self.state_dir),
        ]
        self.starts += 1
        name = f"gateway-{self.starts}"
        self.gateway = self.procs.start(name, argv, env=clean_env(self.work))
        self.gateway.wait_for_log(r"KubeRDE gateway listening on (\S+)", START_TIMEOUT)

    async def restart_gateway(self) -> None:
        assert self.gateway is not None
        down = time.monotonic()
        await asyncio.to_thread(self.procs.stop, self.gateway)
        await asyncio.to_thread(self.start_gateway)
        await self.agents_back()  # failures until the agents are back are the restart's
        self.timeline.restarts.append((down, time.monotonic()))

    async def agents_back(self) -> None:
        """Wait (bounded) until nearly every agent is connected (some are always being
        killed and restarted)."""
        wanted = (len(self.workspaces) + 1) * BACK_SHARE
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2 * WAIT):
                while True:
                    with contextlib.suppress(aiohttp.ClientError, OSError, ValueError):
                        async with self.http.get(self.url + "/readyz") as response:
                            if (await response.json())["agents_online"] >= wanted:
                                return
                    await asyncio.sleep(0.5)

    async def scrape_loop_lag(self) -> None:
        """The gateway's loop-lag gauge each second; a scrape that fails (the gateway is
        restarting) or takes longer than WAIT is skipped."""
        while time.monotonic() < self.deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with (
                    asyncio.timeout(WAIT),
                    self.http.get(self.url + "/metrics") as response,
                ):
                    value = gauge(await response.text(), LAG_METRIC)
                if value is not None:
                    self.timeline.gateway_lag.append((time.monotonic(), value))
            await asyncio.sleep(LAG_SCRAPE_INTERVAL)

    def sample(self) -> None:
        assert self.gateway is not None
        pid = self.gateway.pid
        with contextlib.suppress(OSError):
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            self.timeline.gateway.append((time.monotonic(), rss_kib(pid), fds))
        used: dict[str, float] = {}
        for child in [self.gateway, *(worker for worker, _ in self.workers)]:
            with contextlib.suppress(OSError):
                used[child.name.split("-")[0] if child is self.gateway else child.name] = (
                    cpu_seconds(child.pid)
                )
        self.timeline.cpu.append((time.monotonic(), used))

    # ---- workers --------------------------------------------------------------------------

    def start_workers(self, role: str, configs: list[WorkerConfig]) -> None:
        for n, config in enumerate(configs):
            path = self.work / f"{role}-{n}.json"
            path.write_text(json.dumps(asdict(config)))
            child = self.procs.start(
                f"{role}-{n}", [sys.executable, "-m", "bench.soakpeers", str(path)]
            )
            self.workers.append((child, Path(config.results)))

    def config(self, role: str, n: int, **slices: object) -> WorkerConfig:
        """A worker's config; `slices` are its `agents` or `users`."""
        return WorkerConfig(
            role=role,
            url=self.url,
            state_dir=str(self.state_dir),
            results=str(self.work / f"{role}-{n}-results.json"),
            started=self.started,
            deadline=self.deadline,
            seed=self.args.seed,
            max_size=self.args.max_size,
            workspaces=self.workspaces,
            **slices,  # type: ignore[arg-type]
        )

    async def workers_done(self) -> list[WorkerResults]:
        results = []
        for child, path in self.workers:
            try:
                await asyncio.to_thread(child.popen.wait, 3 * WAIT)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"{child.name} did not finish{child.tail()}") from None
            if child.popen.returncode != 0 or not path.exists():
                raise RuntimeError(f"{child.name} failed{child.tail()}")
            results.append(load_results(path))
        return results

    # ---- attackers ------------------------------------------------------------------------

    async def ping_flood(self) -> None:
        token = self.issuer.mint_agent("mallory", "flood")
        pings = b"".join(encode_header(FrameType.PING, Flag.SYN, 0, n) for n in range(5000))
        async with self.client(FLOOD_ADDRESS) as http:
            while time.monotonic() < self.deadline:
                with contextlib.suppress(
                    aiohttp.ClientError, OSError, TimeoutError, ConnectionError
                ):
                    async with asyncio.timeout(WAIT):
                        ws = await http.ws_connect(
                            self.url + "/ws", headers={"Authorization": f"Bearer {token}"}
                        )
                        try:
                            for _ in range(200):
                                await ws.send_bytes(pings)
                                self.timeline.attack["flood pings sent"] += 5000
                        finally:
                            ws._response.close()  # never reads: drop it, do not close politely
                            self.timeline.attack["flood sessions"] += 1
                await asyncio.sleep(1.0)

    async def stream_hog(self) -> None:
        """mallory opens streams to her own workspace past her limit, and holds them: many
        at once, so she reaches it even while a busy gateway takes seconds per stream."""
        token = self.issuer.mint_user("mallory")
        held: list[aiohttp.ClientWebSocketResponse] = []
        url = f"{self.url.replace('http', 'ws', 1)}/connect/user-mallory-hog"

        async def opener(http: aiohttp.ClientSession) -> None:
            while time.monotonic() < self.deadline:
                try:
                    async with asyncio.timeout(WAIT):
                        held.append(
                            await http.ws_connect(url, headers={"Authorization": f"Bearer {token}"})
                        )
                    self.timeline.attack["hog streams opened"] += 1
                except aiohttp.WSServerHandshakeError as exc:
                    self.timeline.attack[f"hog refused HTTP {exc.status}"] += 1
                    await asyncio.sleep(0.5)
                except (aiohttp.ClientError, OSError, TimeoutError):
                    held[:] = [ws for ws in held if not ws.closed]
                    await asyncio.sleep(1.0)

        async with self.client(HOG_ADDRESS) as http:
            try:
                await asyncio.gather(*(opener(http) for _ in range(HOG_OPENERS)))
            finally:
                for ws in held:
                    await ws.close()

    async def slow_headers(self) -> None:
        while time.monotonic() < self.deadline:
            writers = []
            for _ in range(self.args.slow_clients):
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection(
                        "127.0.0.1", self.port, local_addr=(SLOW_ADDRESS, 0)
                    )
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                    writers.append(writer)
            for _ in range(30):
                for writer in writers:
                    with contextlib.suppress(OSError):
                        writer.write(b"X")
                await asyncio.sleep(1.0)
            self.timeline.attack["slow-header connections"] += len(writers)
            for writer in writers:
                writer.close()

    # ---- the run --------------------------------------------------------------------------

    async def run(self) -> list[WorkerResults]:
        await asyncio.to_thread(self.start_gateway)
        scraper = asyncio.create_task(self.scrape_loop_lag())
        agents = [(n, owner, name) for n, (owner, name) in enumerate(self.workspaces)]
        agents.append((len(agents), "mallory", "hog"))
        self.start_workers(
            "agents",
            [
                self.config("agents", n, agents=part)
                for n, part in enumerate(_slices(agents, self.args.agent_workers))
            ],
        )
        await self.agents_back()
        users = [(n, f"u{n}", "") for n in range(self.args.users)]
        self.start_workers(
            "users",
            [
                self.config("users", n, users=[(i, owner) for i, owner, _ in part])
                for n, part in enumerate(_slices(users, self.args.user_workers))
            ],
        )
        self.start_workers(
            "probe", [self.config("probe", 0, users=[(self.args.users, PROBE_WORKSPACE[0])])]
        )
        duration = self.deadline - time.monotonic()
        restart_at = time.monotonic() + duration / 2
        attack_at = time.monotonic() + duration / 5
        attackers: list[asyncio.Task[None]] = []
        restart: asyncio.Task[None] | None = None
        while time.monotonic() < self.deadline:
            await asyncio.sleep(SAMPLE_INTERVAL)
            self.sample()
            if not attackers and time.monotonic() >= attack_at:
                self.timeline.attack_from = time.monotonic()
                attackers = [
                    asyncio.create_task(self.ping_flood()),
                    asyncio.create_task(self.stream_hog()),
                    asyncio.create_task(self.slow_headers()),
                ]
            if restart is None and time.monotonic() >= restart_at:
                # In the background, so RSS and fds are sampled through the restart too.
                restart = asyncio.create_task(self.restart_gateway())
        if restart is not None:
            await restart
        results = await self.workers_done()
        for task in [*attackers, scraper]:
            task.cancel()
        await asyncio.gather(*attackers, scraper, return_exceptions=True)
        return results


async def _soak(args: argparse.Namespace, work: Path, procs: Processes) -> Report:
    soak = Soak(args, work, procs)
    try:
        results = await soak.run()
    finally:
        await soak.http.close()
    return Report(soak.started, soak.timeline, results)


def _ms(samples: list[float]) -> str:
    if not samples:
        return "-"
    p50, p99 = percentile(samples, 0.5) * 1000, percentile(samples, 0.99) * 1000
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"


def _lag_ms(samples: list[float]) -> str:
    if not samples:
        return "-"
    return f"p50 {percentile(samples, 0.5) * 1000:.0f} max {max(samples) * 1000:.0f}"


@dataclass
class Report:
    started: float
    timeline: Timeline
    results: list[WorkerResults]

    def print(self) -> None:
        timeline, results = self.timeline, self.results
        kills: dict[str, list[float]] = {}
        for worker in results:
            for at, agent in worker.kills:
                kills.setdefault(agent, []).append(at)
        failures = Counter(explain(f, kills, timeline) for w in results for f in w.failures)
        corrupted = sum(w.corrupted for w in results)
        print(f"transfers: completed {sum(w.completed for w in results)}, corrupted {corrupted}")
        print(f"failed attempts (each retried): {sum(failures.values())}")
        for cause, count in failures.most_common():
            print(f"  {count:6d}  {cause}")
        print(f"transfers given up after every retry failed: {sum(w.gave_up for w in results)}")
        print(
            f"agents killed: {sum(len(k) for k in kills.values())}, gateway restarts: "
            f"{len(timeline.restarts)}"
        )
        for down, back in timeline.restarts:
            print(f"  down at {down - self.started:.0f}s, agents back {back - down:.1f}s later")
        kinds = {
            "probe (1 KiB streams, its own process)": [w for w in results if w.role == "probe"],
            "bulk users (busy client loops)": [w for w in results if w.role == "users"],
        }
        for kind, workers in kinds.items():
            setups = [(at, s) for w in workers for at, s in w.setups]
            print(f"stream setup over time, {kind}:")
            for minute, samples in sorted(per_minute(setups, self.started).items()):
                print(f"  minute {minute:3d}: {len(samples):6d} streams, {_ms(samples)}")
        lags = {"gateway": per_minute(timeline.gateway_lag, self.started)}
        lags.update((w.name, per_minute(w.loop_lag, self.started)) for w in results)
        print("event-loop lag over time (how late a 0.5 s timer ran; p50 max, ms):")
        minutes = sorted({minute for buckets in lags.values() for minute in buckets})
        for minute in minutes:
            row = "  ".join(f"{name} {_lag_ms(b.get(minute, []))}" for name, b in lags.items())
            print(f"  minute {minute:3d}: {row}")
        print("gateway RSS / open fds over time:")
        for at, rss, fds in timeline.gateway:
            print(f"  {at - self.started:7.0f}s  {rss / 1024:8.1f} MiB  {fds:6d} fds")
        print("CPU per process over time (share of one core):")
        for (before, earlier), (at, later) in itertools.pairwise(timeline.cpu):
            shares = cpu_shares(earlier, later, at - before)
            row = "  ".join(f"{name} {share:4.0%}" for name, share in shares.items())
            print(f"  {at - self.started:7.0f}s  {row}")
        for kind, workers in kinds.items():
            setups = [(at, s) for w in workers for at, s in w.setups]
            quiet = [s for at, s in setups if at < timeline.attack_from]
            under = [s for at, s in setups if at >= timeline.attack_from]
            print(f"honest setup, {kind}:")
            print(f"  quiet baseline:  {_ms(quiet)} ({len(quiet)} streams)")
            print(f"  under attack:    {_ms(under)} ({len(under)} streams)")
        print("attacks:", dict(timeline.attack))
        unexplained = sum(n for cause, n in failures.items() if cause.startswith("unexplained"))
        if corrupted or unexplained:
            print("FAILED: corrupted or unexplained transfers", file=sys.stderr)
            sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="2 minutes")
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--max-size", type=int, default=64 * MIB, help="bytes per stream, at most")
    parser.add_argument("--slow-clients", type=int, default=200)
    parser.add_argument("--agent-workers", type=int, default=2, help="processes for agents")
    parser.add_argument("--user-workers", type=int, default=2, help="processes for users")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.quick:
        args.minutes = 2.0
    raise_fd_limit()
    logging.getLogger("asyncio").setLevel(logging.ERROR)  # the flood's writes after its drop
    with (
        tempfile.TemporaryDirectory(prefix="kuberde-soak-") as tmp,
        Processes(Path(tmp)) as procs,
    ):
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        asyncio.run(_soak(args, Path(tmp), procs)).print()


if __name__ == "__main__":
    main()
