"""`GET /session/{agent}`: one WebSocket carrying a user-side mux session (same yamux framing
as the agent's), so `kuberde port-forward` opens a stream per local connection instead of
a WebSocket and a handshake.

The user dials, so the user's streams have odd ids. Each starts with a stream preamble
(port and kind; any user name in it is replaced by the verified one). Every stream is
authorised and counted on its own, as a `/connect` would be: the workspace must still be
the user's, and the per-user and per-agent stream quota applies from the moment the stream
is accepted — a stream over a limit is refused at once with the reason, and a stream cut
for a buffer cap is reset with it; the session and its other streams carry on. The gateway
then opens a
stream to the agent, exactly as for `/connect`, and joins the two on Protocol-style
callbacks: no task per chunk, and window updates to the sender only once the other side
has taken the bytes. The agent sees no difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from kuberde.auth import Principal
from kuberde.gateway.directory import WakeError
from kuberde.gateway.guard import StreamGuard
from kuberde.gateway.limits import LimitExceeded
from kuberde.gateway.registry import AgentConnection
from kuberde.linkbuffers import bound_kernel_buffers
from kuberde.messages import not_found
from kuberde.mux import (
    BULK_FRAME,
    BULK_WINDOW,
    Preamble,
    PreambleError,
    Session,
    SessionClosed,
    SessionConfig,
    Stream,
    StreamReset,
    encode_preamble,
    read_preamble,
)
from kuberde.wslink import WebSocketLink

if TYPE_CHECKING:
    from kuberde.gateway.app import Gateway

__all__ = ["USER_SESSION_CONFIG", "serve_user_session"]

log = logging.getLogger(__name__)

#: Bulk windows as on the agent path. New streams are served as their SYN arrives (no
#: accept backlog): the stream quota is what bounds a user.
USER_SESSION_CONFIG = SessionConfig(receive_window=BULK_WINDOW, max_frame_payload=BULK_FRAME)
_PREAMBLE_TIMEOUT = 10.0


class _Pipe:
    """One direction of a joined pair: `source`'s bytes written into `sink_stream`.

    Bytes are acknowledged to `source`'s sender at once unless `sink_stream`'s send buffer
    is full; then they are acknowledged when it drains (end-to-end backpressure).
    """

    __slots__ = ("_count", "_paused", "_sink_stream", "_source", "_unacked")

    def __init__(self, source: Stream, sink_stream: Stream, count: _Counter) -> None:
        self._source = source
        self._sink_stream = sink_stream
        self._count = count
        self._paused = False
        self._unacked = 0
        sink_stream.set_producer(self._pause, self._resume)

    def start(self) -> None:
        self._source.set_sink(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._sink_stream.write(data)
        except StreamReset as exc:
            self._source.reset(exc.reason)
            return
        if self._paused:
            self._unacked += len(data)
        else:
            self._source.consumed(len(data))
        self._count(len(data))

    def eof_received(self) -> None:
        self._sink_stream.close_write()

    def stream_reset(self, error: StreamReset) -> None:
        self._sink_stream.reset(error.reason)

    def _pause(self) -> None:
        self._paused = True

    def _resume(self) -> None:
        self._paused = False
        if self._unacked:
            self._source.consumed(self._unacked)
            self._unacked = 0


class _Counter:
    """Bytes moved: metrics and the idle clock (which throttles itself)."""

    __slots__ = ("_activity", "_counter", "_target")

    def __init__(self, gateway: Gateway, target: str, *, to_agent: bool) -> None:
        metrics = gateway.metrics
        self._counter = metrics.bytes_to_agent if to_agent else metrics.bytes_from_agent
        self._activity = gateway.activity
        self._target = target

    def __call__(self, size: int) -> None:
        self._counter.inc(size)
        self._activity.bytes_moved(self._target)


async def _agent_for(gateway: Gateway, target: str, user: str) -> AgentConnection | str:
    """The agent's session, woken if need be; else why there is none."""
    record = gateway.directory.lookup(target) if gateway.directory else None
    if record is not None and record.error:
        return record.error
    connection = gateway.registry.get(target)
    if connection is not None and not connection.session.is_closed:
        return connection
    if record is None or gateway.directory is None:
        return f"workspace {target} is not connected"
    gateway.activity.waiting_started(target)
    try:
        gateway.metrics.wakes.inc()
        await gateway.directory.request_wake(target, user)
        async with asyncio.timeout(gateway.settings.wake_timeout):
            connection = await gateway.registry.wait_online(target)
        # A workload that failed on this wake may do so before its agent is online.
        return gateway.unavailable(target) or connection
    except WakeError as exc:
        return str(exc)
    except TimeoutError:
        return f"workspace {target} did not come online within {gateway.settings.wake_timeout:g}s"
    finally:
        gateway.activity.waiting_ended(target)


