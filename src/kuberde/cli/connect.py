"""`kuberde connect`: a workspace port on stdin/stdout, for ssh's ProxyCommand.

This runs before every `ssh NAME.kuberde`, so it imports only the standard library: a
blocking upgrade to `/connect` (wscodec), then one selector loop that moves bytes between
stdin/stdout and the socket — no asyncio, no aiohttp, no threads (an SSL socket must not
be used from two threads). Each direction has backpressure: stdin is not read while
bytes for the socket queue up, the socket is not read while stdout is behind.

Everything the user should read goes to stderr: as an ssh ProxyCommand, stdout *is* the
SSH byte stream. Only after a 401 does it load the login code to renew the token.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import ssl
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO
from urllib.parse import urlsplit

from kuberde.cli import wscodec
from kuberde.cli.config import ClientSettings, connect_url
from kuberde.cli.errorfile import report
from kuberde.cli.messages import (
    EOF_EVENT,
    NORMAL_CLOSE,
    ConnectError,
    EventHandler,
    close_message,
    parse_event,
    refusal_message,
)
from kuberde.cli.progress import WakeProgress
from kuberde.messages import unreachable
from kuberde.tls import client_ssl_context

__all__ = [
    "Outcome",
    "claim_stdio",
    "connect_stdio",
    "open_authorized",
    "open_link",
    "run_connect",
]

#: Read size, and the bound on bytes queued for either side (DESIGN.md §9: big messages
#: are cheaper per byte).
READ_SIZE = 256 * 1024
_MAX_MESSAGE = 16 * 1024 * 1024
_DIAL_TIMEOUT = 10.0
_HANDSHAKE_TIMEOUT = 30.0
#: The gateway sends `waking` about once a second; this much silence before the stream is
#: open means it is stuck. Once it is open there is no heartbeat: a local reader that
#: stops reading stops our reads too, and that must not look like a dead connection.
_SILENCE_TIMEOUT = 30.0
_CLOSE_TIMEOUT = 5.0
_MAX_ERROR_BODY = 64 * 1024
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


@dataclass(frozen=True)
class Outcome:
    """How a bridged connection ended: the exit code, and what to tell the user if not fine."""

    exit_code: int
    message: str | None = None


@dataclass
class Link:
    """An upgraded `/connect` socket whose stream reached the workspace; `pending` holds
    the messages that arrived with (or in place of) `connected`."""

    sock: socket.socket
    reader: wscodec.FrameReader
    agent: str
    pending: list[wscodec.Message] = field(default_factory=list)


def _new_key() -> bytes:
    return os.urandom(4)


def _send_frame(sock: socket.socket, opcode: int, payload: bytes) -> None:
    sock.sendall(wscodec.encode_frame(opcode, payload, _new_key()))


def _dial(settings: ClientSettings, host: str, port: int) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=_DIAL_TIMEOUT)
    except TimeoutError:
        raise ConnectError(
            f"the gateway at {settings.server} did not answer within {_DIAL_TIMEOUT:g}s"
        ) from None
    except OSError as exc:
        raise ConnectError(
            unreachable(settings.server, (exc.strerror or str(exc)).lower())
        ) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _secure(sock: socket.socket, settings: ClientSettings, host: str) -> ssl.SSLSocket:
    try:
        return client_ssl_context(settings.ca_file).wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise ConnectError(
            f"the certificate of {settings.server} is not trusted "
            f"(certificate verify failed: {exc.verify_message}); "
            "pass --ca-file or set KUBERDE_CA_FILE"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise ConnectError(f"cannot connect to {settings.server}: {exc}") from None


def _refusal_detail(head: wscodec.Upgrade, sock: socket.socket) -> str | None:
    """The gateway's JSON `error` from the body of an HTTP refusal, if it sent one."""
    body = head.rest
    length = head.headers.get("content-length", "")
    want = min(int(length), _MAX_ERROR_BODY) if length.isdigit() else _MAX_ERROR_BODY
    try:
        while len(body) < want and (chunk := sock.recv(want - len(body))):
            body += chunk
    except OSError:
        pass
    try:
        data = json.loads(body)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) else None


