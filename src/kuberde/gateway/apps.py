"""The app proxy: HTTP and WebSocket from a browser to a workspace's web app, by subdomain.

`{port}--{name}--{owner}.{apps-domain}` (or `{name}--{owner}.…` for the default app) is
served here, whatever the path: each WebSocket upgrade is one stream of the agent's session,
exactly like a `/connect`, and so is each HTTP connection to the app — kept alive between
one user's requests (`kuberde.gateway.upstreams`). Every request is authorized the same way
(the owner or an admin). A missing app and someone else's get the same 404.

Credentials on an app host: its own host-only ticket cookie (from the redirect handshake
with the dashboard, `/__kuberde/auth`), or `Authorization: Bearer` with a user token for
non-browser clients. Neither reaches the workspace. A scaled-down workspace is woken: a
browser gets a waiting page with live progress that turns into the app, anything else is
held until the agent is online or the wake deadline, then 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from aiohttp import WSCloseCode, WSMsgType, web

from kuberde.auth import AuthError, Principal, bearer_token
from kuberde.gateway.app import Gateway, limit_error
from kuberde.gateway.apphost import (
    AppAddress,
    BadHost,
    candidate_agent_ids,
    resolve_label,
    split_host,
)
from kuberde.gateway.directory import AgentRecord, WakeError
from kuberde.gateway.guard import StreamGuard
from kuberde.gateway.limits import LimitExceeded
from kuberde.gateway.proxyheaders import app_request_headers, app_response_headers
from kuberde.gateway.registry import AgentConnection
from kuberde.gateway.revocation import Check
from kuberde.gateway.sessions import SessionStore
from kuberde.gateway.streamhttp import (
    StreamHttp,
    StreamWebSocket,
    UpstreamError,
    UpstreamRejected,
)
from kuberde.gateway.upstreams import Upstream, UpstreamKey, UpstreamPool
from kuberde.gateway.web.navigation import is_navigation, safe_next
from kuberde.gateway.web.render import APP_STATIC, STATIC_DIR, page
from kuberde.gateway.web.settings import PLATFORM_COOKIES, BrowserSettings
from kuberde.gateway.web.workspaces import Workspaces
from kuberde.mux import Preamble, SessionClosed, Stream, encode_preamble

__all__ = ["AppProxy"]

log = logging.getLogger(__name__)

RESERVED = "/__kuberde/"
BODY_CHUNK = 64 * 1024
WAKE_EVENT_INTERVAL = 1.0


class AppProxy:
    def __init__(
        self,
        gateway: Gateway,
        sessions: SessionStore,
        settings: BrowserSettings,
        workspaces: Workspaces,
    ) -> None:
        self.gateway = gateway
        self.sessions = sessions
        self.settings = settings
        self.workspaces = workspaces
        self._wake_started: dict[str, float] = {}
        self.upstreams = UpstreamPool()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """App hosts are served here; every other host goes on to the dashboard's routes."""
        try:
            label = split_host(request.headers.get("Host"), self.settings.apps_domain)
        except BadHost as exc:
            return web.json_response({"error": str(exc), "reason": "bad_host"}, status=400)
        if label is None:
            response: web.StreamResponse = await handler(request)
            return response
        return await self.serve(request, label)

    # ---- responses -----------------------------------------------------------------------

    def _error(self, request: web.Request, status: int, title: str, message: str) -> web.Response:
        if is_navigation(request):
            return page(
                "app_error.html", status=status, static=APP_STATIC, title=title, message=message
            )
        return web.json_response({"error": message}, status=status)

    def _went_away(self, request: web.Request) -> web.Response:
        return self._error(request, 502, "Workspace went away", "Try again in a moment.")

    def _not_found(self, request: web.Request) -> web.Response:
        # Someone else's app and a missing one look the same: names are not disclosed.
        return self._error(request, 404, "No such app", "There is no app at this address.")

    # ---- authentication ------------------------------------------------------------------

    def _ticket_user(self, request: web.Request, host: str) -> Principal | None:
        """Whom the request's app ticket speaks for now, if it holds a valid one."""
        return self.sessions.ticket(request.cookies.get(self.settings.cookies(request).app), host)

    async def _user(self, request: web.Request, host: str) -> Principal | None:
        user = self._ticket_user(request, host)
        if user is not None:
            return user
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            try:
                return await self.gateway.verifier.verify_user(bearer_token(header))
            except AuthError as exc:
                log.info("refused a bearer token at %s: %s", host, exc)
        return None

    async def _land(self, request: web.Request, host: str) -> web.StreamResponse:
        """The end of the handshake: trade the one-time code for this host's ticket."""
        ticket = self.sessions.redeem(request.query.get("code", ""), host)
        if ticket is None:
            return self._error(
                request,
                400,
                "Sign-in link expired",
                "This sign-in link was used already or has expired. Open the app again.",
            )
        names = self.settings.cookies(request)
        response = web.HTTPFound(safe_next(request.query.get("next")))
        response.set_cookie(
            names.app,
            ticket,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=self.settings.tls(request),
        )
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    def _sign_in(self, request: web.Request, host: str) -> web.StreamResponse:
        if not is_navigation(request):
            return web.json_response(
                {"error": "sign in first: a browser session or a bearer user token is required"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="kuberde"'},
            )
        query = urlencode({"host": host, "next": request.path_qs})
        return web.HTTPFound(f"{self.settings.dashboard_url(request)}/auth/app?{query}")

    # ---- the request ---------------------------------------------------------------------

    def _locate(self, label: str) -> tuple[AppAddress, AgentRecord] | None:
        directory = self.gateway.directory
        if directory is None:
            return None
        records = {(record.name, record.owner): record for record in directory.records()}
        address = resolve_label(label, records)
        if address is None:
            return None
        return address, records[(address.name, address.owner)]

    async def _locate_fresh(
        self, label: str, user: Principal
    ) -> tuple[AppAddress, AgentRecord] | None:
        """A miss gets one more look once the directory has caught up with the user's IDs the
        label may name (a workspace applied a moment ago), as `/connect` does."""
        directory = self.gateway.directory
        candidates = candidate_agent_ids(label, user.name)
        if directory is None or not candidates:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.gateway.settings.directory_catch_up):
                await directory.catch_up(*candidates)
        return self._locate(label)

    async def serve(self, request: web.Request, label: str) -> web.StreamResponse:
        host = request.host.lower()
        if request.path.startswith(RESERVED + "static/"):
            return self._static(request)
        if request.path == RESERVED + "auth":
            return await self._land(request, host)
        user = await self._user(request, host)
        if user is None:
            return self._sign_in(request, host)
        found = self._locate(label) or await self._locate_fresh(label, user)
        if found is None or not _may_use(user, found[1]):
            return self._not_found(request)
        address, record = found
        port = address.port
        if port is None:
            if not record.apps:
                return self._error(
                    request, 404, "No apps", f"Workspace {record.name} lists no apps (spec.apps)."
                )
            port = record.apps[0].port
        if port not in record.ports:
            return self._error(
                request,
                403,
                "Port not allowed",
                f"Port {port} is not an app or allowed port of workspace {record.name}.",
            )
        if request.path == RESERVED + "wake":
            return await self._wake_events(request, record)
        if record.error:
            return self._error(request, 503, f"{record.name} is unavailable", record.error)
        connection = self.gateway.registry.get(record.agent_id)
        if connection is None or connection.session.is_closed:
            if is_navigation(request):
                return await self._waiting_page(request, record, user)
            connection = await self._hold(request, record, user)
            if connection is None:
                return web.json_response(
                    {"error": f"workspace {record.name} is not ready yet"},
                    status=503,
                    headers={"Retry-After": "5"},
                )
        try:
            if request.headers.get("Upgrade", "").lower() == "websocket":
                return await self._websocket(request, connection, record, port, user)
            return await self._http(request, connection, record, port, user)
        except LimitExceeded as exc:
            log.info("refused a request of %s to %s: %s", user.name, record.agent_id, exc.reason)
            return limit_error(exc)

    def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.path.removeprefix(RESERVED + "static/")
        path = STATIC_DIR / name
        if "/" in name or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "max-age=300"})

    # ---- waking --------------------------------------------------------------------------

    async def _request_wake(self, record: AgentRecord, user: Principal) -> None:
        assert self.gateway.directory is not None
        loop = asyncio.get_running_loop()
        self._wake_started.setdefault(record.agent_id, loop.time())
        self.gateway.metrics.wakes.inc()
        await self.gateway.directory.request_wake(record.agent_id, user.name)

    async def _hold(
        self, request: web.Request, record: AgentRecord, user: Principal
    ) -> AgentConnection | None:
        """Wait for the agent (a non-browser client): its connection, or None at the deadline."""
        self.gateway.activity.waiting_started(record.agent_id)
        try:
            await self._request_wake(record, user)
            async with asyncio.timeout(self.settings.wake_timeout):
                return await self.gateway.registry.wait_online(record.agent_id)
        except (TimeoutError, WakeError):
            return None
        finally:
            self.gateway.activity.waiting_ended(record.agent_id)

    async def _waiting_page(
        self, request: web.Request, record: AgentRecord, user: Principal
    ) -> web.Response:
        try:
            await self._request_wake(record, user)
        except WakeError as exc:
            return self._error(request, 503, f"{record.name} cannot start", str(exc))
        return page(
            "waiting.html",
            status=503,
            static=APP_STATIC,
            headers={"Retry-After": "2"},
            title=f"Starting {record.name}",
            name=record.name,
            owner=record.owner,
            deadline=round(self.settings.wake_timeout),
        )

    def _wake_status(self, record: AgentRecord, started: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        elapsed = loop.time() - started
        row = next((r for r in self.workspaces.rows() if r.agent_id == record.agent_id), None)
        current = self.gateway.directory.lookup(record.agent_id) if self.gateway.directory else None
        connection = self.gateway.registry.get(record.agent_id)
        status: dict[str, Any] = {
            "phase": row.phase if row is not None else "Starting",
            "elapsed_s": round(elapsed, 1),
            "ready": connection is not None and not connection.session.is_closed,
            "logs": self.workspaces.log_tail(record.name, 8),
        }
        if current is not None and current.error:
            status["error"] = current.error
        elif not status["ready"] and elapsed >= self.settings.wake_timeout:
            status["error"] = (
                f"{record.name} did not start within {self.settings.wake_timeout:g} seconds."
            )
        return status

    async def _wake_events(self, request: web.Request, record: AgentRecord) -> web.StreamResponse:
        """Server-sent progress of a wake for the waiting page, until ready or failed."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        started = self._wake_started.get(record.agent_id, loop.time())
        self.gateway.activity.waiting_started(record.agent_id)
        try:
            while True:
                status = self._wake_status(record, started)
                await response.write(f"data: {json.dumps(status)}\n\n".encode())
                if status["ready"] or "error" in status:
                    self._wake_started.pop(record.agent_id, None)
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(WAKE_EVENT_INTERVAL):
                        await self.gateway.registry.wait_online(record.agent_id)
        except ConnectionResetError:
            pass
        finally:
            self.gateway.activity.waiting_ended(record.agent_id)
        return response

    # ---- proxying ------------------------------------------------------------------------

    def _open(
        self, connection: AgentConnection, port: int, user: Principal, guard: StreamGuard
    ) -> Stream | None:
        try:
            preamble = encode_preamble(Preamble(port, "http", user.name))
            stream = connection.session.open_stream(preamble)
        except SessionClosed:
            return None
        guard.attach(stream)
        return stream

    def _forwarded(self, request: web.Request) -> list[tuple[str, str]]:
        return app_request_headers(
            request.headers.items(),
            platform_cookies=PLATFORM_COOKIES,
            client=request.remote,
            scheme="https" if self.settings.tls(request) else "http",
        )

    def _connect(
        self, connection: AgentConnection, record: AgentRecord, port: int, user: Principal
    ) -> Upstream | None:
        """A new HTTP connection to the app (raises `LimitExceeded`); None if the agent left."""
        guard = StreamGuard(self.gateway.quota, user.name, record.agent_id)
        stream = self._open(connection, port, user, guard)
        if stream is None:
            guard.release()
            return None
        return Upstream(StreamHttp(stream), guard)

    async def _send_request(
        self, request: web.Request, exchange: StreamHttp
    ) -> tuple[int, str, list[tuple[str, str]]]:
        headers = self._forwarded(request)
        if request.body_exists and request.content_length is None:
            headers.append(("Transfer-Encoding", "chunked"))
        await exchange.send_head(request.method, request.raw_path, headers)
        if request.body_exists:
            async for chunk in request.content.iter_chunked(BODY_CHUNK):
                await exchange.send_body(chunk)
        await exchange.end_body()
        return await exchange.response()

    async def _http(
        self,
        request: web.Request,
        connection: AgentConnection,
        record: AgentRecord,
        port: int,
        user: Principal,
    ) -> web.StreamResponse:
        key = UpstreamKey(connection.session, port, user.name)
        # A body cannot be sent twice, so it never goes to a connection the app may have closed.
        upstream = None if request.body_exists else self.upstreams.take(key)
        if upstream is None:
            upstream = self._connect(connection, record, port, user)
        agent = record.agent_id
        activity = self.gateway.activity
        activity.http_started(agent)
        self.gateway.metrics.open_streams.inc()
        try:
            while True:
                if upstream is None:
                    return self._went_away(request)
                try:
                    status, reason, upstream_headers = await self._send_request(
                        request, upstream.exchange
                    )
                    break
                except UpstreamError as exc:
                    if not upstream.reused or upstream.exchange.answered:
                        log.info("app %s:%d of %s failed: %s", record.name, port, agent, exc)
                        return self._error(request, 502, "The app did not answer", str(exc))
                    upstream.close("closed by the app")
                    upstream = self._connect(connection, record, port, user)
            response = web.StreamResponse(status=status, reason=reason)
            for name, value in app_response_headers(
                upstream_headers, platform_cookies=PLATFORM_COOKIES
            ):
                response.headers.add(name, value)
            length = next((v for n, v in upstream_headers if n.lower() == "content-length"), None)
            if length is not None and length.isdigit() and request.method != "HEAD":
                response.content_length = int(length)
            await response.prepare(request)
            with contextlib.suppress(ConnectionResetError):
                try:
                    async for data in upstream.exchange.body():
                        await response.write(data)
                        activity.bytes_moved(agent, "http")
                    await response.write_eof()
                except UpstreamError as exc:
                    log.info("app %s:%d response broke off: %s", record.name, port, exc)
                    if request.transport is not None:
                        request.transport.close()
            return response
        finally:
            if upstream is not None:
                self.upstreams.give_back(key, upstream)
            activity.http_ended(agent)
            self.gateway.metrics.open_streams.dec()

    def _origin_allowed(self, request: web.Request) -> bool:
        """Cross-site WebSocket hijacking: only pages of this very app host may connect."""
        scheme = "https" if self.settings.tls(request) else "http"
        origin = request.headers.get("Origin")
        return origin is None or origin.lower() == f"{scheme}://{request.host.lower()}"

    async def _websocket(
        self,
        request: web.Request,
        connection: AgentConnection,
        record: AgentRecord,
        port: int,
        user: Principal,
    ) -> web.StreamResponse:
        if not self._origin_allowed(request):
            log.info("refused a cross-origin WebSocket to %s from %s", request.host, request.remote)
            return web.json_response({"error": "cross-origin WebSocket refused"}, status=403)
        with StreamGuard(self.gateway.quota, user.name, record.agent_id) as guard:
            return await self._websocket_stream(request, connection, record, port, user, guard)

    async def _websocket_stream(
        self,
        request: web.Request,
        connection: AgentConnection,
        record: AgentRecord,
        port: int,
        user: Principal,
        guard: StreamGuard,
    ) -> web.StreamResponse:
        stream = self._open(connection, port, user, guard)
        if stream is None:
            return self._went_away(request)
        agent = record.agent_id
        self.gateway.activity.http_started(agent)
        self.gateway.metrics.open_streams.inc()
        try:
            upstream = StreamWebSocket(stream, max_message=self.settings.max_message_size)
            offered = [
                part.strip()
                for part in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
                if part.strip()
            ]
            extra = [(n, v) for n, v in self._forwarded(request) if n.lower() != "host"]
            try:
                chosen = await upstream.connect(request.host, request.raw_path, offered, extra)
            except UpstreamRejected as rejected:
                headers = app_response_headers(rejected.headers, platform_cookies=PLATFORM_COOKIES)
                return web.Response(status=rejected.status, body=rejected.body, headers=headers)
            except UpstreamError as exc:
                return self._error(request, 502, "The app did not answer", str(exc))
            ws = web.WebSocketResponse(
                protocols=[chosen] if chosen else (),
                compress=False,
                max_msg_size=self.settings.max_message_size,
                autoping=True,
            )
            await ws.prepare(request)
            standing = self._standing_check(request, record, user)
            with self.gateway.held.hold(standing, functools.partial(_revoke, ws)):
                await self._pump(ws, upstream, agent, standing)
            return ws
        finally:
            if not stream.is_closed:
                stream.reset("websocket done")
            self.gateway.activity.http_ended(agent)
            self.gateway.metrics.open_streams.dec()

    def _standing_check(self, request: web.Request, record: AgentRecord, user: Principal) -> Check:
        """For an open WebSocket: why its browser may no longer use it, or None. One opened
        with an app ticket asks the ticket again (a user removed, demoted or signed out
        meanwhile loses it); one opened with a bearer token asks the gateway's standing."""
        host = request.host.lower()
        if self._ticket_user(request, host) is None:
            return lambda: self.gateway.lost_reach(user, record.owner)

        def standing() -> str | None:
            now = self._ticket_user(request, host)
            if now is None:
                return "signed out"
            return None if _may_use(now, record) else f"{now.name} may no longer use this app"

        return standing

    async def _pump(
        self,
        ws: web.WebSocketResponse,
        upstream: StreamWebSocket,
        agent: str,
        standing: Check,
    ) -> None:
        """Relay both ways; a browser message once `standing` gives a reason closes it
        (1008), as `HeldConnections` does without waiting for one."""
        activity = self.gateway.activity

        async def from_app() -> None:
            with contextlib.suppress(UpstreamError, ConnectionResetError):
                async for message in upstream.messages():
                    if isinstance(message, str):
                        await ws.send_str(message)
                    else:
                        await ws.send_bytes(message)
                    activity.bytes_moved(agent, "http")
            await ws.close()

        task = asyncio.create_task(from_app())
        try:
            async for message in _browser_messages(ws):
                if message is None:
                    break
                reason = standing()
                if reason is not None:
                    await _revoke(ws, reason)
                    break
                await upstream.send(message)
                activity.bytes_moved(agent, "http")
            await upstream.close(1000)
        except UpstreamError:
            pass
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _revoke(ws: web.WebSocketResponse, reason: str) -> None:
    """Close a WebSocket whose user may no longer use it (1008, the reason)."""
    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=reason.encode()[:120])


def _may_use(user: Principal, record: AgentRecord) -> bool:
    """Apps are their owner's, and every admin's."""
    return record.owner == user.name or user.admin


async def _browser_messages(ws: web.WebSocketResponse) -> AsyncIterator[str | bytes | None]:
    async for message in ws:
        if message.type is WSMsgType.TEXT or message.type is WSMsgType.BINARY:
            yield message.data
        else:
            yield None
            return
