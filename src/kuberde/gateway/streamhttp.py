"""HTTP/1.1 and WebSocket clients that talk to a workspace app over one mux stream.

The sans-I/O libraries h11 and wsproto do the protocol; these adapters only move bytes
between them and the stream. Reading happens only when the caller asks for more, so a
browser that stops reading stops the stream's window updates: the app is held back by the
stream window and the gateway buffers at most a window and one read's worth.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import h11
from wsproto import ConnectionType, WSConnection
from wsproto import events as ws
from wsproto.utilities import LocalProtocolError as WsLocalError
from wsproto.utilities import RemoteProtocolError as WsRemoteError

from kuberde.mux import Stream, StreamReset

__all__ = ["StreamHttp", "StreamWebSocket", "UpstreamError", "UpstreamRejected", "WsMessage"]

READ_SIZE = 64 * 1024
#: An app's response head must fit in this (h11 refuses larger ones: 502).
MAX_RESPONSE_HEAD = 64 * 1024


class UpstreamError(Exception):
    """The app closed, reset or broke HTTP; the browser gets 502."""


@dataclass(frozen=True)
class UpstreamRejected(Exception):
    """The app answered a WebSocket handshake with a plain HTTP response."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _decode(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


def _encode(headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


class StreamHttp:
    """An HTTP/1.1 client connection over one stream: requests and their responses in turn."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
        #: Whether any byte of the current response arrived (a request that met a connection
        #: the app had already closed got none, and may be sent again elsewhere).
        self.answered = False

    @property
    def reusable(self) -> bool:
        """Both sides finished this exchange, the app keeps the connection and sent no more."""
        return (
            self._conn.our_state is h11.DONE
            and self._conn.their_state is h11.DONE
            and not self._conn.trailing_data[0]
            and self.stream.is_quiet
        )

    def next_cycle(self) -> None:
        """Ready the connection for the next request (only when `reusable`)."""
        self._conn.start_next_cycle()
        self.answered = False

    async def _send(self, event: h11.Event) -> None:
        try:
            data = self._conn.send(event)
        except h11.LocalProtocolError as exc:
            raise UpstreamError(f"cannot send the request: {exc}") from None
        if data:
            try:
                self.stream.write(data)
                await self.stream.drain()
            except StreamReset as exc:
                raise UpstreamError(f"the app's stream closed: {exc.reason}") from None

    async def send_head(self, method: str, target: str, headers: Sequence[tuple[str, str]]) -> None:
        await self._send(h11.Request(method=method, target=target, headers=_encode(headers)))

    async def send_body(self, data: bytes) -> None:
        if data:
            await self._send(h11.Data(data=data))

    async def end_body(self) -> None:
        await self._send(h11.EndOfMessage())

    async def _next(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise UpstreamError(f"the app sent a malformed response: {exc}") from None
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.read(READ_SIZE)
            except StreamReset as exc:
                raise UpstreamError(f"the app's stream closed: {exc.reason}") from None
            self.answered = self.answered or bool(data)
            self._conn.receive_data(data)

    async def response(self) -> tuple[int, str, list[tuple[str, str]]]:
        """Status, reason and headers of the app's (final) response; 1xx are skipped."""
        while True:
            event = await self._next()
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                return event.status_code, event.reason.decode("latin-1"), _decode(event.headers)
            raise UpstreamError("the app closed the connection without a response")

    async def body(self) -> AsyncIterator[bytes]:
        """The response body, one read at a time (the caller's pace is the app's)."""
        while True:
            event = await self._next()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise UpstreamError("the app's response ended early")


WsMessage = str | bytes


class StreamWebSocket:
    """The proxy's own WebSocket connection to the app (the browser's ends at the gateway)."""

    def __init__(self, stream: Stream, *, max_message: int) -> None:
        self._stream = stream
        self._conn = WSConnection(ConnectionType.CLIENT)
        self._max_message = max_message
        self._eof = False
        self._pending: deque[ws.Event] = deque()

    async def _flush(self, data: bytes) -> None:
        if not data:
            return
        try:
            self._stream.write(data)
            await self._stream.drain()
        except StreamReset as exc:
            raise UpstreamError(f"the app's stream closed: {exc.reason}") from None

    async def _next_event(self) -> ws.Event:
        """One event; those that arrived with it wait in order (none is ever dropped)."""
        while not self._pending:
            self._pending.extend(self._conn.events())
            if self._pending:
                break
            if self._eof:
                raise UpstreamError("the app closed the WebSocket connection")
            try:
                data = await self._stream.read(READ_SIZE)
            except StreamReset as exc:
                raise UpstreamError(f"the app's stream closed: {exc.reason}") from None
            self._eof = not data
            try:
                self._conn.receive_data(data or None)
            except WsRemoteError as exc:
                raise UpstreamError(f"the app broke the WebSocket protocol: {exc}") from None
        return self._pending.popleft()

    async def connect(
        self,
        host: str,
        target: str,
        subprotocols: Sequence[str],
        headers: Sequence[tuple[str, str]],
    ) -> str | None:
        """Handshake with the app; returns its chosen subprotocol or raises `UpstreamRejected`."""
        request = ws.Request(
            host=host,
            target=target,
            subprotocols=list(subprotocols),
            extra_headers=_encode(headers),
        )
        await self._flush(self._conn.send(request))
        status = 0
        rejected: list[tuple[str, str]] = []
        body = b""
        while True:
            event = await self._next_event()
            if isinstance(event, ws.AcceptConnection):
                return event.subprotocol
            if isinstance(event, ws.RejectConnection):
                status, rejected = event.status_code, _decode(event.headers)
                if not event.has_body:
                    raise UpstreamRejected(status, rejected, b"")
            elif isinstance(event, ws.RejectData):
                body = (body + bytes(event.data))[:MAX_RESPONSE_HEAD]
                if event.body_finished:
                    raise UpstreamRejected(status, rejected, body)

    async def send(self, message: WsMessage) -> None:
        event: ws.Event = (
            ws.TextMessage(data=message)
            if isinstance(message, str)
            else ws.BytesMessage(data=message)
        )
        try:
            await self._flush(self._conn.send(event))
        except WsLocalError as exc:
            raise UpstreamError(f"the app's WebSocket is closed: {exc}") from None

    async def close(self, code: int, reason: str = "") -> None:
        try:
            await self._flush(self._conn.send(ws.CloseConnection(code=code, reason=reason)))
        except (WsLocalError, UpstreamError):
            return

    async def messages(self) -> AsyncIterator[WsMessage]:
        """Whole messages from the app until it closes; pings are answered here."""
        text: list[str] = []
        binary: list[bytes] = []
        size = 0
        while True:
            event = await self._next_event()
            if isinstance(event, ws.Ping):
                await self._flush(self._conn.send(event.response()))
            elif isinstance(event, ws.CloseConnection):
                with contextlib.suppress(WsLocalError):
                    await self._flush(self._conn.send(event.response()))
                return
            elif isinstance(event, ws.TextMessage | ws.BytesMessage):
                size += len(event.data)
                if size > self._max_message:
                    await self.close(1009, "message too big")
                    raise UpstreamError("the app sent a message over the size limit")
                if isinstance(event, ws.TextMessage):
                    text.append(event.data)
                else:
                    binary.append(bytes(event.data))
                if event.message_finished:
                    yield "".join(text) if isinstance(event, ws.TextMessage) else b"".join(binary)
                    text, binary, size = [], [], 0
