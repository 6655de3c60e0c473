"""The user's end of a `/connect` WebSocket, and `kuberde connect`'s stdin/stdout bridge.

Binary messages are the stream's bytes; text messages are JSON events (docs/protocol.md).
Everything the user should read goes to stderr: as an ssh ProxyCommand, stdout *is* the
SSH byte stream. The data path runs on Protocol callbacks (DESIGN.md §8): local reads are
sent as big messages with one send in flight, reading pauses while sends queue up, and the
WebSocket is not read while the local writer is paused, so both directions have backpressure.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any, TextIO, cast

import aiohttp
from aiohttp import ClientWebSocketResponse, WSMessage, WSMsgType

from kuberde.cli.config import ClientSettings, connect_url
from kuberde.cli.login import Credentials, RefreshError, unauthorized_message
from kuberde.tls import client_ssl_context

__all__ = [
    "Bridge",
    "ConnectError",
    "EventHandler",
    "Outcome",
    "Tunnel",
    "WakeProgress",
    "claim_stdio",
    "close_message",
    "connect_stdio",
    "gateway_session",
    "open_authorized",
    "open_connection",
    "refusal_message",
    "run_stdio_bridge",
]

EventHandler = Callable[[Mapping[str, Any]], None]

#: Read size for stdin and the coalescing bound for queued local bytes (DESIGN.md §8: big
#: messages are cheaper per byte).
READ_SIZE = 256 * 1024
_COALESCE_LIMIT = 256 * 1024
_MAX_MESSAGE = 16 * 1024 * 1024
_HANDSHAKE_TIMEOUT = 30.0
#: The gateway sends `waking` about once a second; this much silence before the stream is
#: open means it is stuck. Once it is open there is no heartbeat: aiohttp's would kill a
#: connection whose local reader merely stopped reading (backpressure stops our reads too).
_SILENCE_TIMEOUT = 30.0
_CLOSE_TIMEOUT = 5.0
_MAX_ERROR_BODY = 64 * 1024
_EOF_EVENT = '{"event":"eof"}'
_NORMAL_CLOSE = 1000
_ABNORMAL_CLOSE = 1006
_CLOSE_TYPES = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR})


class ConnectError(Exception):
    """A connection that could not be opened; the message is meant for the user.

    `status` is the HTTP status the gateway answered instead of the upgrade, if it did.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Refused(Exception):
    def __init__(self, status: int, detail: str | None) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail


def refusal_message(status: int, detail: str | None, agent: str) -> str:
    """A human message for an HTTP error the gateway answered instead of the upgrade."""
    if status == 401:
        return f"not authorized: {detail or 'token rejected'} — run `kuberde login`"
    if status == 403:
        return f"forbidden: {detail or f'you may not connect to {agent}'}"
    if status == 404:
        return f"not found: {detail or f'no agent named {agent!r}'}"
    if status == 400:
        return f"bad request: {detail or 'the gateway refused the port or kind'}"
    return f"the gateway answered HTTP {status}" + (f": {detail}" if detail else "")


def close_message(code: int | None, reason: str | None, agent: str) -> str | None:
    """What a close code means for the user; None when the connection ended normally."""
    if code == _NORMAL_CLOSE:
        return None
    if code == 4500:
        return f"connection reset: {reason}" if reason else "the workspace reset the connection"
    if code == 4409:
        return f"{agent} is unavailable: {reason or 'it cannot run'}"
    if reason:
        return reason
    defaults = {
        4404: f"agent {agent} went away",
        4408: f"agent {agent} did not come online in time",
        4503: "the gateway is shutting down",
    }
    if code in defaults:
        return defaults[code]
    if code is None or code == _ABNORMAL_CLOSE:
        return "lost the connection to the gateway"
    return f"the gateway closed the connection (code {code})"


