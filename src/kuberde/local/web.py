"""The dashboard's view of `kuberde up`'s workspaces: the local runtime behind `Workspaces`.

Locally everything is at hand: phases, the workload's output for the waiting page, and
every action (wake, stop, extend, create, delete). Ownership was checked by the caller.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from kuberde.auth import Principal
from kuberde.gateway.web.workspaces import ACTIONS, ActionError, WorkspaceRow
from kuberde.local.api import apply_documents
from kuberde.local.runtime import LocalRuntime, UnknownWorkspace
from kuberde.local.supervisor import tail_log
from kuberde.resource import parse_agent

__all__ = ["LocalWorkspaces"]


class LocalWorkspaces:
    def __init__(self, runtime: LocalRuntime) -> None:
        self.runtime = runtime

    @property
    def actions(self) -> frozenset[str]:
        return ACTIONS

    def rows(self) -> list[WorkspaceRow]:
        rows = []
        for state in self.runtime.list():
            view = self.runtime.view(state)
            rows.append(
                WorkspaceRow(
                    name=view.name,
                    owner=view.owner,
                    agent_id=view.agent_id,
                    phase=view.phase,
                    online=view.online,
                    pod=view.pod,
                    created_at=view.created_at,
                    ttl=view.ttl,
                    last_activity=view.last_activity,
                    last_activity_source=view.last_activity_source,
                    idle_deadline=view.idle_deadline,
                    open_connections=view.connections,
                    apps=tuple(parse_agent(state.document).spec.apps),
                    message=view.message,
                    extended_until=view.extended_until,
                )
            )
        return rows

    def log_tail(self, name: str, lines: int) -> list[str]:
        text = tail_log(self.runtime.settings.logs_dir / f"{name}.log", lines=lines)
        return text.splitlines() if text else []

    async def wake(self, name: str, user: Principal) -> None:
        try:
            await self.runtime.wake(name)
        except UnknownWorkspace as exc:
            raise ActionError(str(exc)) from None

    async def stop(self, name: str, user: Principal) -> None:
        try:
            await self.runtime.stop(name)
        except UnknownWorkspace as exc:
            raise ActionError(str(exc)) from None

    async def extend(self, name: str, user: Principal, duration: timedelta | None) -> datetime:
        try:
            return await self.runtime.extend(name, duration)
        except (UnknownWorkspace, ValueError) as exc:
            raise ActionError(str(exc)) from None

    async def create(self, text: str, user: Principal) -> list[str]:
        applied, errors, forbidden = await apply_documents(self.runtime, text, "dashboard", user)
        if not applied and not errors and not forbidden:
            return ["the document holds no RDEAgent"]
        return errors + forbidden

    async def delete(self, name: str, user: Principal) -> None:
        try:
            await self.runtime.delete(name)
        except UnknownWorkspace as exc:
            raise ActionError(str(exc)) from None
