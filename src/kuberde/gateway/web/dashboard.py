"""The dashboard at `/`: a signed-in user's workspaces (an admin's: everyone's), live.

Server-rendered; `/dashboard/events` pushes each card's changing part (status, activity,
deadline) as server-sent events, and the page's small script swaps it in. Actions are plain
forms with the session's CSRF token, so they work without JavaScript too. The dashboard's
own traffic never touches a workspace, so it is no activity.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from kuberde.auth import Principal
from kuberde.gateway.apphost import workspace_app_urls
from kuberde.gateway.sessions import BrowserSession
from kuberde.gateway.web.render import STATIC_DIR, fragment, page
from kuberde.gateway.web.settings import BrowserSettings
from kuberde.gateway.web.signin import SignIn
from kuberde.gateway.web.workspaces import ActionError, WorkspaceRow, Workspaces
from kuberde.policy import InvalidTTL, format_duration, parse_ttl

__all__ = ["Dashboard", "card", "relative"]

log = logging.getLogger(__name__)

EVENT_INTERVAL = 2.0
MAX_DOCUMENT = 256 * 1024


def relative(when: datetime | None, now: datetime) -> str:
    """`in 4m10s`, `2m ago` or `just now`: how a person reads a deadline or a last use."""
    if when is None:
        return "never"
    delta = when - now
    if abs(delta) < timedelta(seconds=1):
        return "just now"
    text = format_duration(timedelta(seconds=int(abs(delta).total_seconds())))
    return f"in {text}" if delta > timedelta(0) else f"{text} ago"


def _iso(when: datetime | None) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if when else ""


@dataclass(frozen=True)
class AppLink:
    name: str
    url: str


def card(
    row: WorkspaceRow, *, scheme: str, apps_domain: str | None, port: int | None, now: datetime
) -> dict[str, Any]:
    """Everything one workspace's card shows, as plain values for the template."""
    links = []
    if apps_domain is not None:
        apps = [(app.name, app.port, app.path) for app in row.apps]
        links = [
            AppLink(name, url)
            for name, url in workspace_app_urls(
                row.name, row.owner, apps, scheme=scheme, apps_domain=apps_domain, gateway_port=port
            )
        ]
    if row.open_connections:
        noun = "connection" if row.open_connections == 1 else "connections"
        hold = f"held by {row.open_connections} open {noun}"
        if row.extended_until is not None:
            hold += f"; extended until {_iso(row.extended_until)}"
    elif row.idle_deadline is not None:
        hold = f"scales down {relative(row.idle_deadline, now)} if unused"
    elif not row.ttl:
        hold = "no TTL: stays up until stopped"
    else:
        hold = ""
    return {
        "name": row.name,
        "owner": row.owner,
        "phase": row.phase or "Pending",
        "online": row.online,
        "apps": links,
        "ttl": row.ttl or "none",
        "last_activity": relative(row.last_activity, now),
        "last_activity_at": _iso(row.last_activity),
        "last_activity_source": row.last_activity_source or "",
        "deadline_at": _iso(row.idle_deadline),
        "hold": hold,
        "message": row.message,
        "dom_id": "ws-" + row.name,
    }


class Dashboard:
    def __init__(self, signin: SignIn, settings: BrowserSettings, workspaces: Workspaces) -> None:
        self.signin = signin
        self.settings = settings
        self.workspaces = workspaces

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.index),
            web.get("/dashboard/events", self.events),
            web.post("/dashboard/workspaces/{name}/{action}", self.act),
            web.post("/dashboard/create", self.create),
            web.get("/static/{file}", self.static),
        ]

    def _rows(self, user: Principal) -> list[WorkspaceRow]:
        rows = self.workspaces.rows()
        return sorted(
            (row for row in rows if user.admin or row.owner == user.name),
            key=lambda row: (row.owner, row.name),
        )

    def _cards(self, request: web.Request, user: Principal) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        scheme = "https" if self.settings.tls(request) else "http"
        return [
            card(
                row,
                scheme=scheme,
                apps_domain=self.settings.apps_domain,
                port=request.url.port,
                now=now,
            )
            for row in self._rows(user)
        ]

    def _session(self, request: web.Request) -> BrowserSession:
        session = self.signin.session(request)
        if session is None:
            raise self.signin.login_redirect(request)
        return session

    async def index(self, request: web.Request) -> web.StreamResponse:
        session = self.signin.session(request)
        if session is None:
            return page("signin.html", title="Sign in", user=None)
        return page(
            "dashboard.html",
            title="Workspaces",
            user=session.user,
            csrf=session.csrf_token,
            cards=self._cards(request, session.user),
            actions=self.workspaces.actions,
            notice=request.query.get("notice", ""),
        )

    async def events(self, request: web.Request) -> web.StreamResponse:
        if self.signin.session(request) is None:
            raise web.HTTPUnauthorized(text="sign in first")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):
            # Asked again each time: a user removed or demoted meanwhile is so at once.
            while (current := self.signin.session(request)) is not None:
                cards = self._cards(request, current.user)
                payload = {
                    "names": [item["name"] for item in cards],
                    "cards": {item["dom_id"]: fragment("live.html", c=item) for item in cards},
                }
                await response.write(f"data: {json.dumps(payload)}\n\n".encode())
                await asyncio.sleep(EVENT_INTERVAL)  # a push interval, not synchronisation
        return response

    def _back(self, notice: str) -> web.HTTPSeeOther:
        return web.HTTPSeeOther("/?" + urlencode({"notice": notice}) if notice else "/")

    async def act(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        form = await request.post()
        csrf = form.get("csrf")
        self.signin.check_csrf(request, session, csrf if isinstance(csrf, str) else None)
        name, action = request.match_info["name"], request.match_info["action"]
        user = session.user
        row = next((r for r in self._rows(user) if r.name == name), None)
        if row is None or action not in self.workspaces.actions - {"create"}:
            raise web.HTTPNotFound(text=f"no workspace named {name!r}, or no action {action!r}")
        try:
            if action == "wake":
                await self.workspaces.wake(name, user)
                notice = f"{name} is waking up"
            elif action == "stop":
                await self.workspaces.stop(name, user)
                notice = f"{name} is scaled down"
            elif action == "delete":
                await self.workspaces.delete(name, user)
                notice = f"{name} is deleted"
            else:
                raw = form.get("duration")
                duration = parse_ttl(raw) if isinstance(raw, str) and raw.strip() else None
                until = await self.workspaces.extend(name, user, duration)
                notice = f"{name} stays up until at least {_iso(until)}"
        except (ActionError, InvalidTTL) as exc:
            notice = f"{name}: {exc}"
        log.info("dashboard: %s %s %s", user.name, action, name)
        raise self._back(notice)

    async def create(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        if "create" not in self.workspaces.actions:
            raise web.HTTPNotFound(text="this runtime cannot create workspaces")
        if request.content_length is not None and request.content_length > MAX_DOCUMENT:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_DOCUMENT, actual_size=0)
        form = await request.post()
        csrf = form.get("csrf")
        self.signin.check_csrf(request, session, csrf if isinstance(csrf, str) else None)
        document = form.get("document")
        text = document if isinstance(document, str) else ""
        errors = await self.workspaces.create(text, session.user)
        raise self._back("; ".join(errors) if errors else "created")

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["file"]
        path = STATIC_DIR / name
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "max-age=300"})