class WakeProgress:
    """Shows `waking demo… 2.1s` on stderr while the gateway wakes a workspace.

    On a terminal one line is overwritten; otherwise a line is printed every few seconds so
    logs stay short. Safe to share between connections to the same agent.
    """

    def __init__(
        self,
        agent: str,
        stream: TextIO,
        *,
        interactive: bool | None = None,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._agent = agent
        self._stream = stream
        self._interactive = stream.isatty() if interactive is None else interactive
        self._interval = interval
        self._clock = clock
        self._last_print: float | None = None
        #: When the wake began on our clock (the gateway reports elapsed time in whole steps).
        self._since: float | None = None
        self._line_open = False

    def __call__(self, event: Mapping[str, Any]) -> None:
        name = event.get("event")
        if name == "waking":
            self._waking(event.get("elapsed_s"))
        elif name == "connected" and self._since is not None:
            waited = self._clock() - self._since
            self._write(f"{self._agent} is up after {waited:.1f}s\n", overwrite=True)
            self._line_open = False
            self._since = None
            self._last_print = None

    def end_line(self) -> None:
        """Finish an overwritten progress line so the next message starts on its own."""
        if self._line_open:
            self._write("\n", overwrite=False)
            self._line_open = False

    def _waking(self, raw: object) -> None:
        elapsed = float(raw) if isinstance(raw, int | float) else 0.0
        if self._since is None:
            self._since = self._clock() - elapsed
        text = f"waking {self._agent}… {elapsed:.1f}s"
        if self._interactive:
            self._write(text, overwrite=True)
            self._line_open = True
            return
        now = self._clock()
        if self._last_print is None or now - self._last_print >= self._interval:
            self._last_print = now
            self._write(text + "\n", overwrite=False)

    def _write(self, text: str, *, overwrite: bool) -> None:
        if overwrite and self._interactive:
            text = "\r\x1b[K" + text
        self._stream.write(text)
        self._stream.flush()


@dataclass
class Tunnel:
    """An open `/connect` WebSocket whose stream reached the workspace.

    `first` is a message that arrived in place of `connected` (data or `eof`); the bridge
    handles it before reading more.
    """

    ws: ClientWebSocketResponse
    agent: str
    first: WSMessage | None = None


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    message: str | None = None


async def _check_upgrade(response: aiohttp.ClientResponse) -> None:
    """Turn an HTTP error answered instead of the upgrade into `_Refused`, keeping the
    gateway's JSON `error` (aiohttp would otherwise drop the body)."""
    if response.status < 400:
        return
    detail: str | None = None
    body = b""
    try:
        while len(body) < _MAX_ERROR_BODY:
            chunk = await response.content.read(_MAX_ERROR_BODY - len(body))
            if not chunk:
                break
            body += chunk
        data = json.loads(body)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        detail = data["error"]
    raise _Refused(response.status, detail)


def gateway_session(settings: ClientSettings) -> aiohttp.ClientSession:
    """An HTTP session for the gateway; share it between connections to the same gateway."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=_HANDSHAKE_TIMEOUT)
    secure = settings.server.startswith(("https:", "wss:"))
    connector = aiohttp.TCPConnector(ssl=client_ssl_context(settings.ca_file) if secure else True)
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, raise_for_status=_check_upgrade
    )


async def open_connection(
    settings: ClientSettings,
    agent: str,
    port: int | None,
    kind: str,
    *,
    on_event: EventHandler | None,
    session: aiohttp.ClientSession,
) -> Tunnel:
    """Upgrade to the gateway's `/connect` WebSocket and wait until the stream is open.

    `waking` progress goes to `on_event`. Raises ConnectError with a user-facing message.
    """
    url = connect_url(settings.server, agent, port, kind)
    try:
        async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
            ws = await session.ws_connect(
                url,
                headers={"Authorization": f"Bearer {settings.token}"},
                compress=0,
                max_msg_size=_MAX_MESSAGE,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=_CLOSE_TIMEOUT),
            )
    except _Refused as exc:
        raise ConnectError(
            refusal_message(exc.status, exc.detail, agent), status=exc.status
        ) from None
    except aiohttp.ClientConnectorCertificateError as exc:
        raise ConnectError(
            f"the certificate of {settings.server} is not trusted ({exc.certificate_error}); "
            "pass --ca-file or set KUBERDE_CA_FILE"
        ) from None
    except aiohttp.ClientConnectorError as exc:
        raise ConnectError(
            f"cannot reach the gateway at {settings.server}: {exc.strerror or exc}"
        ) from None
    except aiohttp.WSServerHandshakeError as exc:
        raise ConnectError(
            f"{settings.server} did not accept the WebSocket upgrade (HTTP {exc.status})"
        ) from None
    except aiohttp.ClientError as exc:
        raise ConnectError(f"cannot connect to {settings.server}: {exc}") from None
    except TimeoutError:
        raise ConnectError(
            f"the gateway at {settings.server} did not answer within {_HANDSHAKE_TIMEOUT:g}s"
        ) from None
    try:
        first = await _await_stream(ws, agent, on_event)
    except BaseException:
        await ws.close()
        raise
    return Tunnel(ws=ws, agent=agent, first=first)


async def open_authorized(
    credentials: Credentials,
    agent: str,
    port: int | None,
    kind: str,
    *,
    on_event: EventHandler | None,
    session: aiohttp.ClientSession,
) -> Tunnel:
    """`open_connection` with the stored login's token, renewed before it expires; after a
    401 the login is renewed once and the connection tried again."""
    settings = await credentials.fresh()
    try:
        return await open_connection(
            settings, agent, port, kind, on_event=on_event, session=session
        )
    except ConnectError as exc:
        if exc.status != 401:
            raise
        try:
            renewed = await credentials.renew(settings)
        except RefreshError as failure:
            raise ConnectError(unauthorized_message(failure), status=401) from None
        if renewed is None:
            raise
    return await open_connection(renewed, agent, port, kind, on_event=on_event, session=session)


async def _await_stream(
    ws: ClientWebSocketResponse, agent: str, on_event: EventHandler | None
) -> WSMessage | None:
    error: str | None = None
    while True:
        try:
            message = await ws.receive(timeout=_SILENCE_TIMEOUT)
        except TimeoutError:
            raise ConnectError(
                f"the gateway sent nothing for {_SILENCE_TIMEOUT:g}s while opening {agent}"
            ) from None
        if message.type is WSMsgType.BINARY:
            return message
        if message.type is WSMsgType.TEXT:
            event = _parse_event(message.data)
            if event is None:
                continue
            name = event.get("event")
            if name == "error":
                error = str(event.get("message", "")) or None
                continue
            if name == "eof":
                return message
            if on_event is not None:
                on_event(event)
            if name == "connected":
                return None
            continue
        if message.type in _CLOSE_TYPES:
            reason = error or (message.extra if message.type is WSMsgType.CLOSE else None)
            code = ws.close_code
            raise ConnectError(
                close_message(code, reason, agent)
                or f"the gateway closed the connection to {agent} before it opened"
            )


def _parse_event(text: object) -> dict[str, Any] | None:
    if not isinstance(text, str):
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


class Bridge:
    """Moves bytes between local transports and one tunnel, with backpressure both ways.

    Local → WebSocket: what the reader delivers is sent at once if no send is in flight,
    otherwise queued and coalesced; reading pauses once the queue is big. Local EOF becomes
    an `eof` event after the queued bytes. WebSocket → local: binary messages are written to
    the writer, and the WebSocket is not read while the writer is paused. The gateway's `eof`
    half-closes the writer. When both directions have finished the bridge closes the
    WebSocket normally.
    """

    def __init__(self, tunnel: Tunnel, *, on_event: EventHandler | None = None) -> None:
        self._ws = tunnel.ws
        self._agent = tunnel.agent
        self._first = tunnel.first
        self._on_event = on_event
        self._loop = asyncio.get_running_loop()
        self._reader: asyncio.ReadTransport | None = None
        self._writer: asyncio.WriteTransport | None = None
        self._half_close: Callable[[], None] | None = None
        self._send_task: asyncio.Task[None] | None = None
        self._queued: list[bytes] = []
        self._queued_size = 0
        self._reading_paused = False
        self._local_eof = False
        self._eof_delivered = False
        self._uplink_broken = False
        self._downlink_done = False
        self._local_lost = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._error: str | None = None
        self._close_task: asyncio.Task[bool] | None = None

    # ---- the local side ----------------------------------------------------------------

    def attach_reader(self, transport: asyncio.ReadTransport) -> None:
        self._reader = transport

    def attach_writer(
        self, transport: asyncio.WriteTransport, half_close: Callable[[], None]
    ) -> None:
        self._writer = transport
        self._half_close = half_close

    def data_received(self, data: bytes) -> None:
        if self._local_eof or self._uplink_broken:
            return
        if self._send_task is None:
            self._send(data)
            return
        self._queued.append(data)
        self._queued_size += len(data)
        if self._queued_size >= _COALESCE_LIMIT:
            self._pause_reading()

    def eof_received(self) -> None:
        if self._local_eof or self._uplink_broken:
            return
        self._local_eof = True
        if self._send_task is None:
            self._send_eof()

    def pause_writing(self) -> None:
        if self._close_task is None:
            self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def local_lost(self) -> None:
        """The local side is gone in both directions: end the tunnel."""
        self._local_lost = True
        self._writer = None
        self._writable.set()
        self._finish()

    # ---- local → WebSocket ---------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._send_task = self._loop.create_task(self._ws.send_bytes(data))
        self._send_task.add_done_callback(self._sent)

    def _send_eof(self) -> None:
        self._send_task = self._loop.create_task(self._ws.send_str(_EOF_EVENT))
        self._send_task.add_done_callback(self._eof_sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._send_task = None
        if task.cancelled() or task.exception() is not None:
            self._uplink_failed()
            return
        if self._queued:
            data = self._queued[0] if len(self._queued) == 1 else b"".join(self._queued)
            self._queued.clear()
            self._queued_size = 0
            self._send(data)
            self._resume_reading()
        elif self._local_eof:
            self._send_eof()
        else:
            self._resume_reading()

    def _eof_sent(self, task: asyncio.Task[None]) -> None:
        self._send_task = None
        if task.cancelled() or task.exception() is not None:
            self._uplink_failed()
            return
        self._eof_delivered = True
        if self._downlink_done:
            self._finish()

    def _uplink_failed(self) -> None:
        """The WebSocket is going away; the receive loop reports why."""
        self._uplink_broken = True
        self._queued.clear()
        self._pause_reading()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._reader is not None and not self._reader.is_closing():
            self._reading_paused = True
            self._reader.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._reader is not None and not self._reader.is_closing():
            self._reading_paused = False
            self._reader.resume_reading()

    # ---- WebSocket → local ---------------------------------------------------------------

    async def run(self) -> Outcome:
        """Relay until both directions finish or the WebSocket closes."""
        try:
            close_reason = await self._receive_loop()
        finally:
            if self._send_task is not None:
                self._send_task.cancel()
        if self._close_task is not None:
            await self._close_task
        if self._local_lost or (self._eof_delivered and self._downlink_done):
            return Outcome(0)
        message = close_message(self._ws.close_code, self._error or close_reason, self._agent)
        return Outcome(0) if message is None else Outcome(1, message)

    async def _receive_loop(self) -> str | None:
        message = self._first
        self._first = None
        while True:
            if message is None:
                if not self._writable.is_set():
                    await self._writable.wait()
                message = await self._ws.receive()
            kind = message.type
            if kind is WSMsgType.BINARY:
                if self._writer is not None and not self._downlink_done:
                    self._writer.write(message.data)
            elif kind is WSMsgType.TEXT:
                self._event(message.data)
            elif kind is WSMsgType.CLOSE:
                reason: str | None = message.extra
                return reason
            elif kind in _CLOSE_TYPES:
                return None
            message = None

    def _event(self, text: object) -> None:
        event = _parse_event(text)
        if event is None:
            return
        name = event.get("event")
        if name == "eof":
            if not self._downlink_done:
                self._downlink_done = True
                if self._half_close is not None and self._writer is not None:
                    self._half_close()
            if self._eof_delivered:
                self._finish()
        elif name == "error":
            self._error = str(event.get("message", "")) or None
        elif self._on_event is not None:
            self._on_event(event)

    def _finish(self) -> None:
        self._writable.set()
        if self._close_task is None and not self._ws.closed:
            self._close_task = self._loop.create_task(self._ws.close(code=_NORMAL_CLOSE))


# ---- stdin/stdout ----------------------------------------------------------------------


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


def _pollable(fd: int) -> bool:
    """Pipes, sockets and terminals; not regular files or devices such as /dev/null."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


async def _open_reader(fd: int, protocol: asyncio.Protocol) -> asyncio.ReadTransport:
    loop = asyncio.get_running_loop()
    file = os.fdopen(fd, "rb", buffering=0)
    if not _pollable(fd):
        return _FileReadTransport(loop, file, protocol)
    transport, _ = await loop.connect_read_pipe(lambda: protocol, file)
    return transport


async def _open_writer(fd: int, protocol: asyncio.Protocol) -> asyncio.WriteTransport:
    loop = asyncio.get_running_loop()
    file = os.fdopen(fd, "wb", buffering=0)
    if not _pollable(fd):
        transport: asyncio.WriteTransport = _FileWriteTransport(loop, file, protocol)
        await asyncio.sleep(0)
        return transport
    transport, _ = await loop.connect_write_pipe(lambda: protocol, file)
    return transport


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
        writer = await _open_writer(stdout_fd, stdout)
        bridge.attach_writer(writer, stdout.close)
        reader = await _open_reader(stdin_fd, _StdinProtocol(bridge))
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
