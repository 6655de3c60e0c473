"""An in-memory message link pair, so session tests exercise the real Session code."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from kuberde.mux.session import Session, SessionConfig

TIMEOUT = 10.0


class MemoryLink:
    """Like WebSocketLink's: `writable` is False while paused (as a transport above its
    high-water mark is), and a send then waits for `resume`, so the writer task holds it."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.peer: MemoryLink | None = None
        self.closed = False
        self.sent: list[bytes] = []
        self._resumed = asyncio.Event()
        self._resumed.set()

    def pause(self) -> None:
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()

    @property
    def writable(self) -> bool:
        return self._resumed.is_set() and not self._broken

    @property
    def _broken(self) -> bool:
        return self.closed or self.peer is None or self.peer.closed

    def send_nowait(self, data: bytes | bytearray) -> None:
        assert self.peer is not None and self._resumed.is_set(), "send_nowait while unwritable"
        message = bytes(data)  # a WebSocket delivers bytes, whatever was sent
        self.sent.append(message)
        self.peer.inbox.put_nowait(message)

    async def send(self, data: bytes | bytearray) -> None:
        if self._broken:
            raise ConnectionResetError("link closed")
        while not self._resumed.is_set():  # paused again before this waiter ran
            await self._resumed.wait()
        if self._broken:
            raise ConnectionResetError("link closed")
        self.send_nowait(data)

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


@dataclass
class Pair:
    client: Session
    server: Session
    client_link: MemoryLink
    server_link: MemoryLink
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def links(self) -> tuple[MemoryLink, MemoryLink]:
        return self.client_link, self.server_link


@contextlib.asynccontextmanager
async def session_pair(
    client_config: SessionConfig | None = None,
    server_config: SessionConfig | None = None,
) -> AsyncIterator[Pair]:
    client_link, server_link = link_pair()
    client = Session(client_link, is_client=True, config=client_config, name="client")
    server = Session(server_link, is_client=False, config=server_config, name="server")
    pair = Pair(client, server, client_link, server_link)
    pair.tasks = [asyncio.create_task(client.run()), asyncio.create_task(server.run())]
    try:
        yield pair
    finally:
        await client.close()
        await server.close()
        await asyncio.wait_for(asyncio.gather(*pair.tasks), TIMEOUT)
