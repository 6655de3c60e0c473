"""`python -m bench.soak [--minutes N | --quick]`: the gateway under heavy and hostile load.

One real `kuberde server` process on loopback; in this process, agents (the project's own
yamux sessions, echoing every stream and checking the SHA-256 the user put in front of the
payload) and honest users (streams of random sizes, each echo checked against the SHA-256 of
what was sent). Faults are injected on purpose: agents killed and restarted at random, one
gateway restart at half time; after a quiet first fifth (the baseline), attackers run: an
agent flooding pings without reading, a user opening streams past their limit, and clients
sending request headers a byte at a time.

It prints transfers completed, failed (each with the injected fault that explains it; the
user retries) and corrupted (must be 0), stream setup p50/p99 per interval, the gateway's
RSS and open file descriptors per interval, and honest users' setup latency while attacked
against the quiet baseline. Defaults are the issue's: 10 minutes, 1,000 agents, 200 users,
1 KiB-64 MiB; scale them down with flags on a small machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.procs import Child, Processes, free_port, rss_kib
from bench.stack import KUBERDE, START_TIMEOUT, clean_env
from bench.stats import percentile
from kuberde.auth import TokenIssuer, load_or_create_signing_key
from kuberde.mux import (
    BULK_FRAME,
    BULK_WINDOW,
    Flag,
    FrameType,
    PreambleReader,
    Session,
    SessionConfig,
    Stream,
)
from kuberde.mux.frame import encode_header
from kuberde.wslink import WebSocketLink

KIB = 1024
MIB = 1024 * KIB
#: Every network wait in the soak is bounded by this.
WAIT = 60.0
SAMPLE_INTERVAL = 10.0
AGENT_CONFIG = SessionConfig(receive_window=BULK_WINDOW, max_frame_payload=BULK_FRAME)


@dataclass
class Tally:
    completed: int = 0
    corrupted: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    #: (time since start, seconds to set up, under attack)
    setups: list[tuple[float, float, bool]] = field(default_factory=list)
    #: (time since start, RSS KiB, open fds)
    gateway: list[tuple[float, int, int]] = field(default_factory=list)
    attack: Counter[str] = field(default_factory=Counter)


@dataclass
class Faults:
    """What was injected, so every failure can be explained by one."""

    gateway_down: bool = False
    killed: dict[str, float] = field(default_factory=dict)

    def explain(self, agent: str, now: float) -> str | None:
        if self.gateway_down:
            return "gateway restart"
        killed = self.killed.get(agent)
        if killed is not None and now - killed < 30.0:
            return "agent killed"
        return None


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path, procs: Processes) -> None:
        self.args = args
        self.work = work
        self.procs = procs
        self.rng = random.Random(args.seed)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = work / "gateway-state"
        self.issuer = TokenIssuer(load_or_create_signing_key(self.state_dir))
        self.tally = Tally()
        self.faults = Faults()
        self.gateway: Child | None = None
        self.starts = 0
        self.started = time.monotonic()
        self.deadline = self.started + args.minutes * 60
        self.attacking = False
        self.agents = [(f"u{n % args.users}", f"w{n}") for n in range(args.agents)]
        self.agent_tasks: dict[str, asyncio.Task[None]] = {}
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
        )

    def elapsed(self) -> float:
        return time.monotonic() - self.started

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
        self.faults.gateway_down = True
        await asyncio.to_thread(self.procs.stop, self.gateway)
        await asyncio.to_thread(self.start_gateway)
        await self.agents_back()  # failures until every agent is back are the restart's
        self.faults.gateway_down = False

    async def agents_back(self) -> None:
        """Wait (bounded) until every agent the run keeps up is connected."""
        wanted = len(self.agent_tasks)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WAIT):
                while True:
                    with contextlib.suppress(aiohttp.ClientError, OSError, ValueError):
                        async with self.http.get(self.url + "/readyz") as response:
                            if (await response.json())["agents_online"] >= wanted:
                                return
                    await asyncio.sleep(0.5)

    def sample(self) -> None:
        assert self.gateway is not None
        pid = self.gateway.pid
        with contextlib.suppress(OSError):
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            self.tally.gateway.append((self.elapsed(), rss_kib(pid), fds))

    # ---- agents ---------------------------------------------------------------------------

    async def agent(self, owner: str, name: str) -> None:
        """One agent: dial, serve echo streams, redial with backoff until cancelled."""
        token = self.issuer.mint_agent(owner, name)
        delay = 0.2
        while True:
            try:
                ws = await asyncio.wait_for(
                    self.http.ws_connect(
                        self.url + "/ws",
                        headers={"Authorization": f"Bearer {token}"},
                        max_msg_size=0,
                    ),
                    WAIT,
                )
            except (aiohttp.ClientError, OSError, TimeoutError):
                await asyncio.sleep(delay * (1 + self.rng.random()))
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.2
            session = Session(WebSocketLink(ws), is_client=True, config=AGENT_CONFIG, name=name)
            running = asyncio.create_task(session.run())
            served: set[asyncio.Task[None]] = set()
            try:
                while True:
                    stream = await session.accept()
                    task = asyncio.create_task(self.echo(stream))
                    served.add(task)
                    task.add_done_callback(served.discard)
            except ConnectionError:
                pass
            finally:
                for task in (running, *served):
                    task.cancel()
                await asyncio.gather(running, *served, return_exceptions=True)
                await ws.close()

    async def echo(self, stream: Stream) -> None:
        """Echo the stream; the first 32 bytes after the preamble are the payload's SHA-256."""
        reader = PreambleReader()
        parsed = None
        with contextlib.suppress(ConnectionError):
            while parsed is None:
                chunk = await stream.read()
                if not chunk:
                    return
                parsed = reader.feed(chunk)
            digest = hashlib.sha256()
            expected = b""
            pending = parsed[1]
            while True:
                if pending:
                    if len(expected) < 32:
                        take = 32 - len(expected)
                        expected += pending[:take]
                        digest.update(pending[take:])
                    else:
                        digest.update(pending)
                    stream.write(pending)
                    await stream.drain()
                pending = await stream.read(BULK_FRAME)
                if not pending:
                    break
            if digest.digest() != expected:
                self.tally.corrupted += 1
            stream.close_write()
            await stream.wait_closed()

    async def killer(self) -> None:
        """Kill a random agent's connection now and then; it dials again after a while."""
        while time.monotonic() < self.deadline:
            await asyncio.sleep(self.rng.uniform(2.0, 6.0))
            owner, name = self.rng.choice(self.agents)
            task = self.agent_tasks.get(name)
            if task is None:
                continue
            self.faults.killed[f"user-{owner}-{name}"] = time.monotonic()
            task.cancel()
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
            self.agent_tasks[name] = asyncio.create_task(self.agent(owner, name))

    # ---- honest users ---------------------------------------------------------------------

    def size(self) -> int:
        low, high = math.log(KIB), math.log(self.args.max_size)
        return int(math.exp(self.rng.uniform(low, high)))

    async def user(self, index: int) -> None:
        owner = f"u{index}"
        mine = [name for o, name in self.agents if o == owner] or [self.agents[0][1]]
        token = self.issuer.mint_user(owner)
        slow = index % 10 == 0  # every tenth user is a slow reader
        while time.monotonic() < self.deadline:
            name = self.rng.choice(mine)
            agent = f"user-{owner}-{name}"
            payload = os.urandom(self.size())
            for _attempt in range(5):
                outcome = await self.transfer(agent, token, payload, slow)
                if outcome is None:
                    break
                cause = self.faults.explain(agent, time.monotonic()) or f"unexplained: {outcome}"
                self.tally.failures[cause] += 1
                await asyncio.sleep(1.0 + self.rng.random())

    async def transfer(self, agent: str, token: str, payload: bytes, slow: bool) -> str | None:
        """One stream: send SHA-256 + payload + EOF, check the echo; None when it worked."""
        started = time.monotonic()
        attacked = self.attacking
        try:
            async with asyncio.timeout(WAIT + len(payload) / MIB):
                ws = await self.http.ws_connect(
                    f"{self.url.replace('http', 'ws', 1)}/connect/{agent}?port=22",
                    headers={"Authorization": f"Bearer {token}"},
                    max_msg_size=0,
                )
                try:
                    return await self._exchange(ws, payload, slow, started, attacked)
                finally:
                    await ws.close()
        except aiohttp.WSServerHandshakeError as exc:
            return f"HTTP {exc.status}"
        except (aiohttp.ClientError, OSError, ConnectionError, TimeoutError) as exc:
            return type(exc).__name__

    async def _exchange(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        payload: bytes,
        slow: bool,
        started: float,
        attacked: bool,
    ) -> str | None:
        first = await ws.receive()
        if first.type is not aiohttp.WSMsgType.TEXT or json.loads(first.data) != {
            "event": "connected"
        }:
            return f"not connected: {first.type.name} {first.extra or first.data!r}"
        self.tally.setups.append((started - self.started, time.monotonic() - started, attacked))
        body = hashlib.sha256(payload).digest() + payload

        async def send() -> None:
            for offset in range(0, len(body), 256 * KIB):
                await ws.send_bytes(body[offset : offset + 256 * KIB])
            await ws.send_str('{"event":"eof"}')

        sender = asyncio.create_task(send())
        echoed = hashlib.sha256()
        size = 0
        try:
            async for message in ws:
                if message.type is aiohttp.WSMsgType.BINARY:
                    echoed.update(message.data)
                    size += len(message.data)
                    if slow:
                        await asyncio.sleep(0.01)
                elif message.type is aiohttp.WSMsgType.TEXT:
                    event = json.loads(message.data)
                    if event.get("event") == "eof":
                        break
                    if event.get("event") == "error":
                        return str(event.get("message"))
            else:
                return f"closed early: {ws.close_code}"
            await sender
        finally:
            sender.cancel()
        if size != len(body) or echoed.digest() != hashlib.sha256(body).digest():
            self.tally.corrupted += 1
            return None
        self.tally.completed += 1
        return None

    # ---- attackers ------------------------------------------------------------------------

    async def ping_flood(self) -> None:
        token = self.issuer.mint_agent("mallory", "flood")
        pings = b"".join(encode_header(FrameType.PING, Flag.SYN, 0, n) for n in range(5000))
        while time.monotonic() < self.deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, ConnectionError):
                async with asyncio.timeout(WAIT):
                    ws = await self.http.ws_connect(
                        self.url + "/ws", headers={"Authorization": f"Bearer {token}"}
                    )
                    try:
                        for _ in range(200):
                            await ws.send_bytes(pings)
                            self.tally.attack["flood pings sent"] += 5000
                    finally:
                        ws._response.close()  # never reads: drop it, do not close politely
                        self.tally.attack["flood sessions"] += 1
            await asyncio.sleep(1.0)

    async def stream_hog(self) -> None:
        """mallory opens streams to her own workspace past her limit, and holds them."""
        token = self.issuer.mint_user("mallory")
        held: list[aiohttp.ClientWebSocketResponse] = []
        agent = "user-mallory-hog"
        try:
            while time.monotonic() < self.deadline:
                try:
                    async with asyncio.timeout(WAIT):
                        held.append(
                            await self.http.ws_connect(
                                f"{self.url.replace('http', 'ws', 1)}/connect/{agent}",
                                headers={"Authorization": f"Bearer {token}"},
                            )
                        )
                    self.tally.attack["hog streams opened"] += 1
                except aiohttp.WSServerHandshakeError as exc:
                    self.tally.attack[f"hog refused HTTP {exc.status}"] += 1
                    await asyncio.sleep(0.5)
                except (aiohttp.ClientError, OSError, TimeoutError):
                    held = [ws for ws in held if not ws.closed]
                    await asyncio.sleep(1.0)
        finally:
            for ws in held:
                await ws.close()

    async def slow_headers(self) -> None:
        while time.monotonic() < self.deadline:
            writers = []
            for _ in range(self.args.slow_clients):
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                    writers.append(writer)
            for _ in range(30):
                for writer in writers:
                    with contextlib.suppress(OSError):
                        writer.write(b"X")
                await asyncio.sleep(1.0)
            self.tally.attack["slow-header connections"] += len(writers)
            for writer in writers:
                writer.close()

    # ---- the run --------------------------------------------------------------------------

    async def run(self) -> None:
        await asyncio.to_thread(self.start_gateway)
        for owner, name in [*self.agents, ("mallory", "hog")]:
            self.agent_tasks[name] = asyncio.create_task(self.agent(owner, name))
        await self.agents_back()
        users = [asyncio.create_task(self.user(n)) for n in range(self.args.users)]
        background = [asyncio.create_task(self.killer())]
        duration = self.deadline - time.monotonic()
        restart_at = time.monotonic() + duration / 2
        attack_at = time.monotonic() + duration / 5
        restarted = False
        while time.monotonic() < self.deadline:
            await asyncio.sleep(SAMPLE_INTERVAL)
            self.sample()
            if not self.attacking and time.monotonic() >= attack_at:
                self.attacking = True
                background += [
                    asyncio.create_task(self.ping_flood()),
                    asyncio.create_task(self.stream_hog()),
                    asyncio.create_task(self.slow_headers()),
                ]
            if not restarted and time.monotonic() >= restart_at:
                restarted = True
                await self.restart_gateway()
        await asyncio.wait(users, timeout=WAIT)
        for task in (*users, *background, *self.agent_tasks.values()):
            task.cancel()
        await asyncio.gather(
            *users, *background, *self.agent_tasks.values(), return_exceptions=True
        )


