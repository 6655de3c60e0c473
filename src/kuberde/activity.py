"""The one activity interface both runtimes read: who is online, open sessions, last use.

The gateway is the only component that sees agents and users, so it is the source. It reaches
a runtime through one of two transports of the same `ActivityReport`:

- in-process (`kuberde up`): the gateway's `Presence`, current at every call, which also
  pushes an event (the agent's ID) whenever an agent connects or disconnects;
- over HTTP (Kubernetes): `GET /mgmt/agents`, whose JSON is `encode_report` of the same
  report, polled by the operator's gateway monitor; a watch on it would push the same events.

Nothing here does I/O or imports aiohttp, so the operator and the gateway share it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from kuberde import policy

__all__ = [
    "ActivityFeed",
    "ActivityReport",
    "AgentListener",
    "AgentStatus",
    "encode_report",
    "encode_status",
]

#: Called with an agent's ID when it connects or disconnects.
AgentListener = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """One agent as the gateway sees it; `sessions` includes users waiting for a wake."""

    agent_id: str
    owner: str | None
    online: bool
    sessions: int
    last_activity: datetime | None
    last_activity_source: str | None
    connected_since: datetime | None


@dataclass(frozen=True, slots=True)
class ActivityReport:
    """Every agent the gateway knows, as of `observed_at`."""

    agents: Mapping[str, AgentStatus]
    observed_at: datetime

    def snapshot(self, agent_id: str) -> policy.ActivitySnapshot:
        """What the lifecycle policy reads for one agent (an unknown agent is offline, unused)."""
        status = self.agents.get(agent_id)
        if status is None:
            return policy.ActivitySnapshot(False, 0, None, None, self.observed_at)
        return policy.ActivitySnapshot(
            online=status.online,
            open_streams=status.sessions,
            last_activity=status.last_activity,
            last_activity_source=status.last_activity_source,
            observed_at=self.observed_at,
        )


class ActivityFeed(Protocol):
    def report(self) -> ActivityReport | None:
        """The latest report; None while the source has not answered yet."""
        ...

    def snapshot(self, agent_id: str) -> policy.ActivitySnapshot | None:
        """One agent of the latest report, without building all of it; None as for `report`."""
        ...

    def subscribe(self, listener: AgentListener) -> None:
        """Call `listener` with an agent's ID each time that agent connects or disconnects."""
        ...


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def encode_status(status: AgentStatus) -> dict[str, Any]:
    """One agent's entry in `/mgmt/agents`, and the `/mgmt/agents/{id}` document."""
    return {
        "id": status.agent_id,
        "owner": status.owner,
        "online": status.online,
        "sessions": status.sessions,
        "last_activity": _iso(status.last_activity),
        "last_activity_source": status.last_activity_source,
        "connected_since": _iso(status.connected_since),
    }


def encode_report(report: ActivityReport) -> dict[str, Any]:
    """The `/mgmt/agents` document: agents sorted by ID, and when it was generated."""
    return {
        "agents": [encode_status(status) for _, status in sorted(report.agents.items())],
        "generated_at": report.observed_at.isoformat(),
    }
