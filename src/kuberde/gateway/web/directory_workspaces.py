"""The dashboard's view when the gateway runs alone (`kuberde server`, `--kubernetes`).

It knows what its directory lists (owner, apps, an Error message) and its own activity
data; the operator does the lifecycle, so the one action here is a wake (the same request
a connection makes). Stop, extend, create and delete belong to `kubectl` there.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from kuberde.auth import Principal
from kuberde.gateway.app import Gateway
from kuberde.gateway.directory import WakeError
from kuberde.gateway.web.workspaces import ActionError, WorkspaceRow

__all__ = ["DirectoryWorkspaces"]


class DirectoryWorkspaces:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @property
    def actions(self) -> frozenset[str]:
        return frozenset({"wake"}) if self.gateway.directory is not None else frozenset()

    def rows(self) -> list[WorkspaceRow]:
        directory = self.gateway.directory
        rows = []
        for record in directory.records() if directory is not None else []:
            connection = self.gateway.registry.get(record.agent_id)
            online = connection is not None and not connection.session.is_closed
            activity = self.gateway.activity.get(record.agent_id)
            phase = "Error" if record.error else ("Running" if online else "Offline")
            rows.append(
                WorkspaceRow(
                    name=record.name,
                    owner=record.owner,
                    agent_id=record.agent_id,
                    phase=phase,
                    online=online,
                    ttl=None,
                    last_activity=activity.last_activity if activity else None,
                    last_activity_source=activity.last_activity_source if activity else None,
                    idle_deadline=None,
                    open_connections=activity.sessions if activity else 0,
                    apps=record.apps,
                    message=record.error or "",
                )
            )
        return rows

    def log_tail(self, name: str, lines: int) -> list[str]:
        return []

    async def wake(self, name: str, user: Principal) -> None:
        directory = self.gateway.directory
        record = (
            next((r for r in directory.records() if r.name == name), None) if directory else None
        )
        if directory is None or record is None:
            raise ActionError(f"no workspace named {name!r}")
        try:
            await directory.request_wake(record.agent_id, user.name)
        except WakeError as exc:
            raise ActionError(str(exc)) from None

    def _unsupported(self, action: str) -> ActionError:
        return ActionError(f"{action} is done with kubectl on Kubernetes")

    async def stop(self, name: str, user: Principal) -> None:
        raise self._unsupported("stop")

    async def extend(self, name: str, user: Principal, duration: timedelta | None) -> datetime:
        raise self._unsupported("extend")

    async def create(self, text: str, user: Principal) -> list[str]:
        raise self._unsupported("create")

    async def delete(self, name: str, user: Principal) -> None:
        raise self._unsupported("delete")
