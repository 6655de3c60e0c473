"""Serve one stream the gateway opened: read its preamble, dial the local port, pipe bytes.

The data path runs on asyncio Protocol callbacks on both sides (the TCP transport and the
stream's sink), with no task per chunk: that is where the throughput comes from. Flow
control is end to end: stream bytes are acknowledged to the peer only once the local
socket has taken them, and TCP reading pauses while the stream's send buffer is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import cast

from kuberde.agent.config import AgentConfig
from kuberde.mux import Preamble, PreambleError, PreambleReader, Stream, StreamReset

__all__ = ["CONNECT_TIMEOUT", "PREAMBLE_TIMEOUT", "TcpBridge", "serve_stream"]

log = logging.getLogger(__name__)

PREAMBLE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0


async def serve_stream(
    stream: Stream,
    config: AgentConfig,
    *,
    preamble_timeout: float = PREAMBLE_TIMEOUT,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> None:
    """Run one stream to completion; every refusal resets the stream with a reason."""
    try:
        preamble, rest = await asyncio.wait_for(_read_preamble(stream), preamble_timeout)
    except TimeoutError:
        stream.reset("no preamble")
        return
    except PreambleError as exc:
        stream.reset(f"bad preamble: {exc}")
        return
    except StreamReset:
        return
    target = config.target_for(preamble.port)
    if target is None:
        log.info("stream %d: refused port %s for %s", stream.id, preamble.port, preamble.user)
        stream.reset(f"port {preamble.port} is not allowed for this agent")
        return
    host, port = target
    try:
        bridge = await _dial(stream, host, port, rest, connect_timeout, config.connect_patience)
    except ConnectionRefusedError:
        stream.reset(f"connection refused by {host}:{port} in the workspace")
        return
    except TimeoutError:
        stream.reset(f"timed out connecting to {host}:{port} in the workspace")
        return
    except OSError as exc:
        stream.reset(f"cannot connect to {host}:{port} in the workspace: {exc.strerror or exc}")
        return
    log.debug("stream %d: %s from %s -> %s:%d", stream.id, preamble.kind, preamble.user, host, port)
    try:
        await bridge.finished
    except asyncio.CancelledError:
        bridge.abort()
        raise


async def _dial(
    stream: Stream, host: str, port: int, rest: bytes, dial_timeout: float, patience: float
) -> TcpBridge:
    """Connect to the local target, retrying refusals for `patience` seconds.

    Right after a wake the agent is often online before the workload listens (Jupyter and
    code-server take seconds); the waiting user should get through, not a refusal.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    delay = 0.05
    while True:
        try:
            _, bridge = await asyncio.wait_for(
                loop.create_connection(
                    lambda: TcpBridge(stream, f"{host}:{port}", rest), host, port
                ),
                dial_timeout,
            )
            return bridge
        except ConnectionRefusedError:
            if stream.error is not None or loop.time() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def _read_preamble(stream: Stream) -> tuple[Preamble, bytes]:
    reader = PreambleReader()
    while True:
        data = await stream.read()
        if not data:
            raise PreambleError("the stream ended before its preamble")
        result = reader.feed(data)
        if result is not None:
            return result


class _StreamSide:
    """The stream's sink. A separate object because its callbacks share names with TCP's."""

    __slots__ = ("_bridge",)

    def __init__(self, bridge: TcpBridge) -> None:
        self._bridge = bridge

    def data_received(self, data: bytes) -> None:
        self._bridge.stream_data(data)

    def eof_received(self) -> None:
        self._bridge.stream_eof()

    def stream_reset(self, error: StreamReset) -> None:
        self._bridge.stream_reset(error)


class TcpBridge(asyncio.Protocol):
    """Joins a local TCP connection and a stream; `finished` resolves when the socket closes."""

    def __init__(self, stream: Stream, target: str, first_bytes: bytes = b"") -> None:
        self._stream = stream
        self._target = target
        self._first_bytes = first_bytes
        self._transport: asyncio.Transport | None = None
        self._write_paused = False
        self._unacknowledged = 0
        self._local_eof = False
        self._stream_eof = False
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # ---- TCP side ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not an asyncio.Transport subclass, so no isinstance check.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._first_bytes:
            transport.write(self._first_bytes)
            self._first_bytes = b""
        self._stream.set_producer(transport.pause_reading, transport.resume_reading)
        self._stream.set_sink(_StreamSide(self))

    def data_received(self, data: bytes) -> None:
        try:
            self._stream.write(data)
        except StreamReset:
            self.abort()

    def eof_received(self) -> bool:
        self._local_eof = True
        self._stream.close_write()
        self._close_if_done()
        return True

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._unacknowledged:
            self._stream.consumed(self._unacknowledged)
            self._unacknowledged = 0

    def connection_lost(self, exc: Exception | None) -> None:
        if not (self._local_eof and self._stream_eof) and self._stream.error is None:
            how = "closed" if exc is None else f"failed: {exc}"
            self._stream.reset(f"connection to {self._target} in the workspace {how}")
        if not self.finished.done():
            self.finished.set_result(None)

    # ---- stream side -------------------------------------------------------------------

    def stream_data(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if self._write_paused:
            self._unacknowledged += len(data)
        else:
            self._stream.consumed(len(data))

    def stream_eof(self) -> None:
        self._stream_eof = True
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        self._close_if_done()

    def stream_reset(self, error: StreamReset) -> None:
        log.debug("stream %d reset: %s", self._stream.id, error.reason)
        self.abort()

    # ---- helpers -----------------------------------------------------------------------

    def abort(self) -> None:
        """Drop the local connection at once; the stream is reset unless already finished."""
        if self._transport is not None:
            self._transport.abort()

    def _close_if_done(self) -> None:
        if self._local_eof and self._stream_eof and self._transport is not None:
            self._transport.close()
