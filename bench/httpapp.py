"""The web app of the HTTP benchmark: a small page and a 10 MB download, on aiohttp.

It is the workload of a `kuberde up` workspace, and the very same process is also reached
directly and through configurable-http-proxy, so its own cost cancels out of the ratios.
Both bodies are built once at start-up: a request costs the server no more than writing it.

    python -m bench.httpapp --port PORT
"""

from __future__ import annotations

import argparse

from aiohttp import web

__all__ = ["LARGE_PATH", "LARGE_SIZE", "SMALL_PATH", "SMALL_SIZE", "main"]

SMALL_PATH = "/small"
LARGE_PATH = "/large"
SMALL_SIZE = 128
LARGE_SIZE = 10 * 1024 * 1024


def _app() -> web.Application:
    small = b"s" * SMALL_SIZE
    large = bytes(LARGE_SIZE)

    async def serve_small(request: web.Request) -> web.Response:
        return web.Response(body=small, content_type="text/plain")

    async def serve_large(request: web.Request) -> web.Response:
        return web.Response(body=large, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get(SMALL_PATH, serve_small)
    app.router.add_get(LARGE_PATH, serve_large)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.httpapp")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    web.run_app(_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
