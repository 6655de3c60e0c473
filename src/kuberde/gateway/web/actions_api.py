"""`GET /api/workspaces[/NAME]` and `POST /api/workspaces/NAME/{wake,stop,extend}`: what
`kuberde ls/open/wake/stop/extend` (and shell completion) talk to, in both runtimes.

The same `Workspaces` the dashboard reads and acts through, so the CLI and the dashboard
cannot disagree: the local runtime acts at once; in front of Kubernetes the gateway writes
the request on the RDEAgent and the operator acts on it. Users see and act on their own
workspaces, admins on all; someone else's is reported as missing. On Kubernetes, creating,
deleting and reading logs is `kubectl`'s (`add_kubectl_hints` says so).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any

from aiohttp import web

from kuberde.auth import Principal
from kuberde.gateway.app import GATEWAY_KEY, Gateway, json_error
from kuberde.gateway.apphost import workspace_app_urls
from kuberde.gateway.web.workspaces import ActionError, WorkspaceRow, Workspaces
from kuberde.messages import not_found
from kuberde.naming import InvalidName, agent_id
from kuberde.policy import InvalidTTL, parse_ttl

__all__ = ["add_action_routes", "add_kubectl_hints", "row_json"]

#: The reply's key for each action: `{"waking": NAME}`, `{"stopped": NAME}`.
_REPLY_KEYS = {"wake": "waking", "stop": "stopped"}


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def row_json(row: WorkspaceRow, urls: dict[str, str]) -> dict[str, Any]:
    """The `kuberde ls` item: the `kubectl get rdeagent -o wide` columns and each app with its
    browser URL (`urls` by app name; None where this gateway serves no apps)."""
    return {
        "name": row.name,
        "agent_id": row.agent_id,
        "owner": row.owner,
        "phase": row.phase,
        "online": row.online,
        "pod": row.pod,
        "created_at": _when(row.created_at),
        "ttl": row.ttl,
        "last_activity": _when(row.last_activity),
        "last_activity_source": row.last_activity_source,
        "idle_deadline": _when(row.idle_deadline),
        "message": row.message,
        "connections": row.open_connections,
        "extended_until": _when(row.extended_until),
        "apps": [
            {"name": app.name, "port": app.port, "path": app.path, "url": urls.get(app.name)}
            for app in row.apps
        ],
    }


class ActionApi:
    def __init__(self, gateway: Gateway, workspaces: Workspaces, apps_domain: str | None) -> None:
        self.gateway = gateway
        self.workspaces = workspaces
        self.apps_domain = apps_domain

    def _json(self, request: web.Request, row: WorkspaceRow) -> dict[str, Any]:
        """The row with its apps' URLs, which are on this gateway's port."""
        urls = (
            workspace_app_urls(
                row.name,
                row.owner,
                [(app.name, app.port, app.path) for app in row.apps],
                scheme=request.scheme,
                apps_domain=self.apps_domain,
                gateway_port=request.url.port,
            )
            if self.apps_domain is not None
            else []
        )
        return row_json(row, dict(urls))

    def _row(self, name: str) -> WorkspaceRow | None:
        return next((r for r in self.workspaces.rows() if r.name == name), None)

    async def owned(self, request: web.Request) -> tuple[Principal, WorkspaceRow]:
        user = await self.gateway.authenticate(request, "user")
        name = request.match_info["name"]
        row = self._row(name)
        directory = self.gateway.directory
        if row is None and directory is not None:
            # Applied a moment ago? Let the directory catch up with the user's ID first.
            with contextlib.suppress(TimeoutError, InvalidName):
                async with asyncio.timeout(self.gateway.settings.directory_catch_up):
                    await directory.catch_up(agent_id(user.name, name))
            row = self._row(name)
        if row is None or (row.owner != user.name and not user.admin):
            raise json_error(web.HTTPNotFound, not_found(name), "not_found")
        return user, row

    async def list(self, request: web.Request) -> web.Response:
        user = await self.gateway.authenticate(request, "user")
        rows = [
            self._json(request, row)
            for row in self.workspaces.rows()
            if row.owner == user.name or user.admin
        ]
        return web.json_response({"workspaces": rows})

    async def get(self, request: web.Request) -> web.Response:
        _, row = await self.owned(request)
        return web.json_response(self._json(request, row))

    async def wake_or_stop(self, request: web.Request) -> web.Response:
        user, row = await self.owned(request)
        action = request.match_info["action"]
        act = self.workspaces.wake if action == "wake" else self.workspaces.stop
        try:
            await act(row.name, user)
        except ActionError as exc:
            raise json_error(web.HTTPServiceUnavailable, str(exc), f"{action}_failed") from None
        return web.json_response({_REPLY_KEYS[action]: row.name})

    async def extend(self, request: web.Request) -> web.Response:
        """Keep it up for another TTL, or `?duration=2h` from now."""
        user, row = await self.owned(request)
        raw = request.query.get("duration", "")
        try:
            until = await self.workspaces.extend(row.name, user, parse_ttl(raw) if raw else None)
        except (InvalidTTL, ActionError) as exc:
            message = f"cannot extend {row.name}: {exc}"
            raise json_error(web.HTTPBadRequest, message, "bad_extend") from None
        return web.json_response({"extended": row.name, "until": until.isoformat()})


class KubectlHints:
    """What `kuberde apply/delete/logs` are on Kubernetes: the gateway may not write
    RDEAgents or read pod logs (its RBAC stays narrow), so each says which kubectl does it."""

    def __init__(self, api: ActionApi, namespace: str) -> None:
        self.api = api
        self.namespace = namespace

    def _refusal(self, command: str) -> web.HTTPException:
        message = (
            f"on Kubernetes, workspaces are RDEAgents: `kubectl -n {self.namespace} {command}`"
        )
        return json_error(web.HTTPNotImplemented, message, "use_kubectl")

    async def apply(self, request: web.Request) -> web.Response:
        await self.api.gateway.authenticate(request, "user")
        raise self._refusal("apply -f FILE")

    async def delete(self, request: web.Request) -> web.Response:
        _, row = await self.api.owned(request)
        raise self._refusal(f"delete rdeagent {row.name}")

    async def logs(self, request: web.Request) -> web.Response:
        _, row = await self.api.owned(request)
        raise self._refusal(f"logs deploy/{row.agent_id}")


def add_action_routes(
    app: web.Application, workspaces: Workspaces, apps_domain: str | None = None
) -> ActionApi:
    """The routes both runtimes serve; returns the API for `add_kubectl_hints`."""
    api = ActionApi(app[GATEWAY_KEY], workspaces, apps_domain)
    app.router.add_get("/api/workspaces", api.list)
    app.router.add_get("/api/workspaces/{name}", api.get)
    app.router.add_post("/api/workspaces/{name}/{action:wake|stop}", api.wake_or_stop)
    app.router.add_post("/api/workspaces/{name}/extend", api.extend)
    return api


def add_kubectl_hints(app: web.Application, api: ActionApi, namespace: str) -> None:
    hints = KubectlHints(api, namespace)
    app.router.add_post("/api/workspaces", hints.apply)
    app.router.add_delete("/api/workspaces/{name}", hints.delete)
    app.router.add_get("/api/workspaces/{name}/logs", hints.logs)
