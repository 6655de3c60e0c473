"""`python -m bench.wslibs [--quick]`: the WebSocket hop alone, aiohttp against picows.

Issue 15 asks whether a faster WebSocket library would carry our frames faster than
aiohttp. This measures the hop without the rest of KubeRDE: a client in this process and an
echo/sink server in a child process (both on uvloop, loopback, plain ws://), for each pair:

- aiohttp → aiohttp, the client sending with `send_bytes`;
- kuberde → aiohttp: the same client through `WebSocketLink`'s direct frame writer (what
  `kuberde port-forward` and `connect` run today);
- picows → aiohttp: only the client side replaced;
- picows → picows: both sides replaced.

Per pair: the 1-byte message round trip (p50), and upload and download of 256 KiB
messages (the size our mux sessions send). Ratios are to the kuberde row, interleaved
rounds, medians.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import picows
from aiohttp import web

from bench.procs import Processes, free_port, wait_for_port
from bench.stats import percentile
from kuberde import aio
from kuberde.wslink import WebSocketLink

CHUNK = 256 * 1024
#: Messages the servers answer: shorter ones are echoed, longer ones counted.
COUNT = b"?"  # reply with the 8-byte count of bytes received since the last one
DOWNLOAD = b"D"  # followed by 8 bytes: send that many bytes, then END
END = b"."
_ECHO_BELOW = 64
MB = 1_000_000


class _Counter:
    """The servers' shared protocol, on message payloads; no I/O."""

    def __init__(self) -> None:
        self.received = 0

    def answer(self, payload: bytes) -> tuple[str, bytes | int]:
        """("echo", bytes), ("count", 8 bytes), ("download", size) or ("sink", b"")."""
        if payload == COUNT:
            count, self.received = self.received, 0
            return "count", struct.pack("!Q", count)
        if len(payload) == 9 and payload[:1] == DOWNLOAD:
            return "download", int(struct.unpack("!Q", payload[1:])[0])
        if len(payload) < _ECHO_BELOW:
            return "echo", payload
        self.received += len(payload)
        return "sink", b""


# ---- servers (child processes) ------------------------------------------------------------


async def _serve_aiohttp(port: int) -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=4 * CHUNK)
        await ws.prepare(request)
        counter = _Counter()
        async for message in ws:
            kind, value = counter.answer(message.data)
            if kind == "download":
                assert isinstance(value, int)
                block = os.urandom(CHUNK)
                for offset in range(0, value, CHUNK):
                    await ws.send_bytes(block[: min(CHUNK, value - offset)])
                await ws.send_bytes(END)
            elif kind != "sink":
                assert isinstance(value, bytes)
                await ws.send_bytes(value)
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await aio.wait_for_signal()
    await runner.cleanup()


class _PicowsServerSide(picows.WSListener):
    def __init__(self) -> None:
        self._counter = _Counter()
        self._transport: picows.WSTransport | None = None
        self._paused: asyncio.Event = asyncio.Event()
        self._paused.set()

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self._transport = transport

    def pause_writing(self) -> None:
        self._paused.clear()

    def resume_writing(self) -> None:
        self._paused.set()

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        if frame.msg_type == picows.WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        kind, value = self._counter.answer(frame.get_payload_as_bytes())
        if kind == "download":
            assert isinstance(value, int)
            asyncio.get_running_loop().create_task(self._download(transport, value))
        elif isinstance(value, bytes) and kind != "sink":
            transport.send(picows.WSMsgType.BINARY, value)

    async def _download(self, transport: picows.WSTransport, size: int) -> None:
        block = os.urandom(CHUNK)
        for offset in range(0, size, CHUNK):
            await self._paused.wait()
            transport.send(picows.WSMsgType.BINARY, block[: min(CHUNK, size - offset)])
        transport.send(picows.WSMsgType.BINARY, END)


async def _serve_picows(port: int) -> None:
    server = await picows.ws_create_server(
        lambda _request: _PicowsServerSide(), "127.0.0.1", port, max_frame_size=4 * CHUNK
    )
    await aio.wait_for_signal()
    server.close()


# ---- clients (this process) ---------------------------------------------------------------


@dataclass(frozen=True)
class _Client:
    """One connected client: send a message, wait for the next message."""

    send: Callable[[bytes | bytearray], Awaitable[None]]
    receive: Callable[[], Awaitable[bytes]]
    close: Callable[[], Awaitable[None]]


async def _aiohttp_client(url: str, *, direct: bool) -> _Client:
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(url, compress=0, max_msg_size=4 * CHUNK)
    link = WebSocketLink(ws)
    assert link.direct, "this aiohttp has no direct frame path"

    async def send_bytes(data: bytes | bytearray) -> None:
        await ws.send_bytes(bytes(data))

    async def receive() -> bytes:
        data = await link.receive()
        assert data is not None, "the server closed"
        return data

    async def close() -> None:
        await ws.close()
        await http.close()

    return _Client(link.send if direct else send_bytes, receive, close)


class _PicowsClientSide(picows.WSListener):
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.writable = asyncio.Event()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        if frame.msg_type == picows.WSMsgType.BINARY:
            self.inbox.put_nowait(frame.get_payload_as_bytes())


