"""An in-memory message link pair, so session tests exercise the real Session code."""

from __future__ import annotations

import asyncio


class MemoryLink:
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.peer: MemoryLink | None = None
        self.closed = False
        self.sent: list[bytes] = []

    async def send(self, data: bytes | bytearray) -> None:
        if self.closed or self.peer is None or self.peer.closed:
            raise ConnectionResetError("link closed")
        message = bytes(data)  # a WebSocket delivers bytes, whatever was sent
        self.sent.append(message)
        self.peer.inbox.put_nowait(message)

    async def receive(self) -> bytes | None:
        if self.closed:
            return None
        return await self.inbox.get()

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.inbox.put_nowait(None)
        if self.peer is not None:
            self.peer.inbox.put_nowait(None)


def link_pair() -> tuple[MemoryLink, MemoryLink]:
    a, b = MemoryLink(), MemoryLink()
    a.peer, b.peer = b, a
    return a, b
