"""Adapter that lets a yamux session run over an aiohttp WebSocket (server or client side).

It lives outside `kuberde.mux` so the codec and the session import without aiohttp.

Only binary messages carry session bytes. The WebSocket is a byte stream to the session:
message boundaries mean nothing to the frame decoder.
"""

from __future__ import annotations

from aiohttp import ClientWebSocketResponse, WSMsgType, web

from kuberde.mux.frame import ProtocolError

__all__ = ["WebSocketLink"]

_CLOSING = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})


class WebSocketLink:
    def __init__(self, ws: web.WebSocketResponse | ClientWebSocketResponse) -> None:
        self._ws = ws

    async def send(self, data: bytes) -> None:
        await self._ws.send_bytes(data)

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
