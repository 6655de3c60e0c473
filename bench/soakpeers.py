"""`python -m bench.soakpeers CONFIG`: one worker process of the soak (`bench.soak`).

A thousand agents and two hundred users that hash every byte are more than one Python event
loop can serve without its own lag swamping the gateway's, so the soak runs them in a few
worker processes. A worker is either `agents` (its slice of the agents: echo every stream and
check the SHA-256 trailer the user put after the payload; kill and restart its agents at
random) or `users` (its slice of the honest users: streams of random sizes, each echo checked
against the SHA-256 of what was sent, retried on failure). It records what happened with
`time.monotonic()` times, which are the same clock in every process, writes them as JSON to
the config's `results` path and exits; the orchestrator explains and reports.

Payloads are generated chunk by chunk and hashed as they go: nothing holds a whole payload,
so 200 users of up to 64 MiB each cost a few chunks apiece, not gigabytes. A chunk is a
window of one random block at a random offset, headed by the transfer's nonce and the
chunk's number — no two chunks alike, so a lost, repeated or reordered piece changes the
hash, at the cost of a copy instead of the kernel's 90 MB/s of random bytes (which made the
users' own CPU the bottleneck). A `probe` worker is one user that opens a small stream every
so often: its setup times are the gateway's, not a busy client loop's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import random
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kuberde.aio import LoopLag
from kuberde.auth import TokenIssuer, load_or_create_signing_key
from kuberde.gateway.connections import raise_fd_limit
from kuberde.mux import BULK_FRAME, BULK_WINDOW, PreambleReader, Session, SessionConfig, Stream
from kuberde.wslink import WebSocketLink

KIB = 1024
#: Every network wait in the soak is bounded by this.
WAIT = 60.0
CHUNK = 256 * KIB
DIGEST = 32
AGENT_CONFIG = SessionConfig(receive_window=BULK_WINDOW, max_frame_payload=BULK_FRAME)
#: The block chunks are cut from; per worker, random.
BLOCK = 2 * CHUNK
#: The probe's payload and pause between two streams.
PROBE_SIZE = KIB
PROBE_PAUSE = 0.2
#: Attempts per transfer, with a doubling pause between them (1 s up to 16 s): a client
#: rides out a gateway restart of about a minute, as a real one would.
ATTEMPTS = 8
MAX_PAUSE = 16.0


def agent_address(index: int) -> str:
    """Agents dial from 200 loopback addresses (5 each), as pods would from many: the
    gateway's cap on unauthenticated connections per address must not see one crowd."""
    return f"127.1.0.{index % 200 + 1}"


def user_address(index: int) -> str:
    return f"127.2.{index // 250}.{index % 250 + 1}"


@dataclass
class WorkerConfig:
    role: str
    url: str
    state_dir: str
    results: str
    #: `time.monotonic()` values, shared by every process on the machine.
    started: float
    deadline: float
    seed: int
    max_size: int
    #: (index, owner, name) of the agents this worker keeps up, or of the users' workspaces.
    agents: list[tuple[int, str, str]] = field(default_factory=list)
    #: (index, owner) of the users this worker runs.
    users: list[tuple[int, str]] = field(default_factory=list)
    #: All (owner, name) of the run, so users know their workspaces.
    workspaces: list[tuple[str, str]] = field(default_factory=list)


class TrailerCheck:
    """SHA-256 of a stream's bytes but its last 32, and those last 32: a payload checked
    against the digest that follows it, without knowing where the stream ends."""

    __slots__ = ("_digest", "tail")

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self.tail = b""

    def update(self, data: bytes) -> None:
        if len(data) >= DIGEST:
            self._digest.update(self.tail)
            self._digest.update(data[:-DIGEST])
            self.tail = data[-DIGEST:]
        else:
            held = self.tail + data
            self._digest.update(held[:-DIGEST])
            self.tail = held[-DIGEST:]

    def intact(self) -> bool:
        return len(self.tail) == DIGEST and self._digest.digest() == self.tail


class Payload:
    """`size` bytes in chunks, unlike each other, and their SHA-256."""

    def __init__(self, rng: random.Random, block: bytes, size: int) -> None:
        self._rng = rng
        self._block = block
        self._nonce = rng.getrandbits(64)
        self.size = size
        self.digest = hashlib.sha256()

    def chunks(self) -> Iterator[bytes]:
        left = self.size
        number = 0
        while left:
            offset = self._rng.randrange(len(self._block) - CHUNK)
            chunk = (
                struct.pack(">QQ", self._nonce, number) + self._block[offset : offset + CHUNK]
            )[: min(CHUNK, left)]
            left -= len(chunk)
            number += 1
            self.digest.update(chunk)
            yield chunk


