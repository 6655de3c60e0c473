"""Hostile and careless peers: corrupt yamux from an agent, a user who stops reading."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import resource
import socket
import struct
import termios
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kuberde.agent.client import run_agent
from kuberde.agent.config import from_env
from kuberde.gateway.app import GATEWAY_KEY, GatewaySettings
from kuberde.gateway.connections import ConnectionLimits, GuardedSite
from kuberde.gateway.limits import StreamLimits, StreamQuotaSettings
from kuberde.gateway.user_session import USER_SESSION_CONFIG
from kuberde.mux import (
    INITIAL_WINDOW,
    Flag,
    FrameType,
    GoAwayCode,
    Preamble,
    Session,
    SessionConfig,
    Stream,
    StreamReset,
    encode_preamble,
)
from kuberde.mux.frame import encode_header
from kuberde.wslink import WebSocketLink
from tests.integration.conftest import (
    WAIT,
    GatewayFactory,
    RunningGateway,
    abort_connection,
    bearer,
    decode_frames,
    echo,
    exchange,
    next_message,
    raw_header,
    read_bytes,
    receive_all,
    send_payload,
    upgrade_headers,
)

# ---- corrupt frames from a connected agent ---------------------------------------------------

Corruption = Callable[[aiohttp.ClientWebSocketResponse], Awaitable[None]]


def _send(data: bytes) -> Corruption:
    async def corrupt(ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.send_bytes(data)

    return corrupt


async def _send_text(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_str("this session speaks yamux, not text")


def _split(data: bytes) -> Corruption:
    """The same bytes cut across two messages: the decoder sees a byte stream, not messages."""

    async def corrupt(ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.send_bytes(data[:5])
        await ws.send_bytes(data[5:])

    return corrupt


#: The receive window the gateway grants each agent stream.
GATEWAY_WINDOW = GatewaySettings().mux.receive_window

CORRUPTIONS: dict[str, Corruption] = {
    "version-1": _send(raw_header(1, FrameType.PING, Flag.SYN, 0, 7)),
    "unknown-type": _send(raw_header(0, 9, 0, 0, 0)),
    "data-claiming-2GiB": _send(raw_header(0, FrameType.DATA, 0, 2, 2**31)),
    "data-claiming-2GiB-split": _split(raw_header(0, FrameType.DATA, 0, 2, 2**31)),
    # Refused from the header alone: the gateway must not wait to buffer the payload.
    "data-header-over-window": _send(raw_header(0, FrameType.DATA, 0, 2, GATEWAY_WINDOW + 1)),
    "ping-on-a-stream": _send(raw_header(0, FrameType.PING, Flag.SYN, 3, 1)),
    "text-message": _send_text,
}


async def _stream_round_trip(user: aiohttp.ClientWebSocketResponse, size: int) -> None:
    payload = os.urandom(size)
    sender = asyncio.create_task(send_payload(user, payload, eof=False))
    try:
        echoed = await read_bytes(user, size)
        await asyncio.wait_for(sender, WAIT)
    finally:
        sender.cancel()
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


async def _frames_until_closed(ws: aiohttp.ClientWebSocketResponse) -> list[bytes]:
    messages: list[bytes] = []

    async def loop() -> None:
        while True:
            message = await ws.receive()
            if message.type is aiohttp.WSMsgType.BINARY:
                messages.append(message.data)
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return
            else:
                raise AssertionError(f"unexpected {message.type.name} from the gateway")

    await asyncio.wait_for(loop(), WAIT)
    return messages


@pytest.mark.parametrize("corruption", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
async def test_corrupt_frames_end_only_that_session_with_a_protocol_error(
    gateway: RunningGateway, corruption: Corruption
) -> None:
    healthy = await gateway.peer("bob", "dev", echo())
    bob = await gateway.connect("dev", gateway.user("bob"))
    await healthy.next_stream()
    await _stream_round_trip(bob, 1024 * 1024)

    rogue = await gateway.agent_socket(gateway.issuer.mint_agent("mallory", "dev"))
    await gateway.wait_agent("user-mallory-dev", lambda a: a["online"])
    # A valid ping first: the session works until the corrupt bytes arrive.
    await rogue.send_bytes(encode_header(FrameType.PING, Flag.SYN, 0, 42))
    await corruption(rogue)
    frames = decode_frames(await _frames_until_closed(rogue))

    assert [(f.type, f.flags, f.length) for f in frames if f.type is FrameType.PING] == [
        (FrameType.PING, Flag.ACK, 42)
    ]
    go_aways = [f.length for f in frames if f.type is FrameType.GO_AWAY]
    assert go_aways == [GoAwayCode.PROTOCOL_ERROR]
    await gateway.wait_agent("user-mallory-dev", lambda a: not a["online"])

    # The other agent never noticed: the same stream, then a new one, keep their integrity.
    await _stream_round_trip(bob, 1024 * 1024)
    received = await exchange(bob, b"")
    assert received.close_code == 1000
    again = await gateway.connect("dev", gateway.user("bob"))
    assert (await exchange(again, b"after the rogue left")).data == b"after the rogue left"
    assert (await gateway.agents())["user-bob-dev"]["online"] is True


async def test_data_beyond_the_window_is_a_protocol_error_and_resets_the_user(
    start_gateway: GatewayFactory,
) -> None:
    """Frames that each fit the window may not, together, overrun a stream's credit."""
    # A small window, so that two frames overrunning it fit in one WebSocket message.
    gateway = await start_gateway(GatewaySettings(mux=SessionConfig(accept_backlog=0)))
    rogue = await gateway.agent_socket(gateway.issuer.mint_agent("mallory", "dev"))
    await gateway.wait_agent("user-mallory-dev", lambda a: a["online"])
    user_task = asyncio.create_task(gateway.connect("dev", gateway.user("mallory")))
    opened = decode_frames([(await asyncio.wait_for(rogue.receive(), WAIT)).data])
    syn = next(f for f in opened if f.flags & Flag.SYN)
    user = await asyncio.wait_for(user_task, WAIT)

    # One message, so the gateway cannot consume (and re-grant) between the two frames.
    half = gateway.settings.mux.receive_window // 2 + 1
    first = encode_header(FrameType.DATA, Flag.ACK, syn.stream_id, half) + bytes(half)
    second = encode_header(FrameType.DATA, Flag.NONE, syn.stream_id, half) + bytes(half)
    await rogue.send_bytes(first + second)

    frames = decode_frames(await _frames_until_closed(rogue))
    assert [f.length for f in frames if f.type is FrameType.GO_AWAY] == [GoAwayCode.PROTOCOL_ERROR]
    received = await receive_all(user)
    assert received.close_code == 4500
    assert received.close_reason
    assert received.data in (b"", bytes(half)), "only the frame within the window may arrive"