async def _soak(args: argparse.Namespace, work: Path, procs: Processes) -> Soak:
    soak = Soak(args, work, procs)
    try:
        await soak.run()
    finally:
        await soak.http.close()
    return soak


def _ms(samples: list[float]) -> str:
    if not samples:
        return "-"
    p50, p99 = percentile(samples, 0.5) * 1000, percentile(samples, 0.99) * 1000
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"


def report(soak: Soak) -> None:
    tally = soak.tally
    print(f"transfers: completed {tally.completed}, corrupted {tally.corrupted}")
    print(f"failed (each retried): {sum(tally.failures.values())}")
    for cause, count in tally.failures.most_common():
        print(f"  {count:6d}  {cause}")
    print("stream setup over time:")
    buckets: dict[int, list[float]] = {}
    for at, seconds, _ in tally.setups:
        buckets.setdefault(int(at // 60), []).append(seconds)
    for minute, samples in sorted(buckets.items()):
        print(f"  minute {minute:3d}: {len(samples):6d} streams, {_ms(samples)}")
    print("gateway RSS / open fds over time:")
    for at, rss, fds in tally.gateway:
        print(f"  {at:7.0f}s  {rss / 1024:8.1f} MiB  {fds:6d} fds")
    quiet = [s for _, s, attacked in tally.setups if not attacked]
    under = [s for _, s, attacked in tally.setups if attacked]
    print(f"honest setup, quiet baseline:  {_ms(quiet)} ({len(quiet)} streams)")
    print(f"honest setup, under attack:    {_ms(under)} ({len(under)} streams)")
    print("attacks:", dict(tally.attack))
    unexplained = sum(n for cause, n in tally.failures.items() if cause.startswith("unexplained"))
    if tally.corrupted or unexplained:
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
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.quick:
        args.minutes = 2.0
    logging.getLogger("asyncio").setLevel(logging.ERROR)  # the flood's writes after its drop
    with (
        tempfile.TemporaryDirectory(prefix="kuberde-soak-") as tmp,
        Processes(Path(tmp)) as procs,
    ):
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        report(asyncio.run(_soak(args, Path(tmp), procs)))


if __name__ == "__main__":
    main()
