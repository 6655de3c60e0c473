"""A workspace web app for the app-proxy tests: it records every request's headers.

Usage: python recorder.py PORT RECORD_FILE. Each request appends one JSON line
{"path", "headers", "peer"} to RECORD_FILE (peer: the TCP connection's client port). Routes:
`/` a page, `/setcookie` cookies an app might try to plant, `/big?mb=N` N MiB of a known
pattern (bytes sent so far in RECORD_FILE.sent, and in RECORD_FILE.blocked how far it got when
a write first waited over a second), `/ws` a WebSocket echo, `/close` a page sent with
`Connection: close`, `/drop-next` a page after which the next request on the same connection
is dropped unanswered (as an app closing an idle keep-alive connection does).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from aiohttp import WSMsgType, web

PAGE = """<!doctype html><html><head><title>recorder</title></head>
<body><h1>recorder app</h1><p id="cookies"></p></body></html>"""
CHUNK = 64 * 1024


def pattern(index: int) -> bytes:
    return bytes([index % 251]) * CHUNK


def make_app(record: Path) -> web.Application:
    dropping: set[int] = set()

    def transport(request: web.Request) -> asyncio.Transport:
        assert request.transport is not None, "the request's connection is gone"
        return request.transport

    def client_port(request: web.Request) -> int:
        return int(transport(request).get_extra_info("peername")[1])

    @web.middleware
    async def log_headers(request: web.Request, handler):
        peer = client_port(request)
        with record.open("a") as out:
            entry = {
                "path": request.path_qs,
                "headers": list(request.headers.items()),
                "peer": peer,
            }
            out.write(json.dumps(entry) + "\n")
        if peer in dropping:
            dropping.discard(peer)
            transport(request).abort()
            raise ConnectionResetError("dropped as asked")
        return await handler(request)

    async def close(request: web.Request) -> web.Response:
        response = web.Response(text=PAGE, content_type="text/html")
        response.force_close()
        return response

    async def drop_next(request: web.Request) -> web.Response:
        dropping.add(client_port(request))
        return web.Response(text=PAGE, content_type="text/html")

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def setcookie(request: web.Request) -> web.Response:
        response = web.Response(text=PAGE, content_type="text/html")
        response.headers.add("Set-Cookie", "kuberde-session=planted; Path=/")
        response.headers.add("Set-Cookie", "kuberde-app=planted; Path=/")
        response.headers.add("Set-Cookie", "tossed=1; Domain=localhost; Path=/")
        response.headers.add("Set-Cookie", "own=1; Path=/")
        return response

    async def big(request: web.Request) -> web.StreamResponse:
        chunks = int(request.query.get("mb", "1")) * 1024 * 1024 // CHUNK
        response = web.StreamResponse()
        response.content_length = chunks * CHUNK
        await response.prepare(request)
        progress = record.with_suffix(".sent")
        blocked = record.with_suffix(".blocked")
        sent = 0
        writing_since: list[float] = []

        async def watch() -> None:
            # The reader stopped reading once one write waits for over a second.
            while not blocked.exists():
                await asyncio.sleep(0.2)
                if writing_since and time.monotonic() - writing_since[0] > 1.0:
                    blocked.write_text(str(sent))

        watcher = asyncio.create_task(watch())
        try:
            for index in range(chunks):
                writing_since[:] = [time.monotonic()]
                await response.write(pattern(index))
                writing_since.clear()
                sent += CHUNK
                progress.write_text(str(sent))
        finally:
            watcher.cancel()
        await response.write_eof()
        return response

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=["echo.v1"])
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                await ws.send_str("echo:" + message.data)
            elif message.type is WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        return ws

    app = web.Application(middlewares=[log_headers])
    app.router.add_get("/", index)
    app.router.add_get("/setcookie", setcookie)
    app.router.add_get("/big", big)
    app.router.add_get("/ws", echo)
    app.router.add_get("/close", close)
    app.router.add_get("/drop-next", drop_next)
    return app


if __name__ == "__main__":
    web.run_app(make_app(Path(sys.argv[2])), host="127.0.0.1", port=int(sys.argv[1]))