def _upgrade(sock: socket.socket, settings: ClientSettings, url: str, agent: str) -> bytes:
    """Send the upgrade request and read the answer; returns bytes that followed it."""
    parts = urlsplit(url)
    key = wscodec.handshake_key()
    target = f"{parts.path}?{parts.query}" if parts.query else parts.path
    sock.sendall(
        wscodec.upgrade_request(
            parts.netloc, target, key, [("Authorization", f"Bearer {settings.token}")]
        )
    )
    buffer = b""
    while (head := wscodec.parse_upgrade(buffer)) is None:
        chunk = sock.recv(READ_SIZE)
        if not chunk:
            raise ConnectError(f"{settings.server} closed the connection during the upgrade")
        buffer += chunk
    if head.status >= 400:
        status = head.status
        raise ConnectError(
            refusal_message(status, _refusal_detail(head, sock), agent), status=status
        )
    if not head.accepted(key):
        raise ConnectError(
            f"{settings.server} did not accept the WebSocket upgrade (HTTP {head.status})"
        )
    return head.rest


def _await_stream(link: Link, on_event: EventHandler | None, data: bytes) -> None:
    """Read events until the stream is open (`connected`), or data or `eof` stand in for it."""
    error: str | None = None
    link.sock.settimeout(_SILENCE_TIMEOUT)
    while True:
        messages = link.reader.feed(data)
        for index, message in enumerate(messages):
            if message.opcode == wscodec.BINARY:
                link.pending.extend(messages[index:])
                return
            if message.opcode == wscodec.PING:
                _send_frame(link.sock, wscodec.PONG, message.data)
            elif message.opcode == wscodec.CLOSE:
                code, reason = wscodec.parse_close(message.data)
                raise ConnectError(
                    close_message(code, error or reason or None, link.agent)
                    or f"the gateway closed the connection to {link.agent} before it opened"
                )
            elif message.opcode == wscodec.TEXT:
                event = parse_event(message.data.decode("utf-8", errors="replace"))
                name = event.get("event") if event is not None else None
                if event is None:
                    continue
                if name == "error":
                    error = str(event.get("message", "")) or None
                elif name == "eof":
                    link.pending.extend(messages[index:])
                    return
                else:
                    if on_event is not None:
                        on_event(event)
                    if name == "connected":
                        link.pending.extend(messages[index + 1 :])
                        return
        try:
            data = link.sock.recv(READ_SIZE)
        except TimeoutError:
            raise ConnectError(
                f"the gateway sent nothing for {_SILENCE_TIMEOUT:g}s while opening {link.agent}"
            ) from None
        if not data:
            raise ConnectError(close_message(None, error, link.agent) or "connection closed")


def open_link(
    settings: ClientSettings,
    agent: str,
    port: int | None,
    kind: str,
    *,
    on_event: EventHandler | None,
) -> Link:
    """Upgrade to the gateway's `/connect` WebSocket and wait until the stream is open.

    Raises ConnectError with a user-facing message (`status` set for HTTP refusals).
    """
    url = connect_url(settings.server, agent, port, kind)
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    sock: socket.socket = _dial(settings, host, parts.port or (443 if secure else 80))
    try:
        sock.settimeout(_HANDSHAKE_TIMEOUT)
        if secure:
            sock = _secure(sock, settings, host)
        link = Link(sock, wscodec.FrameReader(_MAX_MESSAGE), agent)
        _await_stream(link, on_event, _upgrade(sock, settings, url, agent))
    except TimeoutError:
        sock.close()
        raise ConnectError(
            f"the gateway at {settings.server} did not answer within {_HANDSHAKE_TIMEOUT:g}s"
        ) from None
    except wscodec.WebSocketError as exc:
        sock.close()
        raise ConnectError(f"{settings.server} broke the WebSocket protocol: {exc}") from None
    except OSError as exc:
        sock.close()
        raise ConnectError(f"cannot connect to {settings.server}: {exc}") from None
    except BaseException:
        sock.close()
        raise
    return link


