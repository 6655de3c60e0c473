"""`WebSocketLink` between a real aiohttp server and client on 127.0.0.1: both write frames
straight to their transport (a client masking in place), and every size of message — each
WebSocket length encoding, and more than the transport buffers — arrives byte for byte,
read by aiohttp's own reader on the other side."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web

from kuberde.wslink import WebSocketLink

pytestmark = pytest.mark.timeout(60)

#: Each head length (7-bit, 16-bit, 64-bit) at its edges, and a burst past the high-water mark.
SIZES = [1, 125, 126, 65535, 65536, 256 * 1024, 4 * 1024 * 1024 + 3]


@asynccontextmanager
async def linked() -> AsyncIterator[tuple[WebSocketLink, WebSocketLink]]:
    """(server link, client link) over one loopback WebSocket."""
    server_side: asyncio.Future[WebSocketLink] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=0)
        await ws.prepare(request)
        server_side.set_result(WebSocketLink(ws))
        await done.wait()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"http://127.0.0.1:{port}/ws", compress=0, max_msg_size=0) as ws,
        ):
            client = WebSocketLink(ws)
            server = await asyncio.wait_for(server_side, 10)
            yield server, client
            done.set()
    finally:
        done.set()
        await runner.cleanup()


async def _exchange(sender: WebSocketLink, receiver: WebSocketLink, payloads: list[bytes]) -> None:
    async def send_all() -> None:
        for payload in payloads:
            await sender.send(bytearray(payload))

    sending = asyncio.create_task(send_all())
    received = [await asyncio.wait_for(receiver.receive(), 20) for _ in payloads]
    await asyncio.wait_for(sending, 20)
    assert [len(data or b"") for data in received] == [len(p) for p in payloads]
    assert received == payloads


async def test_both_sides_write_frames_directly() -> None:
    async with linked() as (server, client):
        assert server.direct
        assert client.direct


@pytest.mark.parametrize("direction", ["client to server", "server to client"])
async def test_every_message_size_arrives_intact(direction: str) -> None:
    payloads = [os.urandom(size) for size in SIZES]
    async with linked() as (server, client):
        if direction == "client to server":
            await _exchange(client, server, payloads)
        else:
            await _exchange(server, client, payloads)


async def test_sending_on_a_closed_link_fails() -> None:
    async with linked() as (server, client):
        closed = asyncio.create_task(server.receive())  # answers the close
        await asyncio.wait_for(client.close(1000, "done"), 10)
        assert await asyncio.wait_for(closed, 10) is None
        with pytest.raises(ConnectionResetError):
            await client.send(bytearray(b"late"))
