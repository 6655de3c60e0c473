"""The gateway's aiohttp application: agents on /ws, users on /connect, the operator on /mgmt.

Each user connection becomes one stream in the agent's session. The gateway never dials a
workspace; when an agent is offline it asks the directory to wake it and holds the user's
WebSocket open, reporting progress, until the agent dials in.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import WSMsgType, web

from kuberde import __version__
from kuberde.activity import (
    ActivityReport,
    AgentStatus,
    encode_report,
    encode_status,
)
from kuberde.aio import LoopLag
from kuberde.auth import AuthError, Principal, TokenVerifier, bearer_token
from kuberde.clock import utc_now
from kuberde.gateway.agent_watch import serve_watch
from kuberde.gateway.connections import ConnectionLimits, mark_authenticated, peer
from kuberde.gateway.directory import AgentDirectory, AgentRecord, WakeError
from kuberde.gateway.guard import StreamGuard
from kuberde.gateway.limits import LimitExceeded, StreamQuota, StreamQuotaSettings
from kuberde.gateway.metrics import GatewayMetrics
from kuberde.gateway.presence import Presence
from kuberde.gateway.registry import AgentConnection
from kuberde.gateway.revocation import HeldConnections
from kuberde.gateway.user_session import serve_user_session
from kuberde.linkbuffers import bound_kernel_buffers
from kuberde.messages import not_found
from kuberde.mux import (
    BULK_FRAME,
    BULK_WINDOW,
    Preamble,
    Session,
    SessionClosed,
    SessionConfig,
    Stream,
    StreamReset,
    encode_preamble,
)
from kuberde.mux.preamble import KINDS, ConnectionKind
from kuberde.naming import InvalidName, agent_id, validate_agent_id
from kuberde.wslink import WebSocketLink

__all__ = ["CloseCode", "GatewaySettings", "TokenStanding", "create_app"]

log = logging.getLogger(__name__)

#: How long closing a user's WebSocket may take before its transport is dropped.
_CLOSE_DEADLINE = 10.0


class CloseCode:
    NORMAL = 1000
    #: The user no longer stands (removed, a new password, no longer an admin); the reason says.
    REVOKED = 4401
    AGENT_GONE = 4404
    WAKE_TIMEOUT = 4408
    #: The workspace cannot run (phase Error) or cannot be woken; the reason says why.
    UNAVAILABLE = 4409
    #: Over a per-user or per-agent stream limit (`kuberde.gateway.limits`); the reason says which.
    LIMITED = 4429
    STREAM_RESET = 4500
    SHUTTING_DOWN = 4503


@dataclass(frozen=True)
class GatewaySettings:
    wake_timeout: float = 120.0
    #: How long a replaced agent session may keep serving its open streams.
    replaced_session_grace: float = 30.0
    #: How long a connect to an unknown agent waits for the directory's next look.
    directory_catch_up: float = 3.0
    max_message_size: int = 4 * 1024 * 1024
    #: All user sockets and agent sessions are closed together within this on shutdown.
    shutdown_deadline: float = 3.0
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    #: How often the users file is looked at for changes that end open connections.
    standing_interval: float = 1.0
    #: Concurrent `/mgmt/agents?watch=1` streams (the operator holds one; a few for tools).
    max_watches: int = 8
    #: Agents one watch may have pending before it gets a full list instead (coalescing).
    watch_backlog: int = 10_000
    streams: StreamQuotaSettings = field(default_factory=StreamQuotaSettings)
    mux: SessionConfig = field(
        default_factory=lambda: SessionConfig(
            accept_backlog=0, receive_window=BULK_WINDOW, max_frame_payload=BULK_FRAME
        )
    )


def json_error(status: type[web.HTTPException], message: str, reason: str) -> web.HTTPException:
    body = json.dumps({"error": message, "reason": reason})
    return status(text=body, content_type="application/json")


def limit_error(exc: LimitExceeded) -> web.HTTPException:
    """HTTP 429 for a stream refused by a limit, before any upgrade."""
    error = json_error(web.HTTPTooManyRequests, exc.reason, "limited")
    error.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return error


class TokenStanding(Protocol):
    """Whether users still stand (`kuberde up`'s users file: `standing.ListedUsers`)."""

    def token_user(self, user: Principal) -> Principal:
        """`user`, as a token verified them, as they stand now; raises AuthError if not."""
        ...

    def version(self) -> object:
        """Changes whenever a standing may have (cheap: looked at every second)."""
        ...


class Gateway:
    """`directory` knows the agents that are not connected; `presence` the ones that are
    (shared with the local runtime, which reads it as its activity feed). With a
    `standing`, users' open connections are closed once their user no longer stands;
    without one, a verified token is good until it expires."""

    def __init__(
        self,
        verifier: TokenVerifier,
        settings: GatewaySettings,
        directory: AgentDirectory | None,
        presence: Presence,
        standing: TokenStanding | None = None,
    ) -> None:
        self.verifier = verifier
        self.standing = standing
        #: Users' open connections, closed when their user no longer stands.
        self.held = HeldConnections()
        self.settings = settings
        self.directory = directory
        self.presence = presence
        self.registry = presence.registry
        self.activity = presence.activity
        self.metrics = GatewayMetrics()
        self._loop_lag = LoopLag(self.metrics.loop_lag.set)
        self.quota = StreamQuota(settings.streams)
        self._user_sockets: set[web.WebSocketResponse] = set()
        #: Users' mux sessions (`/session`), closed with the agents' on shutdown.
        self.user_sessions: set[Session] = set()
        self._background: set[asyncio.Task[None]] = set()

    # ---- authentication ------------------------------------------------------------------

    async def authenticate(self, request: web.Request, kind: str) -> Principal:
        try:
            token = bearer_token(request.headers.get("Authorization"))
            if kind == "agent":
                principal = await self.verifier.verify_agent(token)
            elif kind == "user":
                principal = await self.verifier.verify_user(token)
            else:
                principal = await self.verifier.verify_management(token)
        except AuthError as exc:
            self.metrics.refused(kind, exc.reason)
            log.info("refused %s credential from %s: %s", kind, peer(request), exc)
            raise json_error(web.HTTPUnauthorized, str(exc), exc.reason) from None
        mark_authenticated(request)
        return principal

    def lost_reach(self, user: Principal, owner: str) -> str | None:
        """Why `user` (as a token verified them) may no longer use a connection to
        `owner`'s workspace, or None."""
        if self.standing is None:
            return None
        try:
            now = self.standing.token_user(user)
        except AuthError as exc:
            return str(exc)
        if owner != now.name and not now.admin:
            return f"{user.name} is no longer an admin"
        return None

    async def watch_standing(self, app: web.Application) -> AsyncIterator[None]:
        """While the app runs, re-check every held connection whenever a standing may
        have changed (the users file's `stat`, looked at every `standing_interval`)."""
        if self.standing is None:
            yield
            return
        watch = asyncio.create_task(
            self.held.watch(self.standing.version, self.settings.standing_interval)
        )
        try:
            yield
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    # ---- agents --------------------------------------------------------------------------

    async def agent_socket(self, request: web.Request) -> web.StreamResponse:
        principal = await self.authenticate(request, "agent")
        assert principal.owner is not None
        record = self.directory.lookup(principal.name) if self.directory else None
        current = self.registry.get(principal.name)
        # IDs can collide across owners (alice/smith-dev, alice-smith/dev): the owner recorded
        # for the ID — by the directory, else by the session holding it — must match.
        owner = record.owner if record is not None else (current.owner if current else None)
        if (owner is not None and owner != principal.owner) or (
            record is not None and record.uid and principal.agent_uid != record.uid
        ):
            self.metrics.refused("agent", "not_this_agent")
            raise json_error(
                web.HTTPForbidden,
                f"credential does not belong to the current agent {principal.name}",
                "not_this_agent",
            )
        ws = web.WebSocketResponse(
            compress=False, max_msg_size=self.settings.max_message_size, autoping=True
        )
        await ws.prepare(request)
        bound_kernel_buffers(request.transport)
        session = Session(
            WebSocketLink(ws), is_client=False, config=self.settings.mux, name=principal.name
        )
        connection = AgentConnection(
            agent_id=principal.name,
            owner=principal.owner,
            uid=principal.agent_uid,
            session=session,
            connected_since=utc_now(),
        )
        previous = self.registry.register(connection)
        if previous is not None:
            log.info("agent %s connected again; replacing its previous session", principal.name)
            retire = asyncio.create_task(
                previous.session.shutdown(self.settings.replaced_session_grace)
            )
            self._background.add(retire)
            retire.add_done_callback(self._background.discard)
        else:
            log.info("agent %s connected from %s", principal.name, peer(request))
        # Known from now on, but not used: a reconnect (a gateway restart) is not activity.
        self.activity.track(principal.name)
        self.metrics.agents_online.set(len(self.registry))
        serving = asyncio.create_task(session.run())
        try:
            # Unregister as soon as the session ends, not after the link's close handshake.
            await session.wait_closed()
            await serving
        finally:
            serving.cancel()
            if self.registry.unregister(connection):
                log.info("agent %s disconnected: %s", principal.name, session.close_reason)
            self.metrics.agents_online.set(len(self.registry))
        return ws

    # ---- users ---------------------------------------------------------------------------

    def _owner_of(self, candidate: str) -> str | None:
        record = self.directory.lookup(candidate) if self.directory else None
        if record is not None:
            return record.owner
        connection = self.registry.get(candidate)
        return connection.owner if connection is not None else None

    async def resolve(self, reference: str, user: Principal) -> tuple[str, str] | None:
        """Like `_find`, but a miss gets one more look after the directory has caught up."""
        found = self._find(reference, user)
        if found is None and self.directory is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.directory_catch_up):
                    await self.directory.catch_up(*self._candidates(reference, user))
            found = self._find(reference, user)
        return found

    @staticmethod
    def _candidates(reference: str, user: Principal) -> list[str]:
        """The agent IDs `reference` may mean: a full ID, or the short name of the user's."""
        candidates: list[str] = []
        with contextlib.suppress(InvalidName):
            candidates.append(validate_agent_id(reference))
        with contextlib.suppress(InvalidName):
            candidates.append(agent_id(user.name, reference))
        return candidates

    def _find(self, reference: str, user: Principal) -> tuple[str, str] | None:
        """Map a full agent ID, or the short name of one of the user's agents, to (ID, owner)."""
        for candidate in self._candidates(reference, user):
            owner = self._owner_of(candidate)
            # Someone else's workspace is missing, not forbidden: nothing tells it exists.
            if owner is not None and (owner == user.name or user.admin):
                return candidate, owner
        return None

    async def user_socket(self, request: web.Request) -> web.StreamResponse:
        started = asyncio.get_running_loop().time()
        user = await self.authenticate(request, "user")
        port, kind = self._connect_options(request)
        resolved = await self.resolve(request.match_info["agent"], user)
        if resolved is None:
            raise json_error(web.HTTPNotFound, not_found(request.match_info["agent"]), "not_found")
        target, owner = resolved
        try:
            guard = StreamGuard(self.quota, user.name, target)
        except LimitExceeded as exc:
            log.info("refused a connection of %s to %s: %s", user.name, target, exc.reason)
            raise limit_error(exc) from None
        ws = web.WebSocketResponse(
            compress=False, max_msg_size=self.settings.max_message_size, autoping=True
        )
        self._user_sockets.add(ws)
        revoke = functools.partial(self._close, ws, CloseCode.REVOKED)
        try:
            with self.held.hold(lambda: self.lost_reach(user, owner), revoke):
                await ws.prepare(request)
                stream = await self._open_stream(ws, target, Preamble(port, kind, user.name))
                if stream is not None:
                    guard.attach(stream)
                    self.metrics.stream_open_seconds.observe(
                        asyncio.get_running_loop().time() - started
                    )
                    await self._relay(ws, stream, target, guard)
        except ConnectionResetError:
            log.debug("user %s went away while connecting to %s", user.name, target)
        finally:
            guard.release()
            self._user_sockets.discard(ws)
        return ws

    @staticmethod
    def _connect_options(request: web.Request) -> tuple[int | None, ConnectionKind]:
        raw_port = request.query.get("port")
        port: int | None = None
        if raw_port:
            if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
                raise json_error(
                    web.HTTPBadRequest, f"port {raw_port!r} is not a TCP port", "bad_port"
                )
            port = int(raw_port)
        kind = request.query.get("kind", "tcp")
        if kind not in KINDS:
            raise json_error(web.HTTPBadRequest, f"kind must be one of {sorted(KINDS)}", "bad_kind")
        return port, kind  # type: ignore[return-value]

    async def _open_stream(
        self, ws: web.WebSocketResponse, target: str, preamble: Preamble
    ) -> Stream | None:
        initial = encode_preamble(preamble)
        for _ in range(2):  # an agent may drop between lookup and open: wait for it once more
            connection = await self._await_agent(ws, target, preamble.user)
            if connection is None:
                return None
            try:
                return connection.session.open_stream(initial)
            except SessionClosed:
                continue
        await self._close(ws, CloseCode.AGENT_GONE, f"agent {target} went away while connecting")
        return None

    async def _await_agent(
        self, ws: web.WebSocketResponse, target: str, user: str
    ) -> AgentConnection | None:
        record = self.directory.lookup(target) if self.directory else None
        if record is not None and record.error:
            # A crash-looping workload may still have its agent online: say why it fails.
            await self._close(ws, CloseCode.UNAVAILABLE, record.error)
            return None
        connection = self.registry.get(target)
        if connection is not None and not connection.session.is_closed:
            return connection
        if record is None:
            await self._close(ws, CloseCode.AGENT_GONE, f"agent {target} is not connected")
            return None
        assert self.directory is not None
        self.activity.waiting_started(target)
        try:
            self.metrics.wakes.inc()
            await self.directory.request_wake(target, user)
            connection = await self._wait_with_progress(ws, target)
            # A workload that failed on this wake may do so before its agent is online.
            error = self.unavailable(target)
            if connection is not None and error is not None:
                await self._close(ws, CloseCode.UNAVAILABLE, error)
                return None
            return connection
        except WakeError as exc:
            await self._close(ws, CloseCode.UNAVAILABLE, str(exc))
            return None
        finally:
            self.activity.waiting_ended(target)

    async def _wait_with_progress(
        self, ws: web.WebSocketResponse, target: str
    ) -> AgentConnection | None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        online = asyncio.ensure_future(self.registry.wait_online(target))
        try:
            while True:
                elapsed = loop.time() - started
                if elapsed >= self.settings.wake_timeout:
                    await self._close(
                        ws,
                        CloseCode.WAKE_TIMEOUT,
                        f"agent {target} did not come online within "
                        f"{self.settings.wake_timeout:g}s",
                    )
                    return None
                record = self.directory.lookup(target) if self.directory else None
                if record is not None and record.error:
                    await self._close(ws, CloseCode.UNAVAILABLE, record.error)
                    return None
                await ws.send_str(json.dumps({"event": "waking", "elapsed_s": round(elapsed, 1)}))
                remaining = self.settings.wake_timeout - elapsed
                done, _ = await asyncio.wait({online}, timeout=min(1.0, remaining))
                if done:
                    return online.result()
        finally:
            online.cancel()

    async def _relay(
        self, ws: web.WebSocketResponse, stream: Stream, target: str, guard: StreamGuard
    ) -> None:
        """Join the WebSocket and the stream; a cut for a buffer cap closes with 4429 at
        once, even while a write to a user who stopped reading is stuck."""
        self.activity.stream_opened(target)
        self.metrics.open_streams.inc()
        upstream: asyncio.Task[None] | None = None
        downstream: asyncio.Task[str | None] | None = None
        cut = asyncio.create_task(guard.wait_cut())
        try:
            await ws.send_str('{"event":"connected"}')
            upstream = asyncio.create_task(self._user_to_agent(ws, stream, target))
            downstream = asyncio.create_task(self._agent_to_user(ws, stream, target))
            await asyncio.wait({downstream, cut}, return_when=asyncio.FIRST_COMPLETED)
            exceeded = guard.exceeded
            if exceeded is not None:
                log.info("cut a connection to %s: %s", target, exceeded.reason)
                downstream.cancel()  # may be stuck writing to a user who stopped reading
                await self._close(ws, CloseCode.LIMITED, exceeded.reason)
                return
            reset = downstream.result()
            if reset is not None:
                await self._close(ws, CloseCode.STREAM_RESET, reset)
                return
            await upstream
            await self._close(ws, CloseCode.NORMAL, "")
        finally:
            for task in (upstream, downstream, cut):
                if task is not None:
                    task.cancel()
            if not stream.is_closed:
                stream.reset("user connection closed")
            self.activity.stream_closed(target)
            self.metrics.open_streams.dec()

    async def _user_to_agent(self, ws: web.WebSocketResponse, stream: Stream, target: str) -> None:
        """Forward the user's bytes until their half-close; reset the stream if they vanish."""
        counter = self.metrics.bytes_to_agent
        async for message in ws:
            if message.type is WSMsgType.BINARY:
                data: bytes = message.data
                try:
                    stream.write(data)
                    await stream.drain()
                except StreamReset:
                    return
                counter.inc(len(data))
                self.activity.bytes_moved(target)
            elif message.type is WSMsgType.TEXT and _is_eof(message.data):
                stream.close_write()
                return
        stream.reset("user disconnected")

    async def _agent_to_user(
        self, ws: web.WebSocketResponse, stream: Stream, target: str
    ) -> str | None:
        """Forward the workspace's bytes; return the reset reason if the stream was reset."""
        counter = self.metrics.bytes_from_agent
        # One mux frame's worth per message keeps users' WebSocket messages small and bounded.
        chunk = self.settings.mux.max_frame_payload
        try:
            while data := await stream.read(chunk):
                await ws.send_bytes(data)
                counter.inc(len(data))
                self.activity.bytes_moved(target)
        except StreamReset as exc:
            return exc.reason
        except ConnectionError:  # the user's socket is gone (reset, or lost while draining)
            stream.reset("user disconnected")
            return "user disconnected"
        await ws.send_str('{"event":"eof"}')
        return None

    @staticmethod
    async def _close(ws: web.WebSocketResponse, code: int, reason: str) -> None:
        """Say why and close; bounded, as a user who stopped reading never drains it."""
        if ws.closed:
            return
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            async with asyncio.timeout(_CLOSE_DEADLINE):
                if reason:
                    await ws.send_str(json.dumps({"event": "error", "message": reason}))
                await ws.close(code=code, message=reason.encode()[:120])

    # ---- management and health -----------------------------------------------------------

    @staticmethod
    def _with_record(
        agent_id: str, status: AgentStatus | None, record: AgentRecord | None
    ) -> AgentStatus | None:
        """The gateway's view of an agent completed by the directory: offline agents it
        has not seen, and the owner of ones it only knows from their activity."""
        if record is None:
            return status
        if status is None:
            return AgentStatus(agent_id, record.owner, False, 0, None, None, None)
        if status.owner is None:
            return dataclasses.replace(status, owner=record.owner)
        return status

    def unavailable(self, agent_id: str) -> str | None:
        """Why the workspace takes no connections (its phase is Error), or None."""
        record = self.directory.lookup(agent_id) if self.directory else None
        return record.error if record is not None else None

    def agent_status(self, agent_id: str) -> AgentStatus | None:
        record = self.directory.lookup(agent_id) if self.directory else None
        return self._with_record(agent_id, self.presence.status(agent_id), record)

    def report(self) -> ActivityReport:
        """The activity feed's report plus the directory's offline agents (with their owner)."""
        self._forget_deleted()
        live = self.presence.report()
        agents = dict(live.agents)
        for record in self.directory.records() if self.directory else []:
            status = self._with_record(record.agent_id, agents.get(record.agent_id), record)
            assert status is not None
            agents[record.agent_id] = status
        return ActivityReport(agents, live.observed_at)

    def _forget_deleted(self) -> None:
        """Drop the activity of agents the directory no longer has, offline and unused: a
        deleted workspace must not stay listed, nor held in memory, for good."""
        if self.directory is None:
            return
        known = {record.agent_id for record in self.directory.records()}
        for agent, activity in self.activity.items():
            if agent not in known and self.registry.get(agent) is None and not activity.sessions:
                self.activity.forget(agent)

    async def list_agents(self, request: web.Request) -> web.StreamResponse:
        """`GET /mgmt/agents`; with `?watch=1`, a stream of changes (`agent_watch`)."""
        await self.authenticate(request, "management")
        if request.query.get("watch") in ("1", "true"):
            return await serve_watch(self, request)
        return web.json_response(encode_report(self.report()))

    async def get_agent(self, request: web.Request) -> web.Response:
        await self.authenticate(request, "management")
        status = self.agent_status(request.match_info["agent"])
        if status is None:
            raise json_error(web.HTTPNotFound, "no such agent", "not_found")
        return web.json_response(encode_status(status))

    async def find_agent(self, request: web.Request) -> web.Response:
        """`GET /api/agents/{agent}`: whether the user may connect to it, without connecting,
        so `kuberde ssh` and `port-forward` fail before they start. Someone else's workspace
        is missing, as everywhere on /api."""
        user = await self.authenticate(request, "user")
        reference = request.match_info["agent"]
        resolved = await self.resolve(reference, user)
        if resolved is None:
            raise json_error(web.HTTPNotFound, not_found(reference), "not_found")
        target, owner = resolved
        record = self.directory.lookup(target) if self.directory else None
        if record is not None and record.error:
            # As /connect would close with 4409: say it now, before ssh starts its own noise.
            message = f"{reference} is unavailable: {record.error}"
            raise json_error(web.HTTPConflict, message, "unavailable")
        online = self.registry.get(target) is not None
        login = record.login if record is not None else None
        return web.json_response({"id": target, "owner": owner, "online": online, "login": login})

    async def version(self, request: web.Request) -> web.Response:
        """`GET /api/version`, unauthenticated like Kubernetes' /version: `kuberde version`."""
        return web.json_response({"version": __version__})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ready", "agents_online": len(self.registry)})

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain")

    async def sample_loop_lag(self, app: web.Application) -> AsyncIterator[None]:
        """The loop-lag gauge's timer runs while the app does."""
        self._loop_lag.start()
        try:
            yield
        finally:
            self._loop_lag.stop()

    async def on_shutdown(self, app: web.Application) -> None:
        """Close every user socket, user session and agent session at once, under one
        deadline, then cancel background work: a thousand sessions must not take a thousand
        timeouts."""
        self.presence.end_watches()
        sessions = [c.session for c in self.registry.connections()] + list(self.user_sessions)
        closing = [
            *(
                self._close(ws, CloseCode.SHUTTING_DOWN, "gateway is shutting down")
                for ws in list(self._user_sockets)
            ),
            *(self._end_session(session) for session in sessions),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.shutdown_deadline):
                await asyncio.gather(*closing, return_exceptions=True)
        background = list(self._background)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)

    @staticmethod
    async def _end_session(session: Session) -> None:
        session.go_away()
        await session.close("gateway is shutting down", code=1001)


