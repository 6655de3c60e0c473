"""A real gateway on 127.0.0.1 and real peers for it, built from the project's own mux code.

`WorkspacePeer` plays the agent's part on `/ws` (a yamux client session serving each stream
the gateway opens); users are plain aiohttp WebSocket clients of `/connect`. Nothing here
mocks the gateway: every byte crosses a loopback socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from kuberde.auth import LocalTokenVerifier, SigningKey, TokenIssuer, load_or_create_signing_key
from kuberde.gateway.app import GatewaySettings, create_app
from kuberde.gateway.server import ListenAddress, bind_socket, socket_url, start_site
from kuberde.mux import Preamble, PreambleReader, Session, SessionConfig, Stream
from kuberde.mux.frame import HEADER_SIZE, Frame, FrameDecoder
from kuberde.wslink import WebSocketLink

if TYPE_CHECKING:  # kube.py imports this module, so the fixtures import it when they run
    from tests.integration.kube import Kube

#: Upper bound for any single wait in these tests; a healthy run needs a small fraction.
WAIT = 10.0

Handler = Callable[[Preamble, bytes, Stream], Awaitable[None]]
ServerSocketHook = Callable[[str, socket.socket], None]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upgrade_headers(token: str | None = None) -> dict[str, str]:
    """The headers of a WebSocket handshake, so refusals are tested on a real upgrade request."""
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    if token is not None:
        headers.update(bearer(token))
    return headers


# ---- workspace-side stream handlers ----------------------------------------------------------


def echo(banner: bytes = b"") -> Handler:
    """Write `banner` at once (server-first), echo until the user's EOF, then half-close."""

    async def handle(preamble: Preamble, rest: bytes, stream: Stream) -> None:
        if banner:
            stream.write(banner)
        if rest:
            stream.write(rest)
        while data := await stream.read():
            stream.write(data)
            await stream.drain()
        stream.close_write()
        await stream.wait_closed()

    return handle


def reset_with(reason: str) -> Handler:
    async def handle(preamble: Preamble, rest: bytes, stream: Stream) -> None:
        stream.reset(reason)

    return handle


# ---- the workspace peer ----------------------------------------------------------------------


@dataclass
class ServedStream:
    preamble: Preamble
    stream: Stream


class WorkspacePeer:
    """An agent's side of `/ws`: one client session; each accepted stream goes to `handler`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: Session, handler: Handler):
        self.ws = ws
        self.session = session
        self.handler = handler
        #: Streams whose preamble arrived, in order; `opened` yields them as they come.
        self.streams: list[ServedStream] = []
        self.opened: asyncio.Queue[ServedStream] = asyncio.Queue()
        self.accepted = 0
        #: Why streams ended badly: StreamReset (the user or the gateway went away) or a
        #: missing/invalid preamble.
        self.handler_errors: list[BaseException] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._run = asyncio.create_task(session.run(), name=f"peer-run-{session.name}")
        self._accept = asyncio.create_task(self._serve(), name=f"peer-accept-{session.name}")

    async def _serve(self) -> None:
        while True:
            stream = await self.session.accept()
            self.accepted += 1
            task = asyncio.create_task(self._handle(stream))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, stream: Stream) -> None:
        try:
            reader = PreambleReader()
            parsed: tuple[Preamble, bytes] | None = None
            while parsed is None:
                chunk = await stream.read()
                if not chunk:
                    raise AssertionError(f"stream {stream.id} ended before its preamble")
                parsed = reader.feed(chunk)
            preamble, rest = parsed
            served = ServedStream(preamble, stream)
            self.streams.append(served)
            self.opened.put_nowait(served)
            await self.handler(preamble, rest, stream)
        except (ConnectionError, AssertionError, ValueError) as exc:
            self.handler_errors.append(exc)

    async def next_stream(self, within: float = WAIT) -> ServedStream:
        return await asyncio.wait_for(self.opened.get(), within)

    def abort(self) -> None:
        """Drop the TCP connection with no WebSocket close and no go-away (a vanished pod)."""
        abort_connection(self.ws)

    async def close(self) -> None:
        await self.session.close("peer closing")
        tasks = [self._accept, self._run, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.ws.close()


def abort_connection(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Drop a client WebSocket's TCP connection without any closing handshake."""
    connection = ws._response.connection
    assert connection is not None and connection.transport is not None
    connection.transport.abort()


# ---- user-side helpers -----------------------------------------------------------------------