# ---- a user who stops reading ----------------------------------------------------------------

BLAST_PORT = 5000
BLAST_SIZE = 50 * 1024 * 1024
CHUNK = 64 * 1024
#: What the test process itself may hold on the user's side: aiohttp's WebSocket reader
#: pauses the socket at 2 x 256 KiB queued, plus the message and read chunk in progress.
USER_CLIENT_BUFFERS = 1024 * 1024
#: Traced Python memory (gateway, workspace peer and user client together) may not grow by
#: more than this while the user is stalled (two windows: granted and in flight, plus slack);
#: relaying the blast would need ~50 MiB.
MEMORY_GROWTH_LIMIT = 2 * GATEWAY_WINDOW + 8 * 1024 * 1024
#: Kernel socket buffers on the slow user's connection (both ends); what they still hold is
#: measured and allowed for, this only keeps it small next to the window.
KERNEL_BUFFER = 64 * 1024


class Blaster:
    """Writes a fixed payload as fast as the stream allows; counts bytes whose drain finished,
    and says whether it is waiting for the gateway's window now."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.drained = 0
        self.waiting = False

    async def __call__(self, preamble: Preamble, rest: bytes, stream: Stream) -> None:
        if preamble.port != BLAST_PORT:
            await echo()(preamble, rest, stream)
            return
        for offset in range(0, len(self.payload), CHUNK):
            stream.write(self.payload[offset : offset + CHUNK])
            self.waiting = True
            await stream.drain()
            self.waiting = False
            self.drained = offset + CHUNK
        stream.close_write()
        await stream.wait_closed()


async def stuck(gateway: RunningGateway, blaster: Blaster, probe: bytes) -> int:
    """Wait until the blast is stuck, and return how much of it got out.

    Stuck: the blaster waits for window, and a round trip through another stream of the same
    agent session (whose frames queue behind any window update for the blast) moves none of
    the blast. Each round trip also shows the session still serves other streams.
    """
    async with asyncio.timeout(60):
        while True:
            before = blaster.drained
            if blaster.waiting:
                other = await gateway.connect("dev", gateway.user("alice"), port=22)
                assert (await exchange(other, probe)).data == probe
                if blaster.waiting and blaster.drained == before:
                    return before
            await asyncio.sleep(0.05)


def _small_receive_buffer(address: tuple[Any, ...]) -> socket.socket:
    """The slow user's socket: a small kernel buffer, so little can hide in the kernel."""
    sock = socket.socket(address[0], address[1], address[2])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, KERNEL_BUFFER)
    return sock