def _renewed(settings: ClientSettings) -> ClientSettings | None:
    """Settings with a renewed token after a 401; None when no stored login covers it.

    The login code (aiohttp, PyJWT) is loaded only here, off the fast path.
    """
    import asyncio

    from kuberde.cli.login import Credentials, RefreshError, unauthorized_message

    try:
        return asyncio.run(Credentials(settings).renew(settings))
    except RefreshError as failure:
        raise ConnectError(unauthorized_message(failure), status=401) from None


def open_authorized(
    settings: ClientSettings,
    agent: str,
    port: int | None,
    kind: str,
    *,
    on_event: EventHandler | None,
) -> Link:
    """`open_link` with the given token; after a 401 the stored login is renewed once
    and the connection tried again."""
    try:
        return open_link(settings, agent, port, kind, on_event=on_event)
    except ConnectError as exc:
        if exc.status != 401:
            raise
        renewed = _renewed(settings)
        if renewed is None:
            raise
    return open_link(renewed, agent, port, kind, on_event=on_event)


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


def _pollable(fd: int) -> bool:
    """Pipes, sockets and terminals; not regular files or devices such as /dev/null, which
    epoll refuses (and which never block for long, so they are used inline)."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


def _non_blocking(fd: int) -> Callable[[], None]:
    """Make `fd` non-blocking. On a terminal the flag is shared with the shell, so a kept
    copy lets us put it back when we are done; a pipe's copy would hold it open and keep
    our half-close from reaching the reader, and nobody else shares it."""
    blocking = os.get_blocking(fd)
    os.set_blocking(fd, False)
    if not os.isatty(fd):
        return lambda: None
    keeper = os.dup(fd)

    def restore() -> None:
        os.set_blocking(keeper, blocking)
        os.close(keeper)

    return restore


class _Pump:
    """One selector loop between the local fds and the link, until both directions end.

    Local → socket: each read becomes one binary frame; local EOF becomes an `eof` event.
    Socket → local: binary messages are written out; the gateway's `eof` half-closes
    stdout. When both directions are done the pump closes the WebSocket normally.
    """

    def __init__(
        self, link: Link, stdin_fd: int, stdout_fd: int, on_event: EventHandler | None
    ) -> None:
        self._link = link
        self._sock = link.sock
        self._stdin: int | None = stdin_fd
        self._stdout: int | None = stdout_fd
        self._on_event = on_event
        self._pollable = {fd: _pollable(fd) for fd in (stdin_fd, stdout_fd)}
        self._up = bytearray()
        self._down = bytearray()
        self._eof_queued = False
        self._eof_delivered = False
        self._downlink_done = False
        self._local_lost = False
        self._sock_lost = False
        self._close_sent_at: float | None = None
        self._close: tuple[int | None, str] | None = None
        self._error: str | None = None
        self._selector = selectors.DefaultSelector()
        self._registered: dict[int, int] = {}

    def run(self, on_end: Callable[[Outcome], None]) -> Outcome:
        """Pump until both directions end; `on_end` hears the outcome while the local fds
        are still open, so an error is told before the reader (ssh) sees them close."""
        restore = [_non_blocking(fd) for fd, poll in self._pollable.items() if poll]
        self._sock.setblocking(False)
        try:
            self._handle(self._link.pending)
            self._link.pending.clear()
            self._flush_down()
            while not self._finished():
                self._turn()
            on_end(self._outcome())
        finally:
            self._selector.close()
            for fd in (self._stdin, self._stdout):
                if fd is not None:
                    os.close(fd)
            for undo in restore:
                undo()
        return self._outcome()

    def _outcome(self) -> Outcome:
        if self._local_lost or (self._eof_delivered and self._downlink_done):
            return Outcome(0)
        code, reason = self._close if self._close is not None else (None, "")
        message = close_message(code, self._error or reason or None, self._link.agent)
        return Outcome(0) if message is None else Outcome(1, message)

    def _finished(self) -> bool:
        if self._down and self._stdout is not None:
            return False  # what the gateway sent is written out before anything ends
        if self._sock_lost:
            return True
        if self._close_sent_at is not None:
            replied = self._close is not None and not self._up
            return replied or time.monotonic() - self._close_sent_at > _CLOSE_TIMEOUT
        if (
            self._close is not None
            or self._local_lost
            or (self._eof_delivered and self._downlink_done and not self._down)
        ):
            self._send_close()
        return False

    # ---- one turn of the loop --------------------------------------------------------

    def _want(self) -> dict[int, int]:
        """Which fds to wait for: reads only while the other side keeps up."""
        want: dict[int, int] = {}
        if self._stdin is not None and len(self._up) < READ_SIZE and self._close_sent_at is None:
            want[self._stdin] = selectors.EVENT_READ
        if self._stdout is not None and self._down:
            want[self._stdout] = want.get(self._stdout, 0) | selectors.EVENT_WRITE
        sock_events = selectors.EVENT_WRITE if self._up else 0
        if len(self._down) < READ_SIZE:
            sock_events |= selectors.EVENT_READ
        if sock_events and not self._sock_lost:
            want[self._sock.fileno()] = sock_events
        return want

    def _turn(self) -> None:
        want = self._want()
        ready = {fd: events for fd, events in want.items() if not self._pollable.get(fd, True)}
        buffered = isinstance(self._sock, ssl.SSLSocket) and self._sock.pending() > 0
        sock_fd = self._sock.fileno()
        if buffered and want.get(sock_fd, 0) & selectors.EVENT_READ:
            ready[sock_fd] = selectors.EVENT_READ
        self._register({fd: ev for fd, ev in want.items() if fd not in ready or fd == sock_fd})
        timeout: float | None = 0 if ready else None
        if self._close_sent_at is not None and not self._down:
            left = _CLOSE_TIMEOUT - (time.monotonic() - self._close_sent_at)
            timeout = max(0.0, left) if timeout is None else timeout
        for key, events in self._selector.select(timeout):
            ready[key.fd] = ready.get(key.fd, 0) | events
        if ready.get(sock_fd, 0) & selectors.EVENT_READ:
            self._read_sock()
        if self._stdout is not None and ready.get(self._stdout, 0) & selectors.EVENT_WRITE:
            self._flush_down()
        if self._stdin is not None and ready.get(self._stdin, 0) & selectors.EVENT_READ:
            self._read_stdin()
        if ready.get(sock_fd, 0) & selectors.EVENT_WRITE:
            self._flush_up()

    def _register(self, want: dict[int, int]) -> None:
        """Tell the selector only what changed: one epoll_ctl per change, not per turn."""
        for fd in [fd for fd in self._registered if fd not in want]:
            self._selector.unregister(fd)
            del self._registered[fd]
        for fd, events in want.items():
            if self._registered.get(fd) == events:
                continue
            if fd in self._registered:
                self._selector.modify(fd, events)
            else:
                self._selector.register(fd, events)
            self._registered[fd] = events

    # ---- socket → local --------------------------------------------------------------

    def _read_sock(self) -> None:
        """Read what is there (an SSL socket hands out one record per call)."""
        while len(self._down) < READ_SIZE and not self._sock_lost:
            try:
                data = self._sock.recv(READ_SIZE)
            except _WOULD_BLOCK:
                break
            except OSError:
                data = b""
            if not data:
                self._sock_lost = True
                break
            try:
                self._handle(self._link.reader.feed(data))
            except wscodec.WebSocketError as exc:
                self._error = f"the gateway broke the WebSocket protocol: {exc}"
                self._queue(wscodec.CLOSE, wscodec.close_payload(exc.code))
                self._sock_lost = True
        self._flush_down()

    def _handle(self, messages: list[wscodec.Message]) -> None:
        for message in messages:
            opcode = message.opcode
            if opcode == wscodec.BINARY:
                if self._stdout is not None and not self._downlink_done:
                    self._down += message.data
            elif opcode == wscodec.TEXT:
                self._event(message.data.decode("utf-8", errors="replace"))
            elif opcode == wscodec.PING:
                self._queue(wscodec.PONG, message.data)
            elif opcode == wscodec.CLOSE and self._close is None:
                self._close = wscodec.parse_close(message.data)
                if self._close_sent_at is None:
                    code = self._close[0] or NORMAL_CLOSE
                    self._queue(wscodec.CLOSE, wscodec.close_payload(code))
                    self._close_sent_at = time.monotonic()
                self._flush_up()

    def _event(self, text: str) -> None:
        event = parse_event(text)
        if event is None:
            return
        name = event.get("event")
        if name == "eof":
            self._downlink_done = True
        elif name == "error":
            self._error = str(event.get("message", "")) or None
        elif self._on_event is not None:
            self._on_event(event)

    def _flush_down(self) -> None:
        fd = self._stdout
        if fd is None:
            return
        while self._down:
            try:
                with memoryview(self._down) as view:
                    written = os.write(fd, view)
            except _WOULD_BLOCK:
                return
            except OSError:
                self._lose_local()
                return
            del self._down[:written]
        if self._downlink_done:
            self._stdout = None  # closing it is the half-close the reader sees as EOF
            os.close(fd)

    def _lose_local(self) -> None:
        """The local reader is gone: nothing more to do in either direction."""
        self._local_lost = True
        self._down.clear()
        for fd in (self._stdin, self._stdout):
            if fd is not None:
                os.close(fd)
        self._stdin = self._stdout = None

    # ---- local → socket --------------------------------------------------------------

    def _read_stdin(self) -> None:
        assert self._stdin is not None
        try:
            data = os.read(self._stdin, READ_SIZE)
        except _WOULD_BLOCK:
            return
        except OSError:
            data = b""
        if data:
            self._queue(wscodec.BINARY, data)
        else:
            os.close(self._stdin)
            self._stdin = None
            self._queue(wscodec.TEXT, EOF_EVENT.encode())
            self._eof_queued = True
        self._flush_up()

    def _queue(self, opcode: int, payload: bytes) -> None:
        self._up += wscodec.encode_frame(opcode, payload, _new_key())

    def _flush_up(self) -> None:
        while self._up and not self._sock_lost:
            try:
                with memoryview(self._up) as view:
                    sent = self._sock.send(view)
            except _WOULD_BLOCK:
                return
            except OSError:
                self._sock_lost = True
                return
            del self._up[:sent]
        if self._eof_queued and not self._up:
            self._eof_delivered = True

    def _send_close(self) -> None:
        self._queue(wscodec.CLOSE, wscodec.close_payload(NORMAL_CLOSE))
        self._close_sent_at = time.monotonic()
        self._flush_up()


def connect_stdio(
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
    try:
        link = open_authorized(settings, agent, port, kind, on_event=progress)
    except ConnectError as exc:
        progress.end_line()
        report(str(exc), err)
        return 1

    def tell(outcome: Outcome) -> None:
        if outcome.message:
            progress.end_line()
            report(outcome.message, err)

    try:
        stdin_fd, stdout_fd = claim_stdio()
        outcome = _Pump(link, stdin_fd, stdout_fd, progress).run(tell)
    finally:
        link.sock.close()
    return outcome.exit_code


def run_connect(settings: ClientSettings, agent: str, port: int | None, kind: str) -> int:
    """`kuberde connect` once its arguments are parsed, by Typer or by the fast entry
    point: the exit code, 130 after Ctrl-C."""
    try:
        return connect_stdio(settings, agent, port, kind)
    except KeyboardInterrupt:
        return 130