@dataclass
class Received:
    """Everything a user's /connect WebSocket delivered until it closed."""

    data: bytes
    events: list[dict[str, Any]]
    close_code: int | None
    close_reason: str


async def receive_all(ws: aiohttp.ClientWebSocketResponse, within: float = WAIT) -> Received:
    data = bytearray()
    events: list[dict[str, Any]] = []
    reason = ""

    async def loop() -> None:
        nonlocal reason
        while True:
            message = await ws.receive()
            if message.type is WSMsgType.BINARY:
                data.extend(message.data)
            elif message.type is WSMsgType.TEXT:
                events.append(json.loads(message.data))
            else:
                if message.type is WSMsgType.CLOSE:
                    reason = message.extra or ""
                return

    await asyncio.wait_for(loop(), within)
    return Received(bytes(data), events, ws.close_code, reason)


async def next_message(ws: aiohttp.ClientWebSocketResponse, within: float = WAIT) -> Any:
    """The next binary payload (bytes) or text event (dict) on a user WebSocket."""
    message = await asyncio.wait_for(ws.receive(), within)
    if message.type is WSMsgType.BINARY:
        return bytes(message.data)
    if message.type is WSMsgType.TEXT:
        return json.loads(message.data)
    raise AssertionError(f"user WebSocket ended: {message.type.name} {message.extra!r}")


async def read_bytes(ws: aiohttp.ClientWebSocketResponse, size: int, within: float = WAIT) -> bytes:
    """Exactly `size` stream bytes from a user WebSocket (text events are not expected)."""
    buffer = bytearray()

    async def loop() -> None:
        while len(buffer) < size:
            message = await next_message(ws, within)
            assert isinstance(message, bytes), f"expected stream bytes, got {message!r}"
            buffer.extend(message)

    await asyncio.wait_for(loop(), within)
    assert len(buffer) == size, f"read {len(buffer)} bytes, expected {size}"
    return bytes(buffer)


async def send_payload(
    ws: aiohttp.ClientWebSocketResponse, payload: bytes, *, eof: bool, chunk: int = 64 * 1024
) -> None:
    for offset in range(0, len(payload), chunk):
        await ws.send_bytes(payload[offset : offset + chunk])
    if eof:
        await ws.send_str(json.dumps({"event": "eof"}))


async def exchange(
    ws: aiohttp.ClientWebSocketResponse, payload: bytes, within: float = 30.0
) -> Received:
    """Send `payload` then EOF while reading concurrently, until the gateway closes."""
    sender = asyncio.create_task(send_payload(ws, payload, eof=True))
    try:
        received = await receive_all(ws, within)
        await asyncio.wait_for(sender, within)
    finally:
        sender.cancel()
    return received


def decode_frames(messages: list[bytes]) -> list[Frame]:
    decoder = FrameDecoder()
    frames: list[Frame] = []
    for message in messages:
        frames.extend(decoder.feed(message))
    return frames


def raw_header(version: int, frame_type: int, flags: int, stream_id: int, length: int) -> bytes:
    """A yamux header with no validation, for sending frames the codec would never produce."""
    header = struct.pack(">BBHII", version, frame_type, flags, stream_id, length)
    assert len(header) == HEADER_SIZE
    return header


# ---- the gateway -----------------------------------------------------------------------------


