"""A local TCP connection joined to a mux stream, on Protocol callbacks both ways.

The agent joins the connection it dials to a stream the gateway opened; `kuberde
port-forward` joins a connection it accepted to a stream it opened in its session. No task
per chunk: that is where the throughput comes from. Flow control is end to end: stream
bytes are acknowledged to the peer only once the local socket has taken them, and TCP
reading pauses while the stream's send buffer is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import cast

from kuberde.mux.session import Stream, StreamReset

__all__ = ["TcpBridge"]

log = logging.getLogger(__name__)


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

    def __init__(self, stream: Stream, what: str, first_bytes: bytes = b"") -> None:
        """`what` names the local connection in reset reasons ("connection to HOST:PORT in
        the workspace")."""
        self._stream = stream
        self._what = what
        self._first_bytes = first_bytes
        self._transport: asyncio.Transport | None = None
        self._write_paused = False
        self._unacknowledged = 0
        self._local_eof = False
        self._stream_eof = False
        #: The stream has delivered bytes: its far end (the workspace, seen from the CLI) is up.
        self.answered = False
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
            self._stream.reset(f"{self._what} {how}")
        if not self.finished.done():
            self.finished.set_result(None)

    # ---- stream side -------------------------------------------------------------------

    def stream_data(self, data: bytes) -> None:
        self.answered = True
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
