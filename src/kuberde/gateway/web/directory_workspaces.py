"""The dashboard's view when the gateway runs alone (`kuberde server`, `--kubernetes`).

It knows what its directory lists (owner, apps, an Error message) and its own activity
data. The operator does the lifecycle, so an action here is a request written on the
RDEAgent for it: a wake (the same request a connection makes), a stop or an extension.
Create and delete belong to `kubectl` there.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

from kuberde import policy
from kuberde.auth import Principal
from kuberde.gateway.app import Gateway
from kuberde.gateway.directory import AgentRecord, WakeError
from kuberde.gateway.kubernetes import Lifecycle
from kuberde.gateway.web.workspaces import ActionError, WorkspaceRow

__all__ = ["DirectoryWorkspaces", "LifecycleRequests"]


class LifecycleRequests(Protocol):
    """Where stops and extensions are asked for (the Kubernetes directory)."""

    def lifecycle(self, agent: str) -> Lifecycle: ...

    async def request_stop(self, agent: str, requested_by: str) -> None: ...

    async def request_extension(self, agent: str, until: datetime, requested_by: str) -> None: ...


class DirectoryWorkspaces:
    def __init__(self, gateway: Gateway, requests: LifecycleRequests | None = None) -> None:
        self.gateway = gateway
        self.requests = requests

    @property
    def actions(self) -> frozenset[str]:
        if self.gateway.directory is None:
            return frozenset()
        if self.requests is None:
            return frozenset({"wake"})
        return frozenset({"wake", "stop", "extend"})

    def _lifecycle(self, agent: str) -> Lifecycle:
        return self.requests.lifecycle(agent) if self.requests is not None else Lifecycle()

    def rows(self) -> list[WorkspaceRow]:
        directory = self.gateway.directory
        now = datetime.now(UTC)
        rows = []
        for record in directory.records() if directory is not None else []:
            connection = self.gateway.registry.get(record.agent_id)
            online = connection is not None and not connection.session.is_closed
            activity = self.gateway.activity.get(record.agent_id)
            lifecycle = self._lifecycle(record.agent_id)
            reported = lifecycle.phase or ("Running" if online else "Offline")
            phase = "Error" if record.error else reported
            connections = activity.sessions if activity else 0
            down = phase == policy.Phase.SCALED_DOWN.value
            rows.append(
                WorkspaceRow(
                    name=record.name,
                    owner=record.owner,
                    agent_id=record.agent_id,
                    phase=phase,
                    online=online,
                    pod=lifecycle.pod,
                    created_at=lifecycle.created_at,
                    ttl=policy.format_duration(lifecycle.ttl) if lifecycle.ttl else None,
                    last_activity=activity.last_activity if activity else None,
                    last_activity_source=activity.last_activity_source if activity else None,
                    idle_deadline=None if connections or down else lifecycle.idle_deadline,
                    open_connections=connections,
                    apps=record.apps,
                    message=record.error or "",
                    extended_until=policy.extension_ahead(
                        lifecycle.extended_until, now, scaled_down=down
                    ),
                )
            )
        return rows

    def log_tail(self, name: str, lines: int) -> list[str]:
        return []

    def _record(self, name: str) -> AgentRecord:
        directory = self.gateway.directory
        records = directory.records() if directory is not None else []
        record = next((r for r in records if r.name == name), None)
        if record is None:
            raise ActionError(f"no workspace named {name!r}")
        return record

    def _requests(self, action: str) -> LifecycleRequests:
        if self.requests is None:
            raise ActionError(f"{action} needs the gateway in Kubernetes mode (--kubernetes)")
        return self.requests

    async def wake(self, name: str, user: Principal) -> None:
        directory = self.gateway.directory
        record = self._record(name)
        try:
            if directory is not None:
                await directory.request_wake(record.agent_id, user.name)
        except WakeError as exc:
            raise ActionError(str(exc)) from None

    async def stop(self, name: str, user: Principal) -> None:
        requests, record = self._requests("stop"), self._record(name)
        try:
            await requests.request_stop(record.agent_id, user.name)
        except WakeError as exc:
            raise ActionError(str(exc)) from None

    async def extend(self, name: str, user: Principal, duration: timedelta | None) -> datetime:
        """The deadline is written as an annotation (`kuberde.io/extend-until`), for another
        TTL as for a chosen duration: the gateway cannot write the RDEAgent's activity."""
        requests, record = self._requests("extend"), self._record(name)
        now = datetime.now(UTC).replace(microsecond=0)
        try:
            deadline, _ = policy.extension(
                ttl=requests.lifecycle(record.agent_id).ttl, now=now, duration=duration
            )
            await requests.request_extension(record.agent_id, deadline, user.name)
        except (ValueError, WakeError) as exc:
            raise ActionError(str(exc)) from None
        return deadline

    def _unsupported(self, action: str) -> ActionError:
        return ActionError(f"{action} is done with kubectl on Kubernetes")

    async def create(self, text: str, user: Principal) -> list[str]:
        raise self._unsupported("create")

    async def delete(self, name: str, user: Principal) -> None:
        raise self._unsupported("delete")
