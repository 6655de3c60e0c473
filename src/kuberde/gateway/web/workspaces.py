"""What the dashboard and the wake page know about workspaces, whichever runtime runs them.

The local runtime (`kuberde up`) knows phases, logs and can stop, extend, create and delete;
a gateway in front of Kubernetes knows what its directory and its own activity data say and
can wake. `actions` tells the dashboard which buttons to show.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from kuberde.auth import Principal
from kuberde.resource import App

__all__ = ["ACTIONS", "ActionError", "WorkspaceRow", "Workspaces"]

ACTIONS = frozenset({"wake", "stop", "extend", "create", "delete"})


class ActionError(Exception):
    """An action the runtime refused; the message is shown to the user."""


@dataclass(frozen=True)
class WorkspaceRow:
    name: str
    owner: str
    agent_id: str
    phase: str
    online: bool
    #: What runs the workload: the pod's name on Kubernetes, the process ID under `kuberde up`.
    pod: str | None
    created_at: datetime | None
    ttl: str | None
    last_activity: datetime | None
    last_activity_source: str | None
    #: When it scales down if nobody uses it (None: no TTL, already down, or held).
    idle_deadline: datetime | None
    #: Open streams and users waiting: while above 0 the TTL does not apply.
    open_connections: int
    apps: tuple[App, ...]
    message: str
    #: An extension still ahead: after the connections close it holds until then.
    extended_until: datetime | None


class Workspaces(Protocol):
    @property
    def actions(self) -> frozenset[str]: ...

    def rows(self) -> list[WorkspaceRow]: ...

    def log_tail(self, name: str, lines: int) -> list[str]:
        """The workload's last output lines, or [] where the runtime does not show them."""
        ...

    async def wake(self, name: str, user: Principal) -> None: ...

    async def stop(self, name: str, user: Principal) -> None: ...

    async def extend(self, name: str, user: Principal, duration: timedelta | None) -> datetime:
        """Keep it up for another TTL (None) or `duration`; returns the new deadline."""
        ...

    async def create(self, text: str, user: Principal) -> list[str]:
        """Apply RDEAgent documents; returns the errors (empty when all applied)."""
        ...

    async def delete(self, name: str, user: Principal) -> None: ...
