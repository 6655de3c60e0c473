"""What a stranger's TCP connections may cost the gateway, before they prove who they are.

Each connection must deliver a complete request head within `header_timeout` of connecting
(idle keep-alive connections are closed after `keepalive_timeout`), and connections that
have not authenticated are capped per source address and in total. All connections
together stay below the process's file-descriptor limit, raised at start where allowed, so
the gateway refuses new connections cleanly instead of failing `accept` and `/healthz`.

`ConnectionCounts` is the pure bookkeeping; `GuardedSite` is the aiohttp adapter.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import logging
import resource
import socket
import ssl
import termios
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from kuberde.gateway.acceptor import Acceptor

__all__ = [
    "ConnectionCounts",
    "ConnectionLimits",
    "GuardedSite",
    "mark_authenticated",
    "peer",
    "raise_fd_limit",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    #: From accepting a connection to a complete request line and headers.
    header_timeout: float = 10.0
    #: An idle keep-alive connection (between requests) is closed after this.
    keepalive_timeout: float = 30.0
    max_unauthenticated_per_address: int = 64
    max_unauthenticated: int = 2048
    #: File descriptors kept free for everything that is not a client connection.
    fd_headroom: int = 128
    #: All connections; None derives it from the file-descriptor soft limit.
    max_connections: int | None = None


def raise_fd_limit() -> int:
    """Raise the soft file-descriptor limit to the hard limit where allowed; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    return soft


@dataclass
class ConnectionCounts:
    """Open connections in total, and unauthenticated ones by source address."""

    limits: ConnectionLimits
    max_connections: int
    total: int = 0
    unauthenticated: int = 0
    by_address: dict[str, int] = field(default_factory=dict)

    def admit(self, address: str) -> tuple[int, str] | None:
        """Count a new connection, or return the (HTTP status, reason) refusing it."""
        if self.total >= self.max_connections:
            return 503, "the gateway is at its connection limit"
        if self.unauthenticated >= self.limits.max_unauthenticated:
            return 503, "too many connections waiting to authenticate"
        if self.by_address.get(address, 0) >= self.limits.max_unauthenticated_per_address:
            return 429, "too many unauthenticated connections from your address"
        self.total += 1
        self.unauthenticated += 1
        self.by_address[address] = self.by_address.get(address, 0) + 1
        return None

    def authenticated(self, address: str) -> None:
        self.unauthenticated -= 1
        self._release_address(address)

    def closed(self, address: str, authenticated: bool) -> None:
        self.total -= 1
        if not authenticated:
            self.unauthenticated -= 1
            self._release_address(address)

    def _release_address(self, address: str) -> None:
        left = self.by_address[address] - 1
        if left:
            self.by_address[address] = left
        else:
            del self.by_address[address]


def _refusal(status: int, reason: str) -> bytes:
    body = reason.encode()
    phrase = {408: "Request Timeout", 429: "Too Many Requests", 503: "Service Unavailable"}
    return (
        f"HTTP/1.1 {status} {phrase[status]}\r\nConnection: close\r\nRetry-After: 1\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class _GuardedHandler(RequestHandler):
    """aiohttp's handler, counted, and closed if the first request head is too slow."""

    def __init__(self, counts: ConnectionCounts, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._counts = counts
        self._address = ""
        self._admitted = False
        self._authenticated = False
        self._header_timer: asyncio.TimerHandle | None = None
        #: The deadline passed while the client's bytes still waited in our socket.
        self._overdue = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if isinstance(peer, tuple) else ""
        refusal = self._counts.admit(self._address)
        if refusal is not None:
            log.info("refused a connection from %s: %s", self._address, refusal[1])
            self._manager = None  # never registered: connection_lost has nothing to undo
            assert isinstance(transport, asyncio.Transport)
            transport.write(_refusal(*refusal))
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)
        self._header_timer = self._loop.call_later(
            self._counts.limits.header_timeout, self._header_deadline
        )

    def _header_deadline(self) -> None:
        """Close a connection whose head is late — unless the bytes have arrived and only our
        own busy loop has not read them yet (the timer ran first): then judge the head once
        they are read, so the defence measures the client, not our loop lag."""
        self._header_timer = None
        if self._request_count == 0 and self.transport is not None:
            if not self._overdue and _unread_bytes(self.transport) > 0:
                self._overdue = True
                return
            self._refuse_late_head()

    def _refuse_late_head(self) -> None:
        assert self.transport is not None
        log.info("closed a connection from %s: no request head in time", self._address)
        self.transport.write(_refusal(408, "the request head took too long"))
        self.force_close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._overdue:
            self._overdue = False
            if self._request_count == 0 and self.transport is not None:
                self._refuse_late_head()

    def authenticated(self) -> None:
        if self._admitted and not self._authenticated:
            self._authenticated = True
            self._counts.authenticated(self._address)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if self._admitted:
            self._admitted = False
            self._counts.closed(self._address, self._authenticated)
        super().connection_lost(exc)


def _unread_bytes(transport: asyncio.BaseTransport) -> int:
    """Bytes the kernel holds for us on the transport's socket (0 when it cannot say)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    held = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, held)
    except (OSError, ValueError):
        return 0
    return held[0]


def peer(request: web.BaseRequest) -> str:
    """Who is on the other end, for a log line: an address, or the Unix socket (an agent in
    its owner's network namespace) that has none."""
    return request.remote or "a Unix socket"


def mark_authenticated(request: web.BaseRequest) -> None:
    """The request's connection proved who it is: it no longer counts as a stranger's."""
    protocol = request.protocol
    if isinstance(protocol, _GuardedHandler):
        protocol.authenticated()


class GuardedSite(web.SockSite):
    """A listening socket whose connections are counted and timed (see the module doc)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        *,
        limits: ConnectionLimits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context)
        max_connections = limits.max_connections
        if max_connections is None:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            max_connections = max(soft - limits.fd_headroom, 16)
        self.counts = ConnectionCounts(limits, max_connections)

    def _handler(self) -> RequestHandler:
        server = self._runner.server
        assert server is not None
        return _GuardedHandler(self.counts, server, loop=server._loop, **server._kwargs)

    async def start(self) -> None:
        self._runner._reg_site(self)
        self._server = Acceptor(self._sock, self._handler, self._ssl_context)
