"""`WebSocketLink` between a real aiohttp server and client on 127.0.0.1, in the clear and
over TLS: both write frames straight to their transport (a client masking in place), and
every size of message — each WebSocket length encoding, and more than the transport
buffers — arrives byte for byte, read by aiohttp's own reader on the other side. Over TLS,
a TCP relay between the two counts the TLS records on the wire: one per small message."""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from bench.certs import write_self_signed

from kuberde.tls import server_ssl_context
from kuberde.wslink import WebSocketLink

pytestmark = pytest.mark.timeout(60)

#: Each head length (7-bit, 16-bit, 64-bit) at its edges, and a burst past the high-water mark.
SIZES = [1, 125, 126, 65535, 65536, 256 * 1024, 4 * 1024 * 1024 + 3]


class RecordRelay:
    """A TCP relay that counts the TLS records passing each way ("up" is client to server),
    reading their 5-byte headers off the stream (RFC 8446 §5.1)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.records = {"up": 0, "down": 0}

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        try:
            while head := await reader.readexactly(5):
                (length,) = struct.unpack("!H", head[3:])
                body = await reader.readexactly(length)
                self.records[direction] += 1
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(
            self._pump(reader, up_writer, "up"), self._pump(up_reader, writer, "down")
        )


@asynccontextmanager
async def linked(
    tls_dir: Path | None = None, relay: list[RecordRelay] | None = None
) -> AsyncIterator[tuple[WebSocketLink, WebSocketLink]]:
    """(server link, client link) over one loopback WebSocket; over TLS with a certificate
    written into `tls_dir`, if given; through a `RecordRelay`, appended to `relay`, if given."""
    server_tls: ssl.SSLContext | None = None
    client_tls: ssl.SSLContext | bool = True
    if tls_dir is not None:
        cert, key = write_self_signed(tls_dir)
        server_tls = server_ssl_context(str(cert), str(key))
        client_tls = ssl.create_default_context(cafile=str(cert))
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
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
    await site.start()
    port = runner.addresses[0][1]
    relay_server: asyncio.Server | None = None
    if relay is not None:
        relay.append(RecordRelay(port))
        relay_server = await asyncio.start_server(relay[-1].handle, "127.0.0.1", 0)
        port = relay_server.sockets[0].getsockname()[1]
    url = f"{'https' if tls_dir else 'http'}://127.0.0.1:{port}/ws"
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(url, compress=0, max_msg_size=0, ssl=client_tls) as ws,
        ):
            client = WebSocketLink(ws)
            server = await asyncio.wait_for(server_side, 10)
            yield server, client
            done.set()
    finally:
        done.set()
        await runner.cleanup()
        if relay_server is not None:
            relay_server.close()


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


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
@pytest.mark.parametrize("direction", ["client to server", "server to client"])
async def test_every_message_size_arrives_intact(direction: str, tls: bool, tmp_path: Path) -> None:
    payloads = [os.urandom(size) for size in SIZES]
    async with linked(tmp_path if tls else None) as (server, client):
        assert server.direct and client.direct
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


@pytest.mark.parametrize("direction", ["client to server", "server to client"])
async def test_over_tls_each_message_is_one_record(direction: str, tmp_path: Path) -> None:
    """A frame's head and payload go out as one TLS record, not a record of a few bytes
    before each payload."""
    relays: list[RecordRelay] = []
    payloads = [os.urandom(1000) for _ in range(10)]
    async with linked(tmp_path, relays) as (server, client):
        (relay,) = relays
        sender, receiver, way = (
            (client, server, "up") if direction == "client to server" else (server, client, "down")
        )
        before = relay.records[way]
        for payload in payloads:
            await sender.send(bytearray(payload))
            assert await asyncio.wait_for(receiver.receive(), 10) == payload
        assert relay.records[way] - before == len(payloads)