async def _serve_stream(
    gateway: Gateway,
    user_stream: Stream,
    user: Principal,
    reference: str,
    target: str,
    guard: StreamGuard,
) -> None:
    """Authorise one admitted user stream, open its agent stream and join them until both
    end; `guard` counts what both hold from the start."""
    with guard:
        guard.attach(user_stream)
        try:
            async with asyncio.timeout(_PREAMBLE_TIMEOUT):
                preamble, rest = await read_preamble(user_stream)
        except (TimeoutError, PreambleError) as exc:
            user_stream.reset(f"bad stream preamble: {exc}")
            return
        except StreamReset:
            return
        resolved = await gateway.resolve(reference, user)
        if resolved is None or resolved[0] != target:  # no longer the user's: as /connect
            user_stream.reset(not_found(reference))
            return
        agent_stream = await _open_agent_stream(
            gateway, target, Preamble(preamble.port, preamble.kind, user.name)
        )
        if isinstance(agent_stream, str):
            user_stream.reset(agent_stream)
            return
        guard.attach(agent_stream)
        await _join(gateway, target, user_stream, agent_stream, rest)
        if guard.exceeded is not None:
            log.info("cut a stream of %s to %s: %s", user.name, target, guard.exceeded.reason)


async def _open_agent_stream(gateway: Gateway, target: str, preamble: Preamble) -> Stream | str:
    initial = encode_preamble(preamble)
    for _ in range(2):  # an agent may drop between lookup and open: wait for it once more
        connection = await _agent_for(gateway, target, preamble.user)
        if isinstance(connection, str):
            return connection
        with contextlib.suppress(SessionClosed):
            return connection.session.open_stream(initial)
    return f"workspace {target} went away while connecting"


async def _join(
    gateway: Gateway, target: str, user_stream: Stream, agent_stream: Stream, rest: bytes
) -> None:
    gateway.activity.stream_opened(target)
    gateway.metrics.open_streams.inc()
    try:
        if rest:
            agent_stream.write(rest)
        upward = _Pipe(user_stream, agent_stream, _Counter(gateway, target, to_agent=True))
        downward = _Pipe(agent_stream, user_stream, _Counter(gateway, target, to_agent=False))
        upward.start()
        downward.start()
        await user_stream.wait_closed()
        await agent_stream.wait_closed()
    finally:
        for stream in (user_stream, agent_stream):
            if not stream.is_closed:
                stream.reset("the other side went away")
        gateway.activity.stream_closed(target)
        gateway.metrics.open_streams.dec()


async def serve_user_session(gateway: Gateway, request: web.Request) -> web.StreamResponse:
    """The `/session/{agent}` handler: refusals before the upgrade are HTTP errors, as for
    `/connect`; after it, each stream that cannot be served is reset with the reason."""
    from kuberde.gateway.app import CloseCode, json_error  # app.py registers this handler

    user = await gateway.authenticate(request, "user")
    reference = request.match_info["agent"]
    resolved = await gateway.resolve(reference, user)
    if resolved is None:
        raise json_error(web.HTTPNotFound, not_found(reference), "not_found")
    target, owner = resolved
    ws = web.WebSocketResponse(
        compress=False, max_msg_size=gateway.settings.max_message_size, autoping=True
    )
    await ws.prepare(request)
    bound_kernel_buffers(request.transport)
    streams: set[asyncio.Task[None]] = set()

    def serve(stream: Stream) -> None:
        try:
            # Counted before anything is read: a stream waiting for its preamble or its
            # workspace holds window and memory too.
            guard = StreamGuard(gateway.quota, user.name, target)
        except LimitExceeded as exc:
            log.info("refused a stream of %s to %s: %s", user.name, target, exc.reason)
            stream.reset(exc.reason)
            return
        task = asyncio.create_task(_serve_stream(gateway, stream, user, reference, target, guard))
        streams.add(task)
        task.add_done_callback(streams.discard)

    session = Session(
        WebSocketLink(ws),
        is_client=False,
        config=USER_SESSION_CONFIG,
        name=user.name,
        on_stream=serve,
    )
    gateway.user_sessions.add(session)
    log.info("user %s opened a session for %s", user.name, reference)

    async def revoke(reason: str) -> None:
        await session.close(reason, code=CloseCode.REVOKED)

    try:
        with gateway.held.hold(lambda: gateway.lost_reach(user, owner), revoke):
            await session.run()
    finally:
        gateway.user_sessions.discard(session)
        for task in list(streams):
            task.cancel()
        log.info(
            "user %s closed the session for %s: %s", user.name, reference, session.close_reason
        )
    return ws
