"""The real agent (`run_agent`) against a small aiohttp gateway stand-in on 127.0.0.1.

The stand-in plays the gateway's side of the protocol with the real mux: it accepts `/ws`,
runs `Session(is_client=False)` over `WebSocketLink` and opens streams whose first bytes are
a preamble. Targets are real TCP servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import struct
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import jwt
import pytest
import uvloop
from aiohttp import web

from kuberde.agent.bridge import serve_stream
from kuberde.agent.client import EXIT_CONFIG, EXIT_OK, main, run_agent
from kuberde.agent.config import AgentConfig, from_env
from kuberde.backoff import Backoff
from kuberde.mux import Preamble, Session, Stream, StreamReset, encode_preamble
from kuberde.testing.processes import reap
from kuberde.wslink import WebSocketLink
from tests.integration.conftest import RunningGateway, exchange, receive_all
from tests.integration.kube import eventually
from tests.unit.memory_link import link_pair

AGENT = "user-alice-dev"
KEY = "test-signing-key-long-enough-for-hs256!"
TOKEN = jwt.encode({"sub": AGENT, "aud": "kuberde-agent"}, KEY, algorithm="HS256")
STEP = 10.0

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


class FakeGateway:
    """Accepts agents on /ws; tests take each new gateway-side session from `sessions`."""

    def __init__(self) -> None:
        self.sessions: asyncio.Queue[Session] = asyncio.Queue()
        self.reject: tuple[int, dict[str, str]] | None = None
        self.authorizations: list[str] = []
        self._live: set[Session] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/ws", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        for session in list(self._live):
            await session.close("gateway stopping", code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def next_session(self) -> Session:
        return await asyncio.wait_for(self.sessions.get(), STEP)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.authorizations.append(request.headers.get("Authorization", ""))
        if self.reject is not None:
            status, body = self.reject
            return web.json_response(body, status=status)
        ws = web.WebSocketResponse(compress=False, max_msg_size=0)
        await ws.prepare(request)
        session = Session(WebSocketLink(ws), is_client=False, name="gateway")
        self.sessions.put_nowait(session)
        self._live.add(session)
        try:
            await session.run()
        finally:
            self._live.discard(session)
        return ws


@pytest.fixture
async def fake() -> AsyncIterator[FakeGateway]:
    fake = FakeGateway()
    await fake.start()
    yield fake
    await fake.stop()


@contextlib.asynccontextmanager
async def tcp_server(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, then close: also checks that half-close reaches the target."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async with tcp_server(echo) as port:
        yield port


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def agent_config(fake: FakeGateway, local_port: int, **extra: str) -> AgentConfig:
    env = {
        "SERVER_URL": fake.url,
        "AGENT_TOKEN": TOKEN,
        "AGENT_ID": AGENT,
        "LOCAL_TARGET": f"127.0.0.1:{local_port}",
        "SHUTDOWN_GRACE": "5",
        "LOCAL_CONNECT_PATIENCE": "0",
    }
    return from_env({**env, **extra})


def fast_backoff() -> Backoff:
    return Backoff(base=0.05, cap=0.2, rng=random.Random(0))


@contextlib.asynccontextmanager
async def running_agent(config: AgentConfig) -> AsyncIterator[asyncio.Task[int]]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_agent(config, stop=stop, backoff=fast_backoff()))
    try:
        yield task
    finally:
        stop.set()
        assert await asyncio.wait_for(task, STEP) == EXIT_OK


def open_stream(session: Session, port: int | None, user_bytes: bytes = b"") -> Stream:
    preamble = encode_preamble(Preamble(port=port, kind="tcp", user="alice"))
    return session.open_stream(preamble + user_bytes)


async def read_exactly(stream: Stream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await asyncio.wait_for(stream.read(size - len(data)), STEP)
        assert chunk, f"stream ended after {len(data)} of {size} bytes"
        data += chunk
    return data


async def read_to_end(stream: Stream) -> bytes:
    chunks = []
    while chunk := await asyncio.wait_for(stream.read(), STEP):
        chunks.append(chunk)
    return b"".join(chunks)


async def reset_reason(stream: Stream) -> str:
    with pytest.raises(StreamReset) as caught:
        await read_to_end(stream)
    return caught.value.reason


async def test_echo_with_the_preamble_stripped(fake: FakeGateway, echo_port: int) -> None:
    async with running_agent(agent_config(fake, echo_port)):
        session = await fake.next_session()
        stream = open_stream(session, None, b"early ")
        stream.write(b"bytes")
        assert await read_exactly(stream, 11) == b"early bytes"
        stream.close_write()
        assert await read_to_end(stream) == b""
        await asyncio.wait_for(stream.wait_closed(), STEP)


async def test_server_first_banner_arrives_before_the_user_sends(fake: FakeGateway) -> None:
    banner = b"SSH-2.0-OpenSSH_9.6 kuberde-test\r\n"

    async def banner_then_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(banner)
        await writer.drain()
        await echo(reader, writer)

    async with (
        tcp_server(banner_then_echo) as port,
        running_agent(agent_config(fake, port)),
    ):
        session = await fake.next_session()
        stream = open_stream(session, port)
        assert await read_exactly(stream, len(banner)) == banner
        stream.write(b"client hello")
        assert await read_exactly(stream, 12) == b"client hello"
        stream.close_write()
        assert await read_to_end(stream) == b""


async def test_half_close_in_both_directions(fake: FakeGateway) -> None:
    target_saw_eof = asyncio.Event()

    async def reply_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = await reader.read()
        target_saw_eof.set()
        writer.write(b"got %d bytes" % len(received))
        await writer.drain()
        writer.close()

    async with (
        tcp_server(reply_after_eof) as port,
        running_agent(agent_config(fake, port)),
    ):
        session = await fake.next_session()
        stream = open_stream(session, None, b"hello")
        stream.write(b", world")
        stream.close_write()
        await asyncio.wait_for(target_saw_eof.wait(), STEP)
        assert await read_to_end(stream) == b"got 12 bytes"
        await asyncio.wait_for(stream.wait_closed(), STEP)
        assert stream.error is None


async def test_client_closes_before_the_stream_is_open(fake: FakeGateway, echo_port: int) -> None:
    async with running_agent(agent_config(fake, echo_port)):
        session = await fake.next_session()
        stream = open_stream(session, None, b"only this")
        stream.close_write()
        assert await read_to_end(stream) == b"only this"


async def test_disallowed_port_is_reset_with_the_reason(fake: FakeGateway, echo_port: int) -> None:
    async with running_agent(agent_config(fake, echo_port, ALLOWED_PORTS="8888")):
        session = await fake.next_session()
        stream = open_stream(session, 5432)
        assert await reset_reason(stream) == "port 5432 is not allowed for this agent"


async def test_allowed_port_is_served(fake: FakeGateway, echo_port: int) -> None:
    async with (
        tcp_server(echo) as other,
        running_agent(agent_config(fake, echo_port, ALLOWED_PORTS=f"1 {other}")),
    ):
        session = await fake.next_session()
        stream = open_stream(session, other, b"to the other port")
        stream.close_write()
        assert await read_to_end(stream) == b"to the other port"


async def test_refused_port_is_reset_with_the_reason(fake: FakeGateway, echo_port: int) -> None:
    closed = free_port()
    async with running_agent(agent_config(fake, echo_port, ALLOWED_PORTS=str(closed))):
        session = await fake.next_session()
        stream = open_stream(session, closed)
        reason = await reset_reason(stream)
        assert reason == f"connection refused by 127.0.0.1:{closed} in the workspace"


async def test_a_target_that_starts_listening_late_is_reached(
    fake: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """After a wake the agent may be online before the workload listens."""
    caplog.set_level(logging.DEBUG, "kuberde.agent")
    late = free_port()
    config = agent_config(fake, late, LOCAL_CONNECT_PATIENCE="20")
    async with running_agent(config):
        session = await fake.next_session()
        stream = open_stream(session, None, b"hello")
        stream.close_write()
        refused = f"127.0.0.1:{late} refuses"
        await eventually(lambda: refused in caplog.text, "the agent refused at least once", 15)
        server = await asyncio.start_server(echo, "127.0.0.1", late)
        try:
            assert await asyncio.wait_for(read_to_end(stream), 15) == b"hello"
        finally:
            server.close()


async def test_garbage_instead_of_a_preamble_is_reset(fake: FakeGateway, echo_port: int) -> None:
    async with running_agent(agent_config(fake, echo_port)):
        session = await fake.next_session()
        stream = session.open_stream(b"\x00\x05hello")
        assert (await reset_reason(stream)).startswith("bad preamble:")


async def test_target_crash_resets_the_stream(fake: FakeGateway) -> None:
    async def crash(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        linger_zero = struct.pack("ii", 1, 0)  # close with RST, as a crashing process would
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_zero)
        writer.transport.abort()

    async with tcp_server(crash) as port, running_agent(agent_config(fake, port)):
        session = await fake.next_session()
        stream = open_stream(session, None, b"boom")
        reason = await reset_reason(stream)
        assert reason.startswith(f"connection to 127.0.0.1:{port} in the workspace")


async def round_trip(stream: Stream, payload: bytes) -> bytes:
    """Send `payload` then FIN while reading everything the echo target sends back."""

    async def send() -> None:
        for offset in range(0, len(payload), 50_000):
            stream.write(payload[offset : offset + 50_000])
            await stream.drain()
        stream.close_write()

    sender = asyncio.create_task(send())
    try:
        return await read_to_end(stream)
    finally:
        await asyncio.wait_for(sender, STEP)


async def test_one_megabyte_both_directions(fake: FakeGateway, echo_port: int) -> None:
    payload = random.Random(5).randbytes(1 << 20)
    async with running_agent(agent_config(fake, echo_port)):
        session = await fake.next_session()
        streams = [open_stream(session, None) for _ in range(3)]
        received = await asyncio.gather(*(round_trip(stream, payload) for stream in streams))
        assert all(data == payload for data in received)


async def test_reconnects_after_the_gateway_drops_the_session(
    fake: FakeGateway, echo_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "kuberde.agent")
    async with running_agent(agent_config(fake, echo_port)):
        first = await fake.next_session()
        await first.close("gateway restart")
        second = await fake.next_session()
        stream = open_stream(second, None, b"again")
        stream.close_write()
        assert await read_to_end(stream) == b"again"
    assert "disconnected:" in caplog.text
    assert caplog.text.count(f"connected to {fake.url} as {AGENT}") == 2


async def test_reconnects_after_the_gateway_goes_away(fake: FakeGateway, echo_port: int) -> None:
    async with running_agent(agent_config(fake, echo_port)):
        first = await fake.next_session()
        first.go_away()
        second = await fake.next_session()
        await asyncio.wait_for(first.wait_closed(), STEP)
        stream = open_stream(second, None, b"new session")
        stream.close_write()
        assert await read_to_end(stream) == b"new session"


async def test_unreachable_gateway_is_logged_once_then_connected(
    echo_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "kuberde.agent")
    fake = FakeGateway()
    fake.port = free_port()
    async with running_agent(agent_config(fake, echo_port)):
        for _ in range(200):
            attempts = [r for r in caplog.records if "gateway unreachable" in r.getMessage()]
            if len(attempts) >= 3:
                break
            await asyncio.sleep(0.05)
        assert len(attempts) >= 3
        assert [r.levelno for r in attempts].count(logging.WARNING) == 1
        assert "will keep retrying" in attempts[0].getMessage()
        await fake.start(fake.port)
        try:
            await fake.next_session()
        finally:
            await fake.stop()
    assert f"connected to {fake.url} as {AGENT}" in caplog.text


async def test_rejected_credential_keeps_retrying_and_is_never_logged(
    fake: FakeGateway, echo_port: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    expired = jwt.encode({"sub": AGENT, "v": "old"}, KEY, algorithm="HS256")
    token_file = tmp_path / "token"
    token_file.write_text(expired)
    fake.reject = (401, {"error": "the credential has expired", "reason": "expired"})
    config = agent_config(fake, echo_port, AGENT_TOKEN="", AGENT_TOKEN_FILE=str(token_file))
    async with running_agent(config):
        for _ in range(200):
            if len(fake.authorizations) >= 3:
                break
            await asyncio.sleep(0.05)
        assert fake.authorizations[:3] == [f"Bearer {expired}"] * 3
        rejected = [r for r in caplog.records if "credential rejected" in r.getMessage()]
        assert [r.levelno for r in rejected].count(logging.ERROR) == 1
        assert "credential rejected (401): expired: the credential has expired" in caplog.text
        token_file.write_text(TOKEN)
        fake.reject = None
        await fake.next_session()
    assert fake.authorizations[-1] == f"Bearer {TOKEN}"
    assert expired not in caplog.text
    assert TOKEN not in caplog.text
    assert KEY not in caplog.text


async def test_agent_id_mismatch_exits_2(
    fake: FakeGateway, echo_port: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    config = agent_config(fake, echo_port, AGENT_TOKEN="", AGENT_TOKEN_FILE=str(token_file))
    token_file.write_text(jwt.encode({"sub": "user-bob-dev"}, KEY, algorithm="HS256"))
    code = await asyncio.wait_for(run_agent(config, stop=asyncio.Event()), STEP)
    assert code == EXIT_CONFIG
    assert "AGENT_ID is 'user-alice-dev'" in caplog.text
    assert "'user-bob-dev'" in caplog.text
    assert fake.authorizations == []


def test_main_exits_2_on_a_bad_environment(caplog: pytest.LogCaptureFixture) -> None:
    environ = {"SERVER_URL": "ws://127.0.0.1:1/ws", "AGENT_TOKEN": TOKEN, "AGENT_ID": "user-bob-x"}
    assert main(environ) == EXIT_CONFIG
    assert "AGENT_ID is 'user-bob-x'" in caplog.text
    assert TOKEN not in caplog.text


async def test_stop_goes_away_and_lets_open_streams_finish(
    fake: FakeGateway, echo_port: int
) -> None:
    stop = asyncio.Event()
    config = agent_config(fake, echo_port, SHUTDOWN_GRACE="60")
    task = asyncio.create_task(run_agent(config, stop=stop, backoff=fast_backoff()))
    session = await fake.next_session()
    stream = open_stream(session, None, b"before")
    assert await read_exactly(stream, 6) == b"before"
    stop.set()
    for _ in range(200):
        if session.peer_going_away:
            break
        await asyncio.sleep(0.05)
    assert session.peer_going_away
    stream.write(b" and after")
    assert await read_exactly(stream, 10) == b" and after"
    assert not task.done()
    stream.close_write()
    assert await read_to_end(stream) == b""
    assert await asyncio.wait_for(task, STEP) == EXIT_OK


async def test_no_preamble_times_out(echo_port: int) -> None:
    gateway_link, agent_link = link_pair()
    gateway_session = Session(gateway_link, is_client=False)
    agent_session = Session(agent_link, is_client=True)
    runners = [asyncio.create_task(s.run()) for s in (gateway_session, agent_session)]
    config = AgentConfig(server_url="ws://unused/ws", local_host="127.0.0.1", local_port=echo_port)
    try:
        stream = gateway_session.open_stream(b"\x00")
        accepted = await asyncio.wait_for(agent_session.accept(), STEP)
        serving = asyncio.create_task(serve_stream(accepted, config, preamble_timeout=0.2))
        assert await reset_reason(stream) == "no preamble"
        await asyncio.wait_for(serving, STEP)
    finally:
        for session in (gateway_session, agent_session):
            await session.close()
        await asyncio.gather(*runners)


def test_bridge_on_uvloop() -> None:
    """The agent runs on uvloop in production, whose transports differ in the details."""
    payload = random.Random(6).randbytes(1 << 20)

    async def scenario() -> None:
        fake = FakeGateway()
        await fake.start()
        closed = free_port()
        try:
            async with (
                tcp_server(echo) as port,
                running_agent(agent_config(fake, port, ALLOWED_PORTS=str(closed))),
            ):
                session = await fake.next_session()
                assert await round_trip(open_stream(session, None), payload) == payload
                reason = await reset_reason(open_stream(session, closed))
                assert reason == f"connection refused by 127.0.0.1:{closed} in the workspace"
        finally:
            await fake.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 60))


async def test_through_the_real_gateway(gateway: RunningGateway, echo_port: int) -> None:
    payload = random.Random(7).randbytes(300_000)
    config = from_env(
        {
            "SERVER_URL": gateway.url,
            "AGENT_TOKEN": gateway.issuer.mint_agent("alice", "dev"),
            "AGENT_ID": AGENT,
            "LOCAL_TARGET": f"127.0.0.1:{echo_port}",
        }
    )
    async with running_agent(config):
        await gateway.wait_agent(AGENT, lambda agent: bool(agent["online"]))
        ws = await gateway.connect("dev", gateway.user("alice"), port=echo_port, kind="tcp")
        received = await exchange(ws, payload)
        assert received.data == payload
        assert received.close_code == 1000
        ws = await gateway.connect(AGENT, gateway.user("alice"), port=5432, kind="tcp")
        refused = await receive_all(ws)
        assert refused.close_code == 4500
        assert refused.close_reason == "port 5432 is not allowed for this agent"


async def test_real_gateway_refusal_is_logged_without_the_token(
    gateway: RunningGateway, echo_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    user_token = gateway.user("alice")
    config = from_env(
        {
            "SERVER_URL": gateway.url,
            "AGENT_TOKEN": user_token,
            "LOCAL_TARGET": f"127.0.0.1:{echo_port}",
        }
    )
    async with running_agent(config):
        for _ in range(200):
            if "credential rejected (401): " in caplog.text:
                break
            await asyncio.sleep(0.05)
    rejected = [r.getMessage() for r in caplog.records if "credential rejected" in r.getMessage()]
    assert rejected, caplog.text
    assert rejected[0].startswith("credential rejected (401): wrong_kind: ")
    assert user_token not in caplog.text


async def test_sigterm_goes_away_and_exits_0(fake: FakeGateway, echo_port: int) -> None:
    environ = {
        **os.environ,
        "SERVER_URL": fake.url,
        "AGENT_TOKEN": TOKEN,
        "LOCAL_TARGET": f"127.0.0.1:{echo_port}",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from kuberde.agent.client import main; raise SystemExit(main())",
        env=environ,
    )
    try:
        session = await fake.next_session()
        stream = open_stream(session, None, b"still served")
        assert await read_exactly(stream, 12) == b"still served"
        process.send_signal(signal.SIGTERM)
        for _ in range(200):
            if session.peer_going_away:
                break
            await asyncio.sleep(0.05)
        assert session.peer_going_away
        stream.close_write()
        assert await read_to_end(stream) == b""
        assert await asyncio.wait_for(process.wait(), STEP) == EXIT_OK
    finally:
        await reap(process)
