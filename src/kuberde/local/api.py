"""`/api/workspaces`: what `kuberde apply/delete/logs` talk to under `kuberde up`, and
`/api/runtime` for `kuberde doctor` (listing, wake, stop and extend are
`kuberde.gateway.web.actions_api`'s, shared with Kubernetes).

Users see and change their own workspaces (logs included); admins see all. Authentication is
the gateway's (bearer user token), so there is one way in, not two. When `kuberde up` is not
root, every workload runs as its OS user, so only that user and admins may define workloads
(`workload_refusal`); others still use the workspaces made for them.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from kuberde.auth import Principal
from kuberde.gateway.app import GATEWAY_KEY, Gateway, json_error
from kuberde.local.runtime import LocalRuntime
from kuberde.local.store import WorkspaceState
from kuberde.local.supervisor import follow_log, tail_log
from kuberde.messages import not_found
from kuberde.resource import Workload, load_documents, parse_agent

__all__ = ["add_workspace_routes", "apply_documents"]

MAX_APPLY_BYTES = 1024 * 1024
#: How far back `/api/runtime` reports refused agent credentials.
REFUSALS_WINDOW = 600.0


def workload_refusal(
    user: Principal,
    machine_owner: str,
    isolated: bool,
    new: Workload | None,
    current: Workload | None,
) -> str | None:
    """Why `user` may not set a workspace's workload to `new` (from `current`), or None."""
    if isolated or user.admin or user.name == machine_owner or new == current:
        return None
    return (
        f"only {machine_owner!r} and admins may create or change workloads here: kuberde up "
        f"is not running as root, so every workload would run as its OS user {machine_owner!r}"
    )


async def apply_documents(
    runtime: LocalRuntime, text: str, source: str, user: Principal
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Apply each RDEAgent of `text` the user may own and define; returns what was applied,
    the errors, and the documents refused because of their workload (`workload_refusal`)."""
    applied: list[dict[str, Any]] = []
    errors: list[str] = []
    forbidden: list[str] = []
    accounts = runtime.accounts
    for result in load_documents(text, source):
        if result.agent is None:
            errors.append(str(result.error))
            continue
        agent = result.agent
        if agent.spec.owner != user.name and not user.admin:
            errors.append(
                f"{result.location} ({agent.metadata.name!r}): owner {agent.spec.owner!r} "
                f"is not you ({user.name!r})"
            )
            continue
        existing = runtime.get(agent.metadata.name)
        refusal = workload_refusal(
            user,
            accounts.machine_owner,
            accounts.isolated,
            agent.spec.workload,
            parse_agent(existing.document).spec.workload if existing is not None else None,
        )
        if refusal is not None:
            forbidden.append(f"{result.location} ({agent.metadata.name!r}): {refusal}")
            continue
        try:
            state = await runtime.apply(agent)
        except ValueError as exc:
            errors.append(f"{result.location} ({agent.metadata.name!r}): {exc}")
            continue
        created = existing is None
        applied.append({"name": state.name, "agent_id": state.agent_id, "created": created})
    return applied, errors, forbidden


class WorkspaceApi:
    def __init__(self, runtime: LocalRuntime, gateway: Gateway) -> None:
        self.runtime = runtime
        self.gateway = gateway

    async def _user(self, request: web.Request) -> Principal:
        return await self.gateway.authenticate(request, "user")

    def _owned(self, user: Principal, name: str) -> WorkspaceState:
        state = self.runtime.get(name)
        if state is None or (state.owner != user.name and not user.admin):
            # Someone else's workspace is reported as missing: names are not disclosed.
            raise json_error(web.HTTPNotFound, not_found(name), "not_found")
        return state

    async def runtime_status(self, request: web.Request) -> web.Response:
        """What `kuberde doctor` checks locally: the lifecycle loop's sweeps and timings,
        agent credentials the gateway refused lately, and the caller's workspaces as the
        runtime sees them (the spec's TTL, since when its processes run)."""
        user = await self._user(request)
        timings = self.runtime.timings()
        workspaces = []
        for state in self.runtime.list():
            if state.owner != user.name and not user.admin:
                continue
            view = self.runtime.view(state)
            since = state.started_at or state.created_at
            workspaces.append(
                {
                    "name": view.name,
                    "phase": view.phase,
                    "online": view.online,
                    "pod": view.pod,
                    "since": since.isoformat(),
                    "ttl": (state.document.get("spec") or {}).get("ttl"),
                    "message": view.message,
                }
            )
        refusals = self.gateway.metrics.recent_agent_refusals(REFUSALS_WINDOW)
        return web.json_response(
            {
                "runtime": "local",
                "sweep_interval_s": self.runtime.settings.sweep_interval,
                "sweeps": timings.sweeps,
                "last_sweep_age_s": timings.last_sweep_age,
                "reconcile_ms": list(timings.reconcile_ms),
                "agent_refusals": {"window_s": REFUSALS_WINDOW, "reasons": refusals},
                "workspaces": workspaces,
            }
        )

    async def apply(self, request: web.Request) -> web.Response:
        user = await self._user(request)
        if request.content_length is not None and request.content_length > MAX_APPLY_BYTES:
            raise json_error(web.HTTPRequestEntityTooLarge, "document too large", "too_large")
        text = await request.text()
        applied, errors, forbidden = await apply_documents(
            self.runtime, text, request.query.get("source", "request"), user
        )
        if forbidden and not applied:
            raise json_error(web.HTTPForbidden, "; ".join(forbidden + errors), "forbidden")
        errors += forbidden
        status = 422 if errors and not applied else 200
        return web.json_response({"applied": applied, "errors": errors}, status=status)

    async def delete(self, request: web.Request) -> web.Response:
        user = await self._user(request)
        state = self._owned(user, request.match_info["name"])
        await self.runtime.delete(state.name)
        return web.json_response({"deleted": state.name})

    async def logs(self, request: web.Request) -> web.StreamResponse:
        user = await self._user(request)
        state = self._owned(user, request.match_info["name"])
        suffix = ".agent.log" if request.query.get("container") == "agent" else ".log"
        path = self.runtime.settings.logs_dir / f"{state.name}{suffix}"
        tail = request.query.get("tail", "")
        lines = int(tail) if tail.isdigit() else 200
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        history = tail_log(path, lines=lines, max_bytes=1024 * 1024)
        if history and not history.endswith("\n"):
            history += "\n"
        await response.write(history.encode())
        if request.query.get("follow") != "1":
            await response.write_eof()
            return response
        with contextlib.suppress(ConnectionResetError):
            async for chunk in follow_log(path, from_end=True):
                await response.write(chunk)
        return response


def add_workspace_routes(app: web.Application, runtime: LocalRuntime) -> None:
    api = WorkspaceApi(runtime, app[GATEWAY_KEY])
    app.router.add_get("/api/runtime", api.runtime_status)
    app.router.add_post("/api/workspaces", api.apply)
    app.router.add_delete("/api/workspaces/{name}", api.delete)
    app.router.add_get("/api/workspaces/{name}/logs", api.logs)
