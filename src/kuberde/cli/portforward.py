"""`kuberde port-forward AGENT [LOCAL:]REMOTE`: a local listener like `kubectl port-forward`.

All accepted connections share one WebSocket to the gateway (`/session/AGENT`) carrying a
mux session with the agent's framing: a new connection is one stream open, not a WebSocket
and TLS handshake. The session is dialled on first use and again after it ends, so the
listener outlives gateway and agent restarts: a connection that fails is closed and
reported on stderr, and the next one tries again. A gateway without `/session` gets one
`/connect` WebSocket per connection, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar, cast

import aiohttp

from kuberde.aio import wait_for_signal
from kuberde.cli.bridge import Bridge
from kuberde.cli.config import ClientSettings, session_url
from kuberde.cli.login import Credentials, RefreshError, unauthorized_message
from kuberde.cli.messages import ConnectError
from kuberde.cli.progress import WakeProgress
from kuberde.cli.tunnel import gateway_session, open_authorized, upgrade
from kuberde.linkbuffers import bound_kernel_buffers
from kuberde.mux import (
    BULK_FRAME,
    BULK_WINDOW,
    Preamble,
    Session,
    SessionClosed,
    SessionConfig,
    encode_preamble,
)
from kuberde.mux.tcpbridge import TcpBridge
from kuberde.wslink import WebSocketLink

__all__ = ["KIND", "PortMapping", "format_address", "parse_port_mapping", "serve_port_forward"]

_T = TypeVar("_T")

KIND = "port-forward"
#: How often a connection that is still waiting asks whether its workspace is awake.
_WAKE_POLL = 1.0
#: How long a new connection waits to hear from its workspace before it asks: one to a
#: running workspace is answered within milliseconds, a wake takes a quarter second or more.
_WAKE_GRACE = 0.05
#: Bulk windows as on the gateway-agent path; the gateway opens no streams to us.
_SESSION_CONFIG = SessionConfig(
    receive_window=BULK_WINDOW, max_frame_payload=BULK_FRAME, accept_backlog=0
)


@dataclass(frozen=True)
class PortMapping:
    """`local` 0 means any free port, as with `kubectl port-forward :REMOTE`."""

    local: int
    remote: int


def _port(text: str, what: str, *, allow_zero: bool = False) -> int:
    if not text.isdigit():
        raise ValueError(f"{what} port {text!r} is not a number")
    value = int(text)
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise ValueError(f"{what} port {value} is out of range")
    return value


def parse_port_mapping(spec: str) -> PortMapping:
    """`22` → 22:22, `2022:22` → 2022:22, `:22` → a free local port to 22."""
    local_text, sep, remote_text = spec.partition(":")
    if not sep:
        remote = _port(spec, "remote")
        return PortMapping(remote, remote)
    remote = _port(remote_text, "remote")
    local = _port(local_text, "local", allow_zero=True) if local_text else 0
    return PortMapping(local, remote)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Forwarded(asyncio.Protocol):
    """One accepted local connection and its tunnel.

    Reading stays paused until the tunnel is open, so bytes the client sends early wait in
    the kernel and server-first and client-first protocols both work. (uvloop may deliver
    a first read despite the pause in connection_made; that is kept and sent first.)
    """

    def __init__(self, forwarder: _Forwarder, remote: int) -> None:
        self._forwarder = forwarder
        self._remote = remote
        self._transport: asyncio.Transport | None = None
        self._bridge: Bridge | None = None
        self._joined: TcpBridge | None = None
        self._task: asyncio.Task[None] | None = None
        self._early: list[bytes] = []
        self._early_eof = False
        self._peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass asyncio's
        self._transport = transport
        transport.pause_reading()
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self._peer = format_address(str(peer[0]), int(peer[1]))
        self._task = self._forwarder.spawn(self._run(transport))

    async def _run(self, transport: asyncio.Transport) -> None:
        try:
            session = await self._forwarder.mux.session()
        except ConnectError as exc:
            self._forwarder.report(f"connection from {self._peer} failed: {exc}")
            transport.close()
            return
        if session is None:
            await self._run_tunnel(transport)
        else:
            await self._run_stream(session, transport)

    async def _run_stream(self, session: Session, transport: asyncio.Transport) -> None:
        """This connection as one stream of the shared session."""
        preamble = encode_preamble(Preamble(self._remote, "port-forward", ""))
        try:
            stream = session.open_stream(preamble)
        except SessionClosed:
            self._forwarder.report(f"connection from {self._peer} failed: lost the gateway")
            transport.close()
            return
        what = f"local connection from {self._peer}"
        joined = TcpBridge(stream, what)
        joined.connection_made(transport)
        self._joined = joined
        self._deliver_early(joined, transport)
        self._forwarder.watch_wake(joined)
        await joined.finished
        if joined.answered:
            self._forwarder.saw_online()
        error = stream.error
        if error is not None and not error.reason.startswith(what):
            self._forwarder.report(f"connection from {self._peer} ended: {error.reason}")

    def _deliver_early(self, target: Bridge | TcpBridge, transport: asyncio.Transport) -> None:
        """Hand over what the client sent before its tunnel was open, then let it talk."""
        for data in self._early:
            target.data_received(data)
        self._early.clear()
        if self._early_eof:
            target.eof_received()
        else:
            transport.resume_reading()

    async def _run_tunnel(self, transport: asyncio.Transport) -> None:
        """This connection as its own `/connect` WebSocket (a gateway without `/session`)."""
        forwarder = self._forwarder
        try:
            tunnel = await open_authorized(
                forwarder.credentials,
                forwarder.agent,
                self._remote,
                KIND,
                on_event=forwarder.progress,
                session=forwarder.session,
            )
        except ConnectError as exc:
            forwarder.report(f"connection from {self._peer} failed: {exc}")
            transport.close()
            return
        if transport.is_closing():
            await tunnel.ws.close()
            return
        bridge = Bridge(tunnel, on_event=forwarder.progress)
        bridge.attach_writer(transport, transport.write_eof)
        bridge.attach_reader(transport)
        self._bridge = bridge
        self._deliver_early(bridge, transport)
        try:
            outcome = await bridge.run()
        finally:
            if not tunnel.ws.closed:
                await tunnel.ws.close()
        if outcome.message is None:
            transport.close()
        else:
            forwarder.report(f"connection from {self._peer} ended: {outcome.message}")
            transport.abort()

    @property
    def _relay(self) -> Bridge | TcpBridge | None:
        return self._joined if self._joined is not None else self._bridge

    def data_received(self, data: bytes) -> None:
        relay = self._relay
        if relay is not None:
            relay.data_received(data)
        elif self._transport is not None:
            self._early.append(data)
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        relay = self._relay
        if relay is not None:
            relay.eof_received()
        else:
            self._early_eof = True
        return True

    def pause_writing(self) -> None:
        relay = self._relay
        if relay is not None:
            relay.pause_writing()

    def resume_writing(self) -> None:
        relay = self._relay
        if relay is not None:
            relay.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._joined is not None:
            self._joined.connection_lost(exc)
        elif self._bridge is not None:
            self._bridge.local_lost()
        elif self._task is not None:
            self._task.cancel()


class _Mux:
    """The port-forward's one mux session to the gateway (`/session/AGENT`), dialled on
    first use and again whenever the last one has ended (a gateway restart, a lost link).

    `session()` is None for a gateway without `/session` (it answers a plain 404, not
    its own JSON error): each connection then gets its own `/connect` WebSocket.
    """

    def __init__(self, forwarder: _Forwarder) -> None:
        self._forwarder = forwarder
        self._session: Session | None = None
        self._lock = asyncio.Lock()
        self._unsupported = False

    async def session(self) -> Session | None:
        async with self._lock:
            if self._session is not None and not self._session.is_closed:
                return self._session
            if self._unsupported:
                return None
            try:
                ws = await self._dial()
            except ConnectError as exc:
                if exc.status == 404 and exc.detail is None:
                    self._unsupported = True
                    return None
                raise
            bound_kernel_buffers(ws)
            session = Session(
                WebSocketLink(ws),
                is_client=True,
                config=_SESSION_CONFIG,
                name=self._forwarder.agent,
            )
            self._forwarder.spawn(self._serve(session, ws))
            self._session = session
            return session

    async def _dial(self) -> aiohttp.ClientWebSocketResponse:
        """Upgrade with the stored login's token; after a 401, renew it once and retry."""
        forwarder = self._forwarder
        settings = await forwarder.credentials.fresh()
        url = session_url(settings.server, forwarder.agent)
        try:
            return await upgrade(forwarder.session, settings, url, forwarder.agent)
        except ConnectError as exc:
            if exc.status != 401:
                raise
            try:
                renewed = await forwarder.credentials.renew(settings)
            except RefreshError as failure:
                raise ConnectError(unauthorized_message(failure), status=401) from None
            if renewed is None:
                raise
        return await upgrade(forwarder.session, renewed, url, forwarder.agent)

    @staticmethod
    async def _serve(session: Session, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            await session.run()
        finally:
            if not ws.closed:
                await ws.close()


class _Forwarder:
    def __init__(
        self,
        settings: ClientSettings,
        agent: str,
        session: aiohttp.ClientSession,
        stderr: TextIO,
    ) -> None:
        self.credentials = Credentials(settings)
        self.agent = agent
        self.session = session
        self.progress = WakeProgress(agent, stderr)
        self._stderr = stderr
        self._tasks: set[asyncio.Task[Any]] = set()
        #: When the workspace was last seen online (loop time), so a burst of connections
        #: asks the gateway once.
        self._online_at: float | None = None
        #: The question in flight, shared by every connection that waits meanwhile.
        self._online_check: asyncio.Task[bool | None] | None = None
        self.mux = _Mux(self)

    def spawn(self, work: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def watch_wake(self, joined: TcpBridge) -> None:
        """Show wake progress for a connection that has not heard from its workspace after
        `_WAKE_GRACE` (`_WAKE_POLL` if the workspace was online a moment ago) until it is
        finished, so the connections of a burst cost a timer each, not a task."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        finished = joined.finished

        def start() -> None:
            if joined.answered:
                self.saw_online()
            elif not finished.done():
                watcher = self.spawn(self._show_wake(finished, started))
                finished.add_done_callback(lambda _: watcher.cancel())

        recently = self._online_at is not None and started - self._online_at < _WAKE_POLL
        timer = loop.call_later(_WAKE_POLL if recently else _WAKE_GRACE, start)
        finished.add_done_callback(lambda _: timer.cancel())

    def saw_online(self) -> None:
        """A connection heard from the workspace: no need to ask for a while."""
        self._online_at = asyncio.get_running_loop().time()

    async def _show_wake(self, finished: asyncio.Future[None], started: float) -> None:
        """A session carries no `waking` events: ask the gateway whether the workspace is
        online, and while it is not, show the progress `/connect` would (the gateway is
        waking it for this connection)."""
        loop = asyncio.get_running_loop()
        waking = False
        while not finished.done():
            online = await self._is_online()
            if online is None:
                return
            if online:
                if waking:
                    self.progress({"event": "connected"})
                return
            waking = True
            self.progress({"event": "waking", "elapsed_s": round(loop.time() - started, 1)})
            await asyncio.wait({finished}, timeout=_WAKE_POLL)

    async def _is_online(self) -> bool | None:
        """Whether the workspace is online (None: the gateway cannot say). One question is
        in flight at a time, and a connection that ends stops waiting for it without
        cancelling it: a burst of short connections, each ended before an HTTPS answer
        could arrive, would otherwise ask once each and pay a TLS handshake every time."""
        if self._online_check is None or self._online_check.done():
            self._online_check = self.spawn(self._ask_online())
        return await asyncio.shield(self._online_check)

    async def _ask_online(self) -> bool | None:
        from kuberde.cli.api import ApiError, request

        path = f"/api/agents/{self.agent}"
        try:
            answer = await request(self.credentials.settings, "GET", path, deadline=5.0)
        except ApiError:
            return None
        online = bool(answer.get("online"))
        if online:
            self.saw_online()
        return online

    def report(self, message: str) -> None:
        self.progress.end_line()
        print(f"kuberde: {message}", file=self._stderr, flush=True)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def serve_port_forward(
    settings: ClientSettings,
    agent: str,
    mappings: Sequence[PortMapping],
    address: str,
    *,
    stderr: TextIO | None = None,
) -> int:
    """Listen on `address` for every mapping until SIGINT/SIGTERM; returns the exit code."""
    err = sys.stderr if stderr is None else stderr
    loop = asyncio.get_running_loop()
    async with gateway_session(settings) as session:
        forwarder = _Forwarder(settings, agent, session, err)
        servers: list[asyncio.Server] = []
        try:
            for mapping in mappings:
                try:
                    server = await loop.create_server(
                        functools.partial(_Forwarded, forwarder, mapping.remote),
                        host=address,
                        port=mapping.local,
                    )
                except OSError as exc:
                    forwarder.report(
                        f"cannot listen on {format_address(address, mapping.local)}: "
                        f"{exc.strerror or exc}"
                    )
                    return 1
                servers.append(server)
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    print(
                        f"Forwarding from {format_address(host, port)} -> {mapping.remote}",
                        file=err,
                        flush=True,
                    )
            await wait_for_signal()
            return 0
        finally:
            for server in servers:
                server.close()
            await forwarder.stop()
