"""Local transports for files that cannot be polled, and the choice between them and pipes.

`kuberde connect < file > /dev/null` must work as well as a pipe or a terminal: the event
loop's pipe transports refuse regular files and devices (uvloop aborts), so those get
inline, hand-written transports with the same Protocol interface.
"""

from __future__ import annotations

import asyncio
import os
import stat
from typing import IO

from kuberde.cli.bridge import READ_SIZE

__all__ = ["open_reader", "open_writer"]


class _FileReadTransport(asyncio.ReadTransport):
    """Reads a file that cannot be polled (`< file`, `< /dev/null`); the loop's pipe
    transports refuse those (uvloop aborts). Such reads never block for long, so they
    happen inline, one chunk per loop turn.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, file: IO[bytes], protocol: asyncio.Protocol
    ) -> None:
        super().__init__()
        self._loop = loop
        self._file = file
        self._protocol = protocol
        self._paused = False
        self._closing = False
        self._scheduled = True
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._read)

    def _read(self) -> None:
        self._scheduled = False
        if self._paused or self._closing:
            return
        data = self._file.read(READ_SIZE)
        if data:
            self._protocol.data_received(data)
            self._schedule()
        else:
            self._protocol.eof_received()
            self.close()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._read)

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False
        self._schedule()

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._file.close()
            self._loop.call_soon(self._protocol.connection_lost, None)


class _FileWriteTransport(asyncio.WriteTransport):
    """Writes to a file that cannot be polled (`> file`, `> /dev/null`), inline."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, file: IO[bytes], protocol: asyncio.Protocol
    ) -> None:
        super().__init__()
        self._loop = loop
        self._file = file
        self._protocol = protocol
        self._closing = False
        loop.call_soon(protocol.connection_made, self)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        view = memoryview(data)
        try:
            while view:
                written = self._file.write(view) or 0
                view = view[written:]
        except OSError as exc:
            self._closing = True
            self._file.close()
            self._loop.call_soon(self._protocol.connection_lost, exc)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._file.close()
            self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()


def _pollable(fd: int) -> bool:
    """Pipes, sockets and terminals; not regular files or devices such as /dev/null."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


async def open_reader(fd: int, protocol: asyncio.Protocol) -> asyncio.ReadTransport:
    """A read transport for `fd` (owned from now on): the loop's pipe transport if it can
    be polled, else an inline one."""
    loop = asyncio.get_running_loop()
    file = os.fdopen(fd, "rb", buffering=0)
    if not _pollable(fd):
        return _FileReadTransport(loop, file, protocol)
    transport, _ = await loop.connect_read_pipe(lambda: protocol, file)
    return transport


async def open_writer(fd: int, protocol: asyncio.Protocol) -> asyncio.WriteTransport:
    """A write transport for `fd` (owned from now on), chosen as for `open_reader`."""
    loop = asyncio.get_running_loop()
    file = os.fdopen(fd, "wb", buffering=0)
    if not _pollable(fd):
        transport: asyncio.WriteTransport = _FileWriteTransport(loop, file, protocol)
        await asyncio.sleep(0)
        return transport
    transport, _ = await loop.connect_write_pipe(lambda: protocol, file)
    return transport
