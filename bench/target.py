"""The far end of every path: sink, echo and banner servers on asyncio Protocols.

It runs in its own process so it never competes with the measuring client for an event
loop, and it is the same process for every path, so its cost cancels out of the ratios. The
sink answers a half-close with the number of bytes it received (8 bytes, big-endian): a
client stops its clock only when every byte has provably arrived. The echo server alone,
on a fixed port, is also the workload of the wake benchmark.

    python -m bench.target [--sink PORT] [--echo PORT] [--banner PORT]

prints one JSON line with the ports it listens on (0 picks a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import sys
from collections.abc import Callable
from typing import cast

__all__ = ["BANNER", "COUNT_SIZE", "main"]

BANNER = b"KUBERDE-BENCH-BANNER 1.0\r\n"
COUNT_SIZE = 8


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._received += len(data)

    def eof_received(self) -> bool:
        assert self._transport is not None
        self._transport.write(self._received.to_bytes(COUNT_SIZE, "big"))
        self._transport.close()
        return True


class _Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def eof_received(self) -> bool:
        assert self._transport is not None
        self._transport.close()
        return True


class _Banner(_Echo):
    """Server-first, like sshd: the banner leaves before the client says anything."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        cast(asyncio.Transport, transport).write(BANNER)


async def _serve(ports: dict[str, int]) -> None:
    loop = asyncio.get_running_loop()
    factories: dict[str, Callable[[], asyncio.Protocol]] = {
        "sink": _Sink,
        "echo": _Echo,
        "banner": _Banner,
    }
    servers: list[asyncio.Server] = []
    bound: dict[str, int] = {}
    for role, port in ports.items():
        server = await loop.create_server(factories[role], "127.0.0.1", port, backlog=1024)
        servers.append(server)
        bound[role] = server.sockets[0].getsockname()[1]
    print(json.dumps(bound), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.target")
    for role in ("sink", "echo", "banner"):
        parser.add_argument(f"--{role}", type=int, metavar="PORT")
    args = parser.parse_args(argv)
    ports = {
        role: port
        for role in ("sink", "echo", "banner")
        if (port := getattr(args, role)) is not None
    }
    if not ports:
        parser.error("give at least one of --sink, --echo, --banner")
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(ports))
    else:
        uvloop.run(_serve(ports))
    sys.exit(0)


if __name__ == "__main__":
    main()