def _queued(sock: socket.socket, request: int) -> int:
    value: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0]
    return value


async def test_a_user_who_stops_reading_holds_back_only_a_window(
    gateway: RunningGateway,
) -> None:
    """Backpressure reaches the workspace: the gateway holds one window, not the whole blast.

    Memory is measured with tracemalloc in this process rather than the RSS of a gateway
    subprocess: traced Python allocations are exact and do not depend on when the allocator
    returns pages to the system, and every buffer the gateway could grow is a Python object.
    The bytes parked in kernel socket buffers are measured with ioctls and allowed for.
    """
    payload = os.urandom(BLAST_SIZE)
    blaster = Blaster(payload)
    user_sockets: list[socket.socket] = []

    def on_connect_socket(path: str, sock: socket.socket) -> None:
        if path.startswith("/connect/"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_BUFFER)
            user_sockets.append(sock)

    gateway.server_socket_hooks.append(on_connect_socket)
    await gateway.peer("alice", "dev", blaster)
    slow_client = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(socket_factory=_small_receive_buffer)
    )

    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        slow = await gateway.connect(
            "dev", gateway.user("alice"), port=BLAST_PORT, kind="tcp", http=slow_client
        )
        # The user reads nothing; the blaster runs into backpressure, while another stream of
        # the same agent session keeps flowing.
        stalled = await stuck(gateway, blaster, payload[:CHUNK])
        growth = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    in_kernel = _queued(user_sockets[0], termios.TIOCOUTQ) + _queued(
        slow.get_extra_info("socket"), termios.FIONREAD
    )

    config = gateway.settings.mux
    allowed = (
        config.receive_window  # granted to the workspace, not yet read by the gateway
        + config.receive_window  # read by the gateway, being sent to the user
        + config.send_buffer_limit
        + CHUNK  # still queued in the workspace's stream
        + in_kernel
        + USER_CLIENT_BUFFERS
    )
    assert INITIAL_WINDOW <= stalled <= allowed, (stalled, allowed, in_kernel)
    assert growth < MEMORY_GROWTH_LIMIT, growth

    hasher = hashlib.sha256()
    size = 0

    async def read_everything() -> None:
        nonlocal size
        while True:
            message = await next_message(slow)
            if isinstance(message, dict):
                assert message == {"event": "eof"}
                return
            hasher.update(message)
            size += len(message)

    await asyncio.wait_for(read_everything(), 60)
    assert size == BLAST_SIZE
    assert hasher.digest() == hashlib.sha256(payload).digest()
    received = await exchange(slow, b"")
    assert received.close_code == 1000
    await slow_client.close()


# ---- an agent that floods pings and never reads ----------------------------------------------

#: Pings sent by the rogue agent: unbounded pong queueing would hold ~60 bytes per ping.
FLOOD_BYTES = 16 * 1024 * 1024
FLOOD_MESSAGE = 64 * 1024
#: Traced memory the flood may add (its own send buffers and one decoded message included).
FLOOD_MEMORY_LIMIT = 4 * 1024 * 1024