async def _picows_client(url: str) -> _Client:
    transport, listener = await picows.ws_connect(_PicowsClientSide, url, max_frame_size=4 * CHUNK)
    assert isinstance(listener, _PicowsClientSide)
    writable = listener.writable

    async def send(data: bytes | bytearray) -> None:
        await writable.wait()
        transport.send(picows.WSMsgType.BINARY, data)

    async def close() -> None:
        transport.send_close(picows.WSCloseCode.OK)
        transport.disconnect()
        await transport.wait_disconnected()

    return _Client(send, listener.inbox.get, close)


# ---- measurements -------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    round_trips: int
    transfer_bytes: int
    rounds: int


async def _round_trips(client: _Client, count: int) -> float:
    """p50 of a 1-byte message and its echo, µs."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await client.send(b"x")
        assert await client.receive() == b"x"
        samples.append((time.perf_counter() - started) * 1e6)
    return percentile(samples, 0.5)


async def _upload(client: _Client, size: int) -> float:
    """MB/s of `size` bytes in CHUNK messages, until the server has counted them all."""
    block = os.urandom(CHUNK)
    started = time.perf_counter()
    for offset in range(0, size, CHUNK):
        await client.send(bytearray(block[: min(CHUNK, size - offset)]))
    await client.send(COUNT)
    counted = struct.unpack("!Q", await client.receive())[0]
    elapsed = time.perf_counter() - started
    assert counted == size, f"the server counted {counted} of {size} bytes"
    return size / elapsed / MB


async def _download(client: _Client, size: int) -> float:
    started = time.perf_counter()
    await client.send(DOWNLOAD + struct.pack("!Q", size))
    received = 0
    while (data := await client.receive()) != END:
        received += len(data)
    elapsed = time.perf_counter() - started
    assert received == size, f"received {received} of {size} bytes"
    return size / elapsed / MB


PAIRS = {
    "aiohttp → aiohttp": ("aiohttp", "send_bytes"),
    "kuberde → aiohttp": ("aiohttp", "link"),
    "picows → aiohttp": ("aiohttp", "picows"),
    "picows → picows": ("picows", "picows"),
}
BASELINE = "kuberde → aiohttp"


async def _connect(client_kind: str, url: str) -> _Client:
    if client_kind == "picows":
        return await _picows_client(url)
    return await _aiohttp_client(url, direct=client_kind == "link")


async def measure(urls: dict[str, str], plan: Plan) -> dict[str, dict[str, float]]:
    samples: dict[str, dict[str, list[float]]] = {
        pair: {"rtt_us": [], "upload_mbs": [], "download_mbs": []} for pair in PAIRS
    }
    for _ in range(plan.rounds):
        for pair, (server, client_kind) in PAIRS.items():
            client = await _connect(client_kind, urls[server])
            try:
                figures = samples[pair]
                figures["rtt_us"].append(await _round_trips(client, plan.round_trips))
                figures["upload_mbs"].append(await _upload(client, plan.transfer_bytes))
                figures["download_mbs"].append(await _download(client, plan.transfer_bytes))
            finally:
                await client.close()
    return {
        pair: {metric: statistics.median(values) for metric, values in figures.items()}
        for pair, figures in samples.items()
    }


def render(results: dict[str, dict[str, float]], plan: Plan) -> str:
    base = results[BASELINE]
    lines = [
        f"WebSocket hop on loopback, ws://, uvloop; medians of {plan.rounds} rounds "
        f"({plan.round_trips} round trips, {plan.transfer_bytes // MB} MB each way, "
        f"{CHUNK // 1024} KiB messages). Ratios to {BASELINE}: "
        "below 1 is faster for the round trip, above 1 is faster for throughput.",
        f"{'pair':<20} {'rtt p50':>9} {'ratio':>6} {'upload':>11} {'ratio':>6}"
        f" {'download':>11} {'ratio':>6}",
    ]
    for pair, figures in results.items():
        lines.append(
            f"{pair:<20} {figures['rtt_us']:>7.0f}µs {figures['rtt_us'] / base['rtt_us']:>6.2f}"
            f" {figures['upload_mbs']:>6.0f} MB/s "
            f"{figures['upload_mbs'] / base['upload_mbs']:>6.2f}"
            f" {figures['download_mbs']:>6.0f} MB/s "
            f"{figures['download_mbs'] / base['download_mbs']:>6.2f}"
        )
    return "\n".join(lines)


async def run(plan: Plan) -> dict[str, dict[str, float]]:
    work = Path(tempfile.mkdtemp(prefix="kuberde-wslibs-"))
    try:
        with Processes(work) as procs:
            urls = {}
            for server in ("aiohttp", "picows"):
                port = free_port()
                procs.start(
                    f"{server}-server",
                    [sys.executable, "-m", "bench.wslibs", "--serve", server, "--port", str(port)],
                )
                wait_for_port(port, 20.0, f"the {server} server")
                urls[server] = f"ws://127.0.0.1:{port}/"
            results = await measure(urls, plan)
    except BaseException:
        print(f"logs kept in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)
    print(render(results, plan), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wslibs", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples (about 20 s)")
    parser.add_argument("--serve", choices=("aiohttp", "picows"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve = _serve_aiohttp if args.serve == "aiohttp" else _serve_picows
        aio.run(serve(args.port))
        return 0
    if args.quick:
        plan = Plan(round_trips=2_000, transfer_bytes=128 * MB, rounds=3)
    else:
        plan = Plan(round_trips=10_000, transfer_bytes=512 * MB, rounds=5)
    aio.run(run(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
