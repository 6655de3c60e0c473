"""`kuberde connect`: a workspace port on stdin/stdout, for ssh's ProxyCommand.

Everything the user should read goes to stderr: as an ssh ProxyCommand, stdout *is* the
SSH byte stream.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import TextIO, cast

from kuberde.cli.bridge import Bridge, Outcome
from kuberde.cli.config import ClientSettings
from kuberde.cli.filetransport import open_reader, open_writer
from kuberde.cli.login import Credentials
from kuberde.cli.progress import WakeProgress
from kuberde.cli.tunnel import ConnectError, EventHandler, Tunnel, gateway_session, open_authorized

__all__ = ["claim_stdio", "connect_stdio", "run_stdio_bridge"]


def claim_stdio() -> tuple[int, int]:
    """Take fds 0 and 1 for the byte stream and leave /dev/null in their place.

    Holding the only copy of stdout is what lets a half-close reach the reader (ssh sees
    EOF); and nothing printed by accident can corrupt the stream.
    """
    sys.stdout.flush()
    stdin_fd, stdout_fd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(null, 0)
        os.dup2(null, 1)
    finally:
        os.close(null)
    return stdin_fd, stdout_fd


class _StdinProtocol(asyncio.Protocol):
    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, hence casts rather than checks.
        self._bridge.attach_reader(cast(asyncio.ReadTransport, transport))

    def data_received(self, data: bytes) -> None:
        self._bridge.data_received(data)

    def eof_received(self) -> bool | None:
        self._bridge.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._bridge.eof_received()


class _StdoutProtocol(asyncio.Protocol):
    def __init__(self, bridge: Bridge, closed: asyncio.Future[None]) -> None:
        self._bridge = bridge
        self._closed = closed
        self._transport: asyncio.WriteTransport | None = None
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.WriteTransport, transport)

    def close(self) -> None:
        """Flush what is buffered, then close: the reader of our stdout sees EOF."""
        if self._transport is not None and not self._closing:
            self._closing = True
            self._transport.close()

    def pause_writing(self) -> None:
        self._bridge.pause_writing()

    def resume_writing(self) -> None:
        self._bridge.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closing:
            self._bridge.local_lost()
        if not self._closed.done():
            self._closed.set_result(None)


def _keep_terminal_blocking(fd: int) -> Callable[[], None]:
    """A pipe transport makes its fd non-blocking; on a terminal that is shared with the
    shell, so keep a copy to undo it when we are done."""
    if not os.isatty(fd):
        return lambda: None
    keeper = os.dup(fd)
    blocking = os.get_blocking(fd)

    def restore() -> None:
        os.set_blocking(keeper, blocking)
        os.close(keeper)

    return restore


async def run_stdio_bridge(
    tunnel: Tunnel, stdin_fd: int, stdout_fd: int, *, on_event: EventHandler | None = None
) -> Outcome:
    """Bridge `stdin_fd`/`stdout_fd` (owned from now on) to `tunnel` until it ends.

    Only stream bytes are written to `stdout_fd`; stdout is flushed and closed before return.
    """
    restore = [_keep_terminal_blocking(stdin_fd), _keep_terminal_blocking(stdout_fd)]
    bridge = Bridge(tunnel, on_event=on_event)
    stdout_closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    stdout = _StdoutProtocol(bridge, stdout_closed)
    try:
        writer = await open_writer(stdout_fd, stdout)
        bridge.attach_writer(writer, stdout.close)
        reader = await open_reader(stdin_fd, _StdinProtocol(bridge))
        try:
            outcome = await bridge.run()
        finally:
            reader.close()
            stdout.close()
        await stdout_closed
        return outcome
    finally:
        for undo in restore:
            undo()


async def connect_stdio(
    settings: ClientSettings,
    agent: str,
    port: int | None,
    kind: str,
    *,
    stderr: TextIO | None = None,
) -> int:
    """`kuberde connect`: open the tunnel, then bridge stdin/stdout. Returns the exit code."""
    err = sys.stderr if stderr is None else stderr
    progress = WakeProgress(agent, err)
    credentials = Credentials(settings)
    async with gateway_session(settings) as session:
        try:
            tunnel = await open_authorized(
                credentials, agent, port, kind, on_event=progress, session=session
            )
        except ConnectError as exc:
            progress.end_line()
            print(f"kuberde: {exc}", file=err)
            return 1
        stdin_fd, stdout_fd = claim_stdio()
        outcome = await run_stdio_bridge(tunnel, stdin_fd, stdout_fd, on_event=progress)
        if not tunnel.ws.closed:
            await tunnel.ws.close()
    if outcome.message:
        progress.end_line()
        print(f"kuberde: {outcome.message}", file=err)
    return outcome.exit_code