@dataclass
class WorkerResults:
    role: str = ""
    completed: int = 0
    corrupted: int = 0
    #: (time, agent ID, what went wrong) of each failed attempt.
    failures: list[tuple[float, str, str]] = field(default_factory=list)
    #: (time the setup started, seconds to the `connected` event)
    setups: list[tuple[float, float]] = field(default_factory=list)
    #: (time, agent ID) of each kill.
    kills: list[tuple[float, str]] = field(default_factory=list)
    #: Transfers that failed every attempt.
    gave_up: int = 0
    #: The worker's process name (role-N), as the orchestrator's CPU samples name it.
    name: str = ""
    #: (time, seconds late) of a 0.5 s timer on this worker's loop: a saturated worker
    #: shows here, and then its own setups are slow, not the gateway.
    loop_lag: list[tuple[float, float]] = field(default_factory=list)


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.rng = random.Random(f"{config.seed}-{Path(config.results).name}")
        self.issuer = TokenIssuer(load_or_create_signing_key(Path(config.state_dir)))
        name = Path(config.results).name.removesuffix("-results.json")
        self.results = WorkerResults(role=config.role, name=name)
        self.block = os.urandom(BLOCK)
        self.ws_url = config.url.replace("http", "ws", 1)
        self._clients: dict[str, aiohttp.ClientSession] = {}

    def client(self, address: str) -> aiohttp.ClientSession:
        """One HTTP client per source address (a connector binds one local address)."""
        client = self._clients.get(address)
        if client is None:
            connector = aiohttp.TCPConnector(limit=0, local_addr=(address, 0))
            client = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None)
            )
            self._clients[address] = client
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()

    def running(self) -> bool:
        return time.monotonic() < self.config.deadline

    # ---- agents ---------------------------------------------------------------------------

    async def run_agents(self) -> None:
        tasks = {
            name: asyncio.create_task(self.agent(index, owner, name))
            for index, owner, name in self.config.agents
        }
        killer = asyncio.create_task(self.killer(tasks))
        await asyncio.sleep(max(0.0, self.config.deadline - time.monotonic() + WAIT))
        for task in (killer, *tasks.values()):
            task.cancel()
        await asyncio.gather(killer, *tasks.values(), return_exceptions=True)

    async def agent(self, index: int, owner: str, name: str) -> None:
        """One agent: dial, serve echo streams, redial with backoff until cancelled."""
        token = self.issuer.mint_agent(owner, name)
        client = self.client(agent_address(index))
        delay = 0.2
        while True:
            try:
                ws = await asyncio.wait_for(
                    client.ws_connect(
                        self.config.url + "/ws",
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
        """Echo the stream; its last 32 bytes are the SHA-256 of the bytes before them."""
        reader = PreambleReader()
        parsed = None
        with contextlib.suppress(ConnectionError):
            while parsed is None:
                chunk = await stream.read()
                if not chunk:
                    return
                parsed = reader.feed(chunk)
            check = TrailerCheck()
            pending = parsed[1]
            while True:
                if pending:
                    check.update(pending)
                    stream.write(pending)
                    await stream.drain()
                pending = await stream.read(BULK_FRAME)
                if not pending:
                    break
            if not check.intact():
                self.results.corrupted += 1
            stream.close_write()
            await stream.wait_closed()

    async def killer(self, tasks: dict[str, asyncio.Task[None]]) -> None:
        """Kill one of this worker's agents now and then; it dials again after a while.
        Each worker kills at its share of the run's rate (one every 2-6 s in all)."""
        share = len(self.config.agents) / max(1, len(self.config.workspaces))
        agents = {name: (index, owner) for index, owner, name in self.config.agents}
        while self.running():
            await asyncio.sleep(self.rng.uniform(2.0, 6.0) / max(share, 1e-3))
            name = self.rng.choice(list(agents))
            index, owner = agents[name]
            self.results.kills.append((time.monotonic(), f"user-{owner}-{name}"))
            tasks[name].cancel()
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
            tasks[name] = asyncio.create_task(self.agent(index, owner, name))

    # ---- honest users ---------------------------------------------------------------------

    async def run_users(self) -> None:
        users = [asyncio.create_task(self.user(index, owner)) for index, owner in self.config.users]
        await asyncio.wait(users, timeout=max(0.0, self.config.deadline - time.monotonic()) + WAIT)
        for task in users:
            task.cancel()
        await asyncio.gather(*users, return_exceptions=True)

    def size(self) -> int:
        low, high = math.log(KIB), math.log(self.config.max_size)
        return int(math.exp(self.rng.uniform(low, high)))

    async def user(self, index: int, owner: str) -> None:
        mine = [name for o, name in self.config.workspaces if o == owner]
        token = self.issuer.mint_user(owner)
        client = self.client(user_address(index))
        probe = self.config.role == "probe"
        slow = index % 10 == 0 and not probe  # every tenth user is a slow reader
        while self.running():
            agent = f"user-{owner}-{self.rng.choice(mine)}"
            size = PROBE_SIZE if probe else self.size()
            for attempt in range(ATTEMPTS):
                outcome = await self.transfer(client, agent, token, size, slow)
                if outcome is None:
                    break
                self.results.failures.append((time.monotonic(), agent, outcome))
                await asyncio.sleep(min(2.0**attempt, MAX_PAUSE) * (1 + self.rng.random() / 2))
            else:
                self.results.gave_up += 1
            if probe:
                await asyncio.sleep(PROBE_PAUSE)

    async def transfer(
        self, client: aiohttp.ClientSession, agent: str, token: str, size: int, slow: bool
    ) -> str | None:
        """One stream: send payload + its SHA-256 + EOF, check the echo; None when it worked.
        Bounded by a progress (idle) timeout, as a real client's would be: WAIT without a
        byte echoed fails the attempt, however long the whole transfer takes on a saturated
        machine (a total deadline failed honest transfers that were still moving)."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(WAIT) as idle:
                ws = await client.ws_connect(
                    f"{self.ws_url}/connect/{agent}?port=22",
                    headers={"Authorization": f"Bearer {token}"},
                    max_msg_size=0,
                )
                try:
                    return await self._exchange(ws, size, slow, started, idle)
                finally:
                    await ws.close()
        except aiohttp.WSServerHandshakeError as exc:
            return f"HTTP {exc.status}"
        except (aiohttp.ClientError, OSError, ConnectionError, TimeoutError) as exc:
            return type(exc).__name__

    async def _exchange(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        size: int,
        slow: bool,
        started: float,
        idle: asyncio.Timeout,
    ) -> str | None:
        loop = asyncio.get_running_loop()
        first = await ws.receive()
        if first.type is not aiohttp.WSMsgType.TEXT or json.loads(first.data) != {
            "event": "connected"
        }:
            return f"not connected: {first.type.name} {first.extra or first.data!r}"
        self.results.setups.append((started, time.monotonic() - started))
        payload = Payload(self.rng, self.block, size)

        async def send() -> None:
            for chunk in payload.chunks():
                await ws.send_bytes(chunk)
            await ws.send_bytes(payload.digest.digest())
            await ws.send_str('{"event":"eof"}')

        sender = asyncio.create_task(send())
        echoed = TrailerCheck()
        received = 0
        try:
            async for message in ws:
                idle.reschedule(loop.time() + WAIT)
                if message.type is aiohttp.WSMsgType.BINARY:
                    echoed.update(message.data)
                    received += len(message.data)
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
        if (
            received != size + DIGEST
            or not echoed.intact()
            or echoed.tail != payload.digest.digest()
        ):
            self.results.corrupted += 1
            return None
        self.results.completed += 1
        return None


async def _work(config: WorkerConfig) -> WorkerResults:
    worker = Worker(config)
    lags = worker.results.loop_lag
    lag = LoopLag(lambda late: lags.append((time.monotonic(), late)))
    lag.start()
    try:
        if config.role == "agents":
            await worker.run_agents()
        else:
            await worker.run_users()
    finally:
        lag.stop()
        await worker.close()
    return worker.results


def load_results(path: Path) -> WorkerResults:
    raw: dict[str, Any] = json.loads(path.read_text())
    return WorkerResults(
        role=raw["role"],
        completed=raw["completed"],
        corrupted=raw["corrupted"],
        failures=[(at, agent, what) for at, agent, what in raw["failures"]],
        setups=[(at, seconds) for at, seconds in raw["setups"]],
        kills=[(at, agent) for at, agent in raw["kills"]],
        gave_up=raw["gave_up"],
        name=raw["name"],
        loop_lag=[(at, late) for at, late in raw["loop_lag"]],
    )


def main() -> None:
    raw = json.loads(Path(sys.argv[1]).read_text())
    config = WorkerConfig(
        **{
            **raw,
            "agents": [tuple(a) for a in raw["agents"]],
            "users": [tuple(u) for u in raw["users"]],
            "workspaces": [tuple(w) for w in raw["workspaces"]],
        }
    )
    raise_fd_limit()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    results = asyncio.run(_work(config))
    Path(config.results).write_text(json.dumps(asdict(results)))


if __name__ == "__main__":
    main()
