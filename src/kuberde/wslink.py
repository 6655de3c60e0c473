"""Adapter that lets a yamux session run over an aiohttp WebSocket (server or client side).

It lives outside `kuberde.mux` so the codec and the session import without aiohttp.

Only binary messages carry session bytes. The WebSocket is a byte stream to the session:
message boundaries mean nothing to the frame decoder.

Sending writes each binary frame straight onto the WebSocket's transport, head and
payload in one `writelines`, masking a client's payload in place with aiohttp's C masker.
Over TLS the head is put in front of the payload first: asyncio's TLS transport makes each
buffer it is given a TLS record of its own, so a head written apart is a record of 2-14
bytes (with its 22 bytes of overhead and one more encryption call) before every payload.
aiohttp's `send_bytes` copies a client's payload twice (to mask it, then to prepend the
head) and writes a server's head and payload as two writes; on 256 KiB messages those
copies were a fifth of `kuberde port-forward`'s CPU (`make bench`). The transport's flow
control is kept: `writable` says whether a message may be written now without waiting,
which the session uses to send from the caller instead of its writer task. Where
aiohttp's writer is not what this expects (another version), the link uses `send_bytes`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMsgType, web

from kuberde.cli.wscodec import BINARY, frame_head
from kuberde.mux.frame import ProtocolError

_Masker = Callable[[bytes, bytearray], None]
_c_mask: _Masker | None
try:
    from aiohttp._websocket.helpers import websocket_mask as _c_mask
except ImportError:  # aiohttp before 3.11: no fast path
    _c_mask = None

__all__ = ["WebSocketLink"]

_CLOSING = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})


class _FrameWriter:
    """Binary frames onto an aiohttp WebSocket's transport, beside aiohttp's own frames
    (pongs, close): each frame is one synchronous write, so frames never interleave."""

    __slots__ = ("_mask", "_protocol", "_tls", "_transport", "_ws")

    def __init__(
        self,
        ws: web.WebSocketResponse | ClientWebSocketResponse,
        transport: Any,
        protocol: Any,
        mask: _Masker | None,
    ) -> None:
        self._ws = ws
        self._transport = transport
        self._protocol = protocol
        self._mask = mask
        self._tls = transport.get_extra_info("ssl_object") is not None

    @classmethod
    def of(cls, ws: web.WebSocketResponse | ClientWebSocketResponse) -> _FrameWriter | None:
        """A writer for the prepared `ws`, or None if aiohttp's internals are not as known."""
        writer: Any = getattr(ws, "_writer", None)
        transport = getattr(writer, "transport", None)
        protocol = getattr(writer, "protocol", None)
        use_mask = getattr(writer, "use_mask", None)
        compress = getattr(writer, "compress", None)
        if (
            _c_mask is None
            or compress != 0
            or not isinstance(use_mask, bool)
            or not hasattr(transport, "writelines")
            or not hasattr(transport, "get_extra_info")
            or not hasattr(protocol, "writing_paused")
            or not hasattr(protocol, "_drain_helper")
        ):
            return None
        return cls(ws, transport, protocol, _c_mask if use_mask else None)

    @property
    def writable(self) -> bool:
        return not (
            self._ws.closed or self._transport.is_closing() or self._protocol.writing_paused
        )

    async def send(self, data: bytes | bytearray) -> None:
        if self._ws.closed or self._transport.is_closing():
            raise ConnectionResetError("the WebSocket is closing")
        self.write(data)
        if self._protocol.writing_paused:
            await self._protocol._drain_helper()

    def write(self, data: bytes | bytearray) -> None:
        """One frame onto the transport, without waiting; a bytearray may be changed."""
        payload = data
        if self._mask is not None:
            key = os.urandom(4)
            payload = data if isinstance(data, bytearray) else bytearray(data)
            self._mask(key, payload)
            head = frame_head(BINARY, len(payload), key)
        else:
            head = frame_head(BINARY, len(data))
        if not self._tls:
            self._transport.writelines([head, payload])
        elif isinstance(payload, bytearray):
            payload[0:0] = head  # one memmove, not a copy into a new buffer
            self._transport.write(payload)
        else:
            self._transport.write(head + payload)


class WebSocketLink:
    def __init__(self, ws: web.WebSocketResponse | ClientWebSocketResponse) -> None:
        """`ws` must be prepared (server) or connected (client)."""
        self._ws = ws
        self._frames = _FrameWriter.of(ws)

    @property
    def direct(self) -> bool:
        """Frames go straight to the transport (else through aiohttp's `send_bytes`)."""
        return self._frames is not None

    async def send(self, data: bytes | bytearray) -> None:
        """Send one binary message; a bytearray is ours now (masked or prefixed in place)."""
        if self._frames is None:
            await self._ws.send_bytes(bytes(data) if isinstance(data, bytearray) else data)
        else:
            await self._frames.send(data)

    @property
    def writable(self) -> bool:
        """A message would go straight onto an open, unpaused transport; never True on the
        `send_bytes` path, whose sends the session leaves to its writer task."""
        return self._frames is not None and self._frames.writable

    def send_nowait(self, data: bytearray) -> None:
        """Send one binary message without waiting; only while `writable`."""
        if self._frames is None:
            raise RuntimeError("send_nowait on a link that is not writable")
        self._frames.write(data)

    async def receive(self) -> bytes | None:
        msg = await self._ws.receive()
        if msg.type is WSMsgType.BINARY:
            data: bytes = msg.data
            return data
        if msg.type in _CLOSING:
            return None
        raise ProtocolError(f"unexpected WebSocket {msg.type.name} message on a mux session")

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code=code, message=reason.encode())