@dataclass
class RunningGateway:
    url: str
    state_dir: Path
    key: SigningKey
    issuer: TokenIssuer
    http: aiohttp.ClientSession
    app: web.Application
    settings: GatewaySettings
    runner: web.AppRunner
    #: Called with the gateway's own socket of each upgraded connection, so a test can
    #: inspect or tune the server side (the slow-reader test measures its kernel queue).
    server_socket_hooks: list[ServerSocketHook] = field(default_factory=list)
    peers: list[WorkspacePeer] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    def user(self, name: str, *, admin: bool = False) -> str:
        return self.issuer.mint_user(name, admin=admin)

    async def peer(
        self,
        owner: str,
        name: str,
        handler: Handler | None = None,
        *,
        config: SessionConfig | None = None,
    ) -> WorkspacePeer:
        """Dial /ws with a fresh agent credential for `user-{owner}-{name}` and serve it."""
        ws = await self.agent_socket(self.issuer.mint_agent(owner, name))
        session = Session(
            WebSocketLink(ws), is_client=True, config=config, name=f"peer-{owner}-{name}"
        )
        peer = WorkspacePeer(ws, session, handler or echo())
        self.peers.append(peer)
        await self.wait_agent(f"user-{owner}-{name}", lambda a: a["online"])
        return peer

    async def agent_socket(self, token: str) -> aiohttp.ClientWebSocketResponse:
        return await asyncio.wait_for(
            self.http.ws_connect(f"{self.ws_url}/ws", headers=bearer(token), autoping=True),
            WAIT,
        )

    async def connect(
        self,
        agent: str,
        token: str,
        *,
        port: int | None = 22,
        kind: str | None = "ssh",
        http: aiohttp.ClientSession | None = None,
    ) -> aiohttp.ClientWebSocketResponse:
        """Open /connect and wait for the gateway's `connected` event (None omits an option)."""
        query = {
            key: str(value) for key, value in (("port", port), ("kind", kind)) if value is not None
        }
        ws = await asyncio.wait_for(
            (http or self.http).ws_connect(
                f"{self.ws_url}/connect/{agent}", params=query, headers=bearer(token)
            ),
            WAIT,
        )
        event = await next_message(ws)
        assert event == {"event": "connected"}, event
        return ws

    async def refused(self, path: str, headers: dict[str, str]) -> tuple[int, str]:
        """Status and body of a request the gateway must refuse before any upgrade."""
        async with asyncio.timeout(WAIT), self.http.get(self.url + path, headers=headers) as resp:
            assert resp.status != 101, f"{path} was upgraded"
            return resp.status, await resp.text()

    async def mgmt(self, path: str = "/mgmt/agents") -> Any:
        async with (
            asyncio.timeout(WAIT),
            self.http.get(self.url + path, headers=bearer(self.issuer.mint_management())) as resp,
        ):
            assert resp.status == 200, (resp.status, await resp.text())
            return await resp.json()

    async def agents(self) -> dict[str, dict[str, Any]]:
        listing = await self.mgmt()
        return {agent["id"]: agent for agent in listing["agents"]}

    async def wait_agent(
        self,
        agent: str,
        predicate: Callable[[dict[str, Any]], bool],
        within: float = WAIT,
    ) -> dict[str, Any]:
        """Poll /mgmt/agents until `agent` is listed and satisfies `predicate`."""

        async def poll() -> dict[str, Any]:
            while True:
                entry = (await self.agents()).get(agent)
                if entry is not None and predicate(entry):
                    return entry
                await asyncio.sleep(0.02)

        return await asyncio.wait_for(poll(), within)

    async def metrics(self) -> str:
        async with asyncio.timeout(WAIT), self.http.get(self.url + "/metrics") as resp:
            assert resp.status == 200
            text: str = await resp.text()
            return text


GatewayFactory = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def start_gateway(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    """Start gateways in-process on 127.0.0.1:0, each with a fresh state directory."""
    stack = contextlib.AsyncExitStack()
    count = 0

    async def start(settings: GatewaySettings | None = None) -> RunningGateway:
        nonlocal count
        count += 1
        state_dir = tmp_path / f"gateway-{count}"
        key = load_or_create_signing_key(state_dir)
        settings = settings or GatewaySettings()
        app = create_app(LocalTokenVerifier.from_signing_key(key), settings)
        hooks: list[ServerSocketHook] = []

        async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
            sock = request.transport.get_extra_info("socket") if request.transport else None
            if sock is not None:
                for hook in hooks:
                    hook(request.path, sock)

        app.on_response_prepare.append(on_prepare)
        sock = bind_socket(ListenAddress("127.0.0.1", 0))
        runner = await start_site(app, sock, None, settings.connections)
        url = socket_url(sock, tls=False)
        stack.push_async_callback(runner.cleanup)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        gateway = RunningGateway(
            url, state_dir, key, TokenIssuer(key), http, app, settings, runner, hooks
        )

        async def close_peers() -> None:
            for peer in gateway.peers:
                await asyncio.wait_for(peer.close(), WAIT)

        stack.push_async_callback(close_peers)
        return gateway

    async with stack:
        yield start


@pytest.fixture
async def gateway(start_gateway: GatewayFactory) -> RunningGateway:
    return await start_gateway()


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[Kube]:
    """The emulated Kubernetes API server, with the CRD and the kuberde namespace."""
    from tests.integration.kube import running_kube

    async with running_kube(tmp_path) as running:
        yield running


@pytest.fixture
async def workspace_port() -> AsyncIterator[int]:
    """The service inside the workspace (sshd in the runbook): a banner, then echo."""
    from tests.integration.kube import echo_server

    server, port = await echo_server()
    async with server:
        yield port