async def test_a_ping_flood_is_a_protocol_error_and_leaves_memory_bounded(
    gateway: RunningGateway,
) -> None:
    healthy = await gateway.peer("bob", "dev", echo())
    rogue = await gateway.agent_socket(gateway.issuer.mint_agent("mallory", "dev"))
    await gateway.wait_agent("user-mallory-dev", lambda a: a["online"])
    pings = b"".join(
        encode_header(FrameType.PING, Flag.SYN, 0, n) for n in range(FLOOD_MESSAGE // 12)
    )

    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        with contextlib.suppress(ConnectionError):
            for _ in range(FLOOD_BYTES // len(pings)):
                await asyncio.wait_for(rogue.send_bytes(pings), WAIT)
        await gateway.wait_agent("user-mallory-dev", lambda a: not a["online"])
        growth = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()

    frames = decode_frames(await _frames_until_closed(rogue))
    assert [f.length for f in frames if f.type is FrameType.GO_AWAY] == [GoAwayCode.PROTOCOL_ERROR]
    assert len([f for f in frames if f.type is FrameType.PING]) <= 1, "pongs were not coalesced"
    assert growth < FLOOD_MEMORY_LIMIT, growth
    bob = await gateway.connect("dev", gateway.user("bob"))
    assert (await exchange(bob, b"still served")).data == b"still served"
    assert healthy.session.is_closed is False


# ---- slow and idle strangers -----------------------------------------------------------------

SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: "


async def _raw_connection(
    gateway: RunningGateway, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.wait_for(
        asyncio.open_connection(host, int(port), local_addr=(source, 0)), WAIT
    )


async def _healthz(http: aiohttp.ClientSession, gateway: RunningGateway) -> int:
    async with asyncio.timeout(WAIT), http.get(gateway.url + "/healthz") as resp:
        return resp.status


async def test_slow_header_clients_are_refused_after_the_timeout_while_others_are_served(
    start_gateway: GatewayFactory,
) -> None:
    limits = ConnectionLimits(header_timeout=0.5)
    gateway = await start_gateway(GatewaySettings(connections=limits))
    slow = [await _raw_connection(gateway) for _ in range(5)]

    async def dribble(writer: asyncio.StreamWriter) -> None:
        """A byte at a time, as an attacker holding the connection would send."""
        with contextlib.suppress(ConnectionError):
            while not writer.is_closing():
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.05)

    for _, writer in slow:
        writer.write(SLOW_HEAD)
    dribblers = [asyncio.create_task(dribble(writer)) for _, writer in slow]
    try:
        assert await _healthz(gateway.http, gateway) == 200
        for reader, _ in slow:
            answer = await asyncio.wait_for(reader.read(), WAIT)  # until the gateway closes
            assert answer.startswith(b"HTTP/1.1 408 "), answer
    finally:
        for task in dribblers:
            task.cancel()
        for _, writer in slow:
            writer.close()
    assert await _healthz(gateway.http, gateway) == 200


async def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(
    start_gateway: GatewayFactory,
) -> None:
    """Between requests, a kept-alive connection is not held open for good."""
    limits = ConnectionLimits(keepalive_timeout=0.5)
    gateway = await start_gateway(GatewaySettings(connections=limits))
    reader, writer = await _raw_connection(gateway)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 200 ")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await asyncio.wait_for(reader.readexactly(length), WAIT)
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # the gateway hung up
    finally:
        writer.close()


async def test_the_connection_cap_stays_below_the_open_file_limit(
    gateway: RunningGateway,
) -> None:
    """Derived from the soft limit (raised at start where allowed) minus headroom, so the
    gateway refuses cleanly before `accept` itself fails."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == hard or hard == resource.RLIM_INFINITY
    (site,) = gateway.runner.sites
    assert isinstance(site, GuardedSite)
    assert site.counts.max_connections == soft - ConnectionLimits().fd_headroom


async def test_unauthenticated_connections_are_capped_per_address_and_in_total(
    start_gateway: GatewayFactory,
) -> None:
    limits = ConnectionLimits(
        header_timeout=WAIT * 6, max_unauthenticated_per_address=3, max_connections=8
    )
    gateway = await start_gateway(GatewaySettings(connections=limits))
    other = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        # Authenticated connections from the same address do not count against its cap.
        agents = [
            await asyncio.wait_for(
                other.ws_connect(
                    f"{gateway.ws_url}/ws",
                    headers={"Authorization": f"Bearer {gateway.issuer.mint_agent('eve', n)}"},
                ),
                WAIT,
            )
            for n in ("one", "two")
        ]
        await gateway.wait_agent("user-eve-two", lambda a: a["online"])
        idle = [await _raw_connection(gateway, "127.0.0.2") for _ in range(3)]
        reader, writer = await _raw_connection(gateway, "127.0.0.2")
        idle.append((reader, writer))
        refused = await asyncio.wait_for(reader.read(), WAIT)
        assert refused.startswith(b"HTTP/1.1 429 "), refused
        assert b"unauthenticated connections from your address" in refused

        # Another address is still served, up to the total (2 agents + 3 idle + 2 here).
        assert await _healthz(gateway.http, gateway) == 200
        idle += [await _raw_connection(gateway) for _ in range(2)]
        reader, writer = await _raw_connection(gateway)
        idle.append((reader, writer))
        full = await asyncio.wait_for(reader.read(), WAIT)
        assert full.startswith(b"HTTP/1.1 503 "), full
        for ws in agents:
            assert not ws.closed
            await ws.close()
    finally:
        for _, writer in idle:
            writer.close()
        await other.close()


# ---- a user past their stream limit ----------------------------------------------------------


async def test_the_stream_cap_gives_429_with_a_reason_and_spares_other_users(
    start_gateway: GatewayFactory,
) -> None:
    loose = StreamQuotaSettings().per_agent
    settings = GatewaySettings(
        streams=StreamQuotaSettings(
            # A rate this test cannot reach: the bucket never refills while it runs.
            per_user=StreamLimits(2, 2**40, streams_per_second=1e-6, burst=1000),
            per_agent=loose,
        )
    )
    gateway = await start_gateway(settings)
    await gateway.peer("mallory", "dev", echo())
    await gateway.peer("bob", "dev", echo())
    mallory = gateway.user("mallory")
    held = [await gateway.connect("dev", mallory) for _ in range(2)]

    status, body = await gateway.refused("/connect/dev?port=22", upgrade_headers(mallory))
    assert status == 429
    assert json.loads(body) == {
        "error": "stream limit: 2 concurrent streams per user; close some first",
        "reason": "limited",
    }
    bob = await gateway.connect("dev", gateway.user("bob"))
    assert (await exchange(bob, b"unaffected")).data == b"unaffected"
    for ws in held:
        assert (await exchange(ws, b"still open")).data == b"still open"

    async def admitted_again() -> aiohttp.ClientWebSocketResponse:
        while True:
            with contextlib.suppress(aiohttp.WSServerHandshakeError):
                return await gateway.connect("dev", mallory)
            await asyncio.sleep(0.02)

    again = await asyncio.wait_for(admitted_again(), WAIT)
    assert (await exchange(again, b"a slot came free")).data == b"a slot came free"


MIB = 1024 * 1024


async def test_a_user_whose_streams_stop_reading_is_cut_with_4429_while_others_proceed(
    start_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Buffered bytes are counted as the gateway holds them: two stalled streams of alice go
    over her 6 MiB, the one holding the most is closed with 4429 and the reason, her other
    stream and bob's transfer through the same workspace go on, and what is held for alice
    drops back within her cap."""
    caplog.set_level(logging.INFO, "kuberde.gateway.app")
    settings = GatewaySettings(
        streams=StreamQuotaSettings(
            per_user=StreamLimits(16, 6 * MIB, streams_per_second=1e6, burst=100)
        )
    )
    gateway = await start_gateway(settings)
    quota = gateway.app[GATEWAY_KEY].quota
    gateway.server_socket_hooks.append(
        lambda path, sock: sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_BUFFER)
    )
    blaster = Blaster(os.urandom(BLAST_SIZE))
    await gateway.peer("alice", "dev", blaster)
    await gateway.peer("bob", "dev", echo())
    slow_client = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(socket_factory=_small_receive_buffer)
    )
    alice = gateway.user("alice")
    try:

        async def holding(at_least: int) -> None:
            while True:
                if quota.usage("user:alice")[1] >= at_least:
                    return
                await asyncio.sleep(0.02)

        first = await gateway.connect("dev", alice, port=BLAST_PORT, kind="tcp", http=slow_client)
        await asyncio.wait_for(holding(GATEWAY_WINDOW // 2), WAIT)  # stalled: most of a window
        second = await gateway.connect("dev", alice, port=BLAST_PORT, kind="tcp", http=slow_client)

        async def logged_cut() -> None:
            while True:
                if any("cut a connection" in r.getMessage() for r in caplog.records):
                    return
                await asyncio.sleep(0.02)

        await asyncio.wait_for(logged_cut(), WAIT)  # before alice reads anything
        # Either may hold the most when the cap is crossed; the other is not touched.
        readers = {asyncio.create_task(receive_all(ws, 4 * WAIT)): ws for ws in (first, second)}
        done, pending = await asyncio.wait(readers, return_when=asyncio.FIRST_COMPLETED)
        cut = done.pop().result()
        for task in pending:
            task.cancel()
        survivor = readers[pending.pop()]
        assert cut.close_code == 4429
        reason = "buffer limit: 6 MiB held for slow readers per user; read or close other"
        assert cut.close_reason.startswith(reason), cut.close_reason
        assert cut.events[-1]["message"].startswith(reason)
        assert len(cut.data) < BLAST_SIZE

        bob = await gateway.connect("dev", gateway.user("bob"))
        await _stream_round_trip(bob, 8 * MIB)
        assert not survivor.closed
        assert quota.usage("user:alice")[1] <= 6 * MIB
        assert quota.usage("user:bob") == (1, 0)
    finally:
        await slow_client.close()


async def _user_session(
    gateway: RunningGateway, token: str
) -> tuple[aiohttp.ClientWebSocketResponse, Session, asyncio.Task[None]]:
    ws = await asyncio.wait_for(
        gateway.http.ws_connect(f"{gateway.ws_url}/session/dev", headers=bearer(token)), WAIT
    )
    session = Session(WebSocketLink(ws), is_client=True, config=USER_SESSION_CONFIG, name="user")
    return ws, session, asyncio.create_task(session.run())


async def _echoed(stream: Stream, payload: bytes) -> bytes:
    stream.write(payload)
    received = b""
    while len(received) < len(payload):
        received += await asyncio.wait_for(stream.read(), WAIT)
    return received


async def test_a_session_stream_past_the_cap_is_refused_with_the_reason_and_the_rest_go_on(
    start_gateway: GatewayFactory,
) -> None:
    """On /session, a stream over the concurrent cap is refused at once (not paced) with a
    reason the CLI prints; the session, its other streams and other users carry on."""
    settings = GatewaySettings(
        streams=StreamQuotaSettings(
            per_user=StreamLimits(2, 2**40, streams_per_second=1e6, burst=100)
        )
    )
    gateway = await start_gateway(settings)
    await gateway.peer("mallory", "dev", echo())
    await gateway.peer("bob", "dev", echo())
    preamble = encode_preamble(Preamble(22, "port-forward", ""))
    _, session, running = await _user_session(gateway, gateway.user("mallory"))
    try:
        held = [session.open_stream(preamble) for _ in range(2)]
        for stream in held:
            assert await _echoed(stream, b"admitted") == b"admitted"
        refused = session.open_stream(preamble)
        with pytest.raises(StreamReset) as reset:
            await asyncio.wait_for(refused.read(), WAIT)
        assert reset.value.reason == "stream limit: 2 concurrent streams per user; close some first"

        _, bob_session, bob_running = await _user_session(gateway, gateway.user("bob"))
        try:
            assert await _echoed(bob_session.open_stream(preamble), b"bob") == b"bob"
        finally:
            bob_running.cancel()
        for stream in held:
            assert await _echoed(stream, b"still open") == b"still open"
        held[0].reset("done with it")

        async def admitted_again() -> Stream:
            while True:
                stream = session.open_stream(preamble)
                with contextlib.suppress(StreamReset):
                    await _echoed(stream, b"again")
                    return stream

        await asyncio.wait_for(admitted_again(), WAIT)
        assert not session.is_closed
    finally:
        running.cancel()


async def test_a_session_stream_whose_reader_stalls_is_cut_with_the_reason_the_rest_go_on(
    start_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """On /session, what the gateway holds for streams the user stopped reading counts
    against the cap: the stream holding the most is reset with the reason, the other stream
    and the session stay, and bob's transfer through the same workspace goes on."""
    caplog.set_level(logging.INFO, "kuberde.gateway.user_session")
    settings = GatewaySettings(
        streams=StreamQuotaSettings(
            per_user=StreamLimits(16, 6 * MIB, streams_per_second=1e6, burst=100)
        )
    )
    gateway = await start_gateway(settings)
    quota = gateway.app[GATEWAY_KEY].quota
    await gateway.peer("alice", "dev", Blaster(os.urandom(BLAST_SIZE)))
    await gateway.peer("bob", "dev", echo())
    _, session, running = await _user_session(gateway, gateway.user("alice"))
    try:
        # Nobody reads these: the user side's window fills, then the gateway's buffers.
        blasts = [
            session.open_stream(encode_preamble(Preamble(BLAST_PORT, "tcp", ""))) for _ in range(2)
        ]

        async def cut() -> Stream:
            while True:
                reset = [stream for stream in blasts if stream.error is not None]
                if reset:
                    return reset[0]
                await asyncio.sleep(0.02)

        victim = await asyncio.wait_for(cut(), WAIT)
        assert victim.error is not None
        assert victim.error.reason.startswith(
            "buffer limit: 6 MiB held for slow readers per user; read or close other"
        ), victim.error.reason
        assert any("cut a stream of alice" in r.getMessage() for r in caplog.records)
        survivor = next(stream for stream in blasts if stream is not victim)
        assert survivor.error is None and not session.is_closed

        bob = await gateway.connect("dev", gateway.user("bob"))
        await _stream_round_trip(bob, 8 * MIB)
        assert survivor.error is None
        assert quota.usage("user:alice")[1] <= 6 * MIB
    finally:
        running.cancel()


# ---- shutdown --------------------------------------------------------------------------------


async def test_shutdown_ends_replaced_sessions_too_instead_of_leaving_them_running(
    gateway: RunningGateway,
) -> None:
    """A replaced session keeps serving its streams for a grace period, in a background
    task; shutdown cancels that task and closes every session together."""
    old = await gateway.peer("alice", "dev", echo())
    held = await gateway.connect("dev", gateway.user("alice"))
    await old.next_stream()
    new = await gateway.peer("alice", "dev", echo())
    assert gateway.settings.replaced_session_grace > WAIT
    assert not old.session.is_closed

    await asyncio.wait_for(gateway.app.shutdown(), WAIT)

    await asyncio.wait_for(old.session.wait_closed(), WAIT)
    await asyncio.wait_for(new.session.wait_closed(), WAIT)
    received = await receive_all(held)
    assert received.close_code is not None


# ---- peers that vanish -----------------------------------------------------------------------


async def test_an_abrupt_user_disconnect_is_one_log_line_without_a_traceback(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    peer = await gateway.peer("alice", "dev", echo())
    for _ in range(3):
        user = await gateway.connect("dev", gateway.user("alice"))
        served = await peer.next_stream()
        await user.send_bytes(os.urandom(256 * 1024))
        abort_connection(user)
        await asyncio.wait_for(served.stream.wait_closed(), WAIT)
    rogue = await gateway.agent_socket(gateway.issuer.mint_agent("bob", "dev"))
    await gateway.wait_agent("user-bob-dev", lambda a: a["online"])
    abort_connection(rogue)
    await gateway.wait_agent("user-bob-dev", lambda a: not a["online"])

    tracebacks = [r for r in caplog.records if r.exc_info or r.stack_info]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]


# ---- Unix sockets (the local runtime's per-owner agent sockets) ------------------------------


async def test_each_unix_socket_has_its_own_share_of_unauthenticated_connections(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """Unix peers have no address; each socket is a site of its own with its own counts, so
    one owner's workload holding its socket's share locks no other owner's agent out."""
    limits = ConnectionLimits(header_timeout=WAIT * 6, max_unauthenticated_per_address=2)
    gateway = await start_gateway(GatewaySettings(connections=limits))
    paths = [tmp_path / "alice.sock", tmp_path / "bob.sock"]
    sites = []
    for path in paths:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.listen()
        site = GuardedSite(gateway.runner, sock, limits=limits)
        await site.start()
        sites.append(site)
    idle: list[asyncio.StreamWriter] = []
    try:
        for _ in range(2):
            idle.append((await asyncio.wait_for(asyncio.open_unix_connection(paths[0]), WAIT))[1])
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(paths[0]), WAIT)
        idle.append(writer)
        refused = await asyncio.wait_for(reader.read(), WAIT)
        assert refused.startswith(b"HTTP/1.1 429 "), refused

        # Bob's socket is served, and an agent dials in over it (SERVER_URL=ws+unix:...).
        stop = asyncio.Event()
        config = from_env(
            {
                "SERVER_URL": f"ws+unix:{paths[1]}",
                "AGENT_TOKEN": gateway.issuer.mint_agent("bob", "dev"),
                "AGENT_ID": "user-bob-dev",
            }
        )
        agent = asyncio.create_task(run_agent(config, stop=stop))
        try:
            await gateway.wait_agent("user-bob-dev", lambda a: a["online"])
        finally:
            stop.set()
            assert await asyncio.wait_for(agent, WAIT) == 0
    finally:
        for writer in idle:
            writer.close()
        for site in sites:
            await site.stop()
