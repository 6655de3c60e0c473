"""The gateway's listening socket drains the kernel's accept queue each time it is ready.

uvloop's own server accepts one connection per loop turn; under load the queue then stayed
full and the kernel dropped SYNs (seconds of stream setup in the soak). These run on uvloop,
as the gateway does, and count loop turns, not time."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from kuberde.gateway.acceptor import Acceptor

pytestmark = pytest.mark.timeout(60)

QUEUED = 200


class Counted(asyncio.Protocol):
    def __init__(self, made: list[asyncio.BaseTransport]) -> None:
        self._made = made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._made.append(transport)


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def run_on_uvloop(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    uvloop.run(asyncio.wait_for(test(), 30))


async def turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


Serve = Callable[[socket.socket, Callable[[], asyncio.Protocol]], Awaitable[asyncio.AbstractServer]]


async def with_acceptor(sock: socket.socket, factory: Callable[[], asyncio.Protocol]) -> Acceptor:
    return Acceptor(sock, factory, None)


async def with_uvloops_server(
    sock: socket.socket, factory: Callable[[], asyncio.Protocol]
) -> asyncio.AbstractServer:
    return await asyncio.get_running_loop().create_server(factory, sock=sock, backlog=1024)


def served_in_four_turns(serve: Serve) -> int:
    """How many of QUEUED connections, queued while the loop was busy, are served after
    four loop turns: one ready event, then each connection's own task."""
    served: list[int] = []

    async def scenario() -> None:
        sock = listening()
        made: list[asyncio.BaseTransport] = []
        server = await serve(sock, lambda: Counted(made))
        clients = [socket.create_connection(sock.getsockname(), timeout=5) for _ in range(QUEUED)]
        try:
            await turns(4)
            served.append(len(made))
        finally:
            for client in clients:
                client.close()
            for transport in made:
                transport.close()
            server.close()
            await server.wait_closed()

    run_on_uvloop(scenario)
    return served[0]


def test_every_queued_connection_is_taken_in_one_ready_event() -> None:
    assert served_in_four_turns(with_acceptor) == QUEUED


def test_uvloops_own_server_takes_one_per_turn() -> None:
    """Why the acceptor exists: if uvloop ever drains the queue itself, it can go."""
    assert served_in_four_turns(with_uvloops_server) < QUEUED / 4


def test_closing_stops_accepting_and_frees_the_port() -> None:
    async def scenario() -> None:
        sock = listening()
        address = sock.getsockname()
        made: list[asyncio.BaseTransport] = []
        server = Acceptor(sock, lambda: Counted(made), None)
        assert server.is_serving()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
        assert not server.is_serving()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=5).close()
        assert made == []

    run_on_uvloop(scenario)