def _is_eof(text: str) -> bool:
    with contextlib.suppress(ValueError):
        event = json.loads(text)
        return isinstance(event, dict) and event.get("event") == "eof"
    return False


GATEWAY_KEY = web.AppKey("gateway", Gateway)


def create_app(
    verifier: TokenVerifier,
    settings: GatewaySettings | None = None,
    directory: AgentDirectory | None = None,
    presence: Presence | None = None,
    standing: TokenStanding | None = None,
) -> web.Application:
    """`presence` is passed when something else reads it too (the local runtime)."""
    gateway = Gateway(
        verifier, settings or GatewaySettings(), directory, presence or Presence(), standing
    )
    app = web.Application()
    app[GATEWAY_KEY] = gateway
    app.router.add_get("/ws", gateway.agent_socket)
    app.router.add_get("/connect/{agent}", gateway.user_socket)
    app.router.add_get("/session/{agent}", functools.partial(serve_user_session, gateway))
    app.router.add_get("/mgmt/agents", gateway.list_agents)
    app.router.add_get("/mgmt/agents/{agent}", gateway.get_agent)
    app.router.add_get("/api/agents/{agent}", gateway.find_agent)
    app.router.add_get("/api/version", gateway.version)
    app.router.add_get("/healthz", gateway.healthz)
    app.router.add_get("/readyz", gateway.readyz)
    app.router.add_get("/metrics", gateway.metrics_endpoint)
    app.on_shutdown.append(gateway.on_shutdown)
    app.cleanup_ctx.append(gateway.sample_loop_lag)
    app.cleanup_ctx.append(gateway.watch_standing)
    return app
