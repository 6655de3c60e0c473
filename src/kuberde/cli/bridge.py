"""The bridge's data path: bytes between local transports and one `/connect` tunnel.

It runs on Protocol callbacks (DESIGN.md §9): local reads are sent as big messages with one
send in flight, reading pauses while sends queue up, and the WebSocket is not read while the
local writer is paused, so both directions have backpressure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import WSMsgType

from kuberde.cli.messages import EOF_EVENT, NORMAL_CLOSE, EventHandler, close_message, parse_event
from kuberde.cli.tunnel import CLOSE_TYPES, Tunnel

__all__ = ["READ_SIZE", "Bridge", "Outcome"]

#: Read size for local input and the coalescing bound for queued local bytes (DESIGN.md §9:
#: big messages are cheaper per byte).
READ_SIZE = 256 * 1024
_COALESCE_LIMIT = 256 * 1024


@dataclass(frozen=True)
class Outcome:
    """How a bridged connection ended: the exit code, and what to tell the user if not fine."""

    exit_code: int
    message: str | None = None


class Bridge:
    """Moves bytes between local transports and one tunnel, with backpressure both ways.

    Local → WebSocket: what the reader delivers is sent at once if no send is in flight,
    otherwise queued and coalesced; reading pauses once the queue is big. Local EOF becomes
    an `eof` event after the queued bytes. WebSocket → local: binary messages are written to
    the writer, and the WebSocket is not read while the writer is paused. The gateway's `eof`
    half-closes the writer. When both directions have finished the bridge closes the
    WebSocket normally.
    """

    def __init__(self, tunnel: Tunnel, *, on_event: EventHandler | None = None) -> None:
        self._ws = tunnel.ws
        self._agent = tunnel.agent
        self._first = tunnel.first
        self._on_event = on_event
        self._loop = asyncio.get_running_loop()
        self._reader: asyncio.ReadTransport | None = None
        self._writer: asyncio.WriteTransport | None = None
        self._half_close: Callable[[], None] | None = None
        self._send_task: asyncio.Task[None] | None = None
        self._queued: list[bytes] = []
        self._queued_size = 0
        self._reading_paused = False
        self._local_eof = False
        self._eof_delivered = False
        self._uplink_broken = False
        self._downlink_done = False
        self._local_lost = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._error: str | None = None
        self._close_task: asyncio.Task[bool] | None = None

    # ---- the local side ----------------------------------------------------------------

    def attach_reader(self, transport: asyncio.ReadTransport) -> None:
        self._reader = transport

    def attach_writer(
        self, transport: asyncio.WriteTransport, half_close: Callable[[], None]
    ) -> None:
        self._writer = transport
        self._half_close = half_close

    def data_received(self, data: bytes) -> None:
        if self._local_eof or self._uplink_broken:
            return
        if self._send_task is None:
            self._send(data)
            return
        self._queued.append(data)
        self._queued_size += len(data)
        if self._queued_size >= _COALESCE_LIMIT:
            self._pause_reading()

    def eof_received(self) -> None:
        if self._local_eof or self._uplink_broken:
            return
        self._local_eof = True
        if self._send_task is None:
            self._send_eof()

    def pause_writing(self) -> None:
        if self._close_task is None:
            self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def local_lost(self) -> None:
        """The local side is gone in both directions: end the tunnel."""
        self._local_lost = True
        self._writer = None
        self._writable.set()
        self._finish()

    # ---- local → WebSocket ---------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._send_task = self._loop.create_task(self._ws.send_bytes(data))
        self._send_task.add_done_callback(self._sent)

    def _send_eof(self) -> None:
        self._send_task = self._loop.create_task(self._ws.send_str(EOF_EVENT))
        self._send_task.add_done_callback(self._eof_sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._send_task = None
        if task.cancelled() or task.exception() is not None:
            self._uplink_failed()
            return
        if self._queued:
            data = self._queued[0] if len(self._queued) == 1 else b"".join(self._queued)
            self._queued.clear()
            self._queued_size = 0
            self._send(data)
            self._resume_reading()
        elif self._local_eof:
            self._send_eof()
        else:
            self._resume_reading()

    def _eof_sent(self, task: asyncio.Task[None]) -> None:
        self._send_task = None
        if task.cancelled() or task.exception() is not None:
            self._uplink_failed()
            return
        self._eof_delivered = True
        if self._downlink_done:
            self._finish()

    def _uplink_failed(self) -> None:
        """The WebSocket is going away; the receive loop reports why."""
        self._uplink_broken = True
        self._queued.clear()
        self._pause_reading()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._reader is not None and not self._reader.is_closing():
            self._reading_paused = True
            self._reader.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._reader is not None and not self._reader.is_closing():
            self._reading_paused = False
            self._reader.resume_reading()

    # ---- WebSocket → local ---------------------------------------------------------------

    async def run(self) -> Outcome:
        """Relay until both directions finish or the WebSocket closes."""
        try:
            close_reason = await self._receive_loop()
        finally:
            if self._send_task is not None:
                self._send_task.cancel()
        if self._close_task is not None:
            await self._close_task
        if self._local_lost or (self._eof_delivered and self._downlink_done):
            return Outcome(0)
        message = close_message(self._ws.close_code, self._error or close_reason, self._agent)
        return Outcome(0) if message is None else Outcome(1, message)

    async def _receive_loop(self) -> str | None:
        message = self._first
        self._first = None
        while True:
            if message is None:
                if not self._writable.is_set():
                    await self._writable.wait()
                message = await self._ws.receive()
            kind = message.type
            if kind is WSMsgType.BINARY:
                if self._writer is not None and not self._downlink_done:
                    self._writer.write(message.data)
            elif kind is WSMsgType.TEXT:
                self._event(message.data)
            elif kind is WSMsgType.CLOSE:
                reason: str | None = message.extra
                return reason
            elif kind in CLOSE_TYPES:
                return None
            message = None

    def _event(self, text: object) -> None:
        event = parse_event(text)
        if event is None:
            return
        name = event.get("event")
        if name == "eof":
            if not self._downlink_done:
                self._downlink_done = True
                if self._half_close is not None and self._writer is not None:
                    self._half_close()
            if self._eof_delivered:
                self._finish()
        elif name == "error":
            self._error = str(event.get("message", "")) or None
        elif self._on_event is not None:
            self._on_event(event)

    def _finish(self) -> None:
        self._writable.set()
        if self._close_task is None and not self._ws.closed:
            self._close_task = self._loop.create_task(self._ws.close(code=NORMAL_CLOSE))
