"""`POST /api/workspaces/NAME/{wake,stop,extend}`: `kuberde wake/stop/extend`, in both runtimes.

The same `Workspaces` the dashboard acts through, so the CLI and the dashboard cannot
disagree: the local runtime acts at once; in front of Kubernetes the gateway writes the
request on the RDEAgent and the operator acts on it. Users act on their own workspaces,
admins on all; someone else's is reported as missing.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from kuberde.auth import Principal
from kuberde.gateway.app import GATEWAY_KEY, Gateway, json_error
from kuberde.gateway.web.workspaces import ActionError, WorkspaceRow, Workspaces
from kuberde.messages import not_found
from kuberde.naming import InvalidName, agent_id
from kuberde.policy import InvalidTTL, parse_ttl

__all__ = ["add_action_routes"]

#: The reply's key for each action: `{"waking": NAME}`, `{"stopped": NAME}`.
_REPLY_KEYS = {"wake": "waking", "stop": "stopped"}


class ActionApi:
    def __init__(self, gateway: Gateway, workspaces: Workspaces) -> None:
        self.gateway = gateway
        self.workspaces = workspaces

    def _row(self, name: str) -> WorkspaceRow | None:
        return next((r for r in self.workspaces.rows() if r.name == name), None)

    async def _owned(self, request: web.Request) -> tuple[Principal, WorkspaceRow]:
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

    async def wake_or_stop(self, request: web.Request) -> web.Response:
        user, row = await self._owned(request)
        action = request.match_info["action"]
        act = self.workspaces.wake if action == "wake" else self.workspaces.stop
        try:
            await act(row.name, user)
        except ActionError as exc:
            raise json_error(web.HTTPServiceUnavailable, str(exc), f"{action}_failed") from None
        return web.json_response({_REPLY_KEYS[action]: row.name})

    async def extend(self, request: web.Request) -> web.Response:
        """Keep it up for another TTL, or `?duration=2h` from now."""
        user, row = await self._owned(request)
        raw = request.query.get("duration", "")
        try:
            until = await self.workspaces.extend(row.name, user, parse_ttl(raw) if raw else None)
        except (InvalidTTL, ActionError) as exc:
            message = f"cannot extend {row.name}: {exc}"
            raise json_error(web.HTTPBadRequest, message, "bad_extend") from None
        return web.json_response({"extended": row.name, "until": until.isoformat()})


def add_action_routes(app: web.Application, workspaces: Workspaces) -> None:
    api = ActionApi(app[GATEWAY_KEY], workspaces)
    app.router.add_post("/api/workspaces/{name}/{action:wake|stop}", api.wake_or_stop)
    app.router.add_post("/api/workspaces/{name}/extend", api.extend)
