"""Accepting every connection the kernel has queued, each time the listening socket is ready.

uvloop's server (libuv underneath) accepts one connection per loop turn. Under load a turn
takes tens of milliseconds, so the gateway took in ~30 connections a second while the soak's
users and agents asked for more: the accept queue stayed full, the kernel dropped SYNs, and
clients waited for their retransmits (1 s, 3 s, 7 s): stream setup p50 was 5-7 s at 65% CPU
(`python -m bench.soak`, `nstat TcpExtListenOverflows`). Here each ready event drains the
queue, up to `BATCH` connections, as the standard library's loop does, and the socket keeps
the backlog it was given at `listen` (asyncio and uvloop would reset it to 128).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Callable

__all__ = ["BATCH", "Acceptor"]

log = logging.getLogger(__name__)

#: Connections taken per ready event, so one turn cannot be spent accepting alone.
BATCH = 256
#: After running out of file descriptors (or memory), how long to leave the queue alone.
RETRY_DELAY = 1.0
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Acceptor(asyncio.AbstractServer):
    """A listening socket served with `loop.connect_accepted_socket` (TLS included)."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._protocol_factory = protocol_factory
        self._ssl_context = ssl_context
        self._handshakes: set[asyncio.Task[None]] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._serving = False
        self._closed = asyncio.Event()
        sock.setblocking(False)
        self._start()

    def _start(self) -> None:
        self._retry = None
        self._serving = True
        self._loop.add_reader(self._sock.fileno(), self._accept_queued)

    def _accept_queued(self) -> None:
        for _ in range(BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                log.warning("accepting connections paused for %gs: %s", RETRY_DELAY, exc)
                self._loop.remove_reader(self._sock.fileno())
                self._serving = False
                self._retry = self._loop.call_later(RETRY_DELAY, self._start)
                return
            conn.setblocking(False)
            handshake = self._loop.create_task(self._serve(conn))
            self._handshakes.add(handshake)
            handshake.add_done_callback(self._handshakes.discard)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(
                self._protocol_factory, conn, ssl=self._ssl_context
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            log.debug("a connection ended before it was served: %s", exc)
            conn.close()
        except asyncio.CancelledError:
            conn.close()
            raise

    def close(self) -> None:
        if self._closed.is_set():
            return
        if self._retry is not None:
            self._retry.cancel()
        elif self._serving:
            self._loop.remove_reader(self._sock.fileno())
        self._serving = False
        for handshake in self._handshakes:
            handshake.cancel()
        self._sock.close()
        self._closed.set()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        """It serves from construction on."""

    async def serve_forever(self) -> None:
        await self.wait_closed()

    async def wait_closed(self) -> None:
        await self._closed.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._handshakes, return_exceptions=True)
