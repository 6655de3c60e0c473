"""The gateway's in-process transport of the activity interface (`kuberde.activity`).

It owns the registry of connected agents and the activity tracker, reports both as one
`ActivityReport`, and tells subscribers (the local runtime) the moment an agent connects or
goes, so a workspace's status follows its agent instead of waiting for a sweep.
"""

from __future__ import annotations

import logging

from kuberde import policy
from kuberde.activity import ActivityReport, AgentListener, AgentStatus
from kuberde.clock import Clock, utc_now
from kuberde.gateway.activity import ActivityTracker
from kuberde.gateway.registry import AgentRegistry

__all__ = ["Presence"]

log = logging.getLogger(__name__)


class Presence:
    def __init__(self, *, clock: Clock = utc_now) -> None:
        self._clock = clock
        self._listeners: list[AgentListener] = []
        self.registry = AgentRegistry(on_change=self._changed)
        self.activity = ActivityTracker(clock=clock)

    def subscribe(self, listener: AgentListener) -> None:
        self._listeners.append(listener)

    def _changed(self, agent_id: str) -> None:
        for listener in self._listeners:
            try:
                listener(agent_id)
            except Exception:
                log.exception("agent listener failed for %s", agent_id)

    def status(self, agent_id: str) -> AgentStatus | None:
        """One agent; None if the gateway has neither seen it connect nor recorded its use."""
        connection = self.registry.get(agent_id)
        activity = self.activity.get(agent_id)
        if connection is None and activity is None:
            return None
        return AgentStatus(
            agent_id=agent_id,
            owner=connection.owner if connection is not None else None,
            online=connection is not None,
            sessions=activity.sessions if activity is not None else 0,
            last_activity=activity.last_activity if activity is not None else None,
            last_activity_source=activity.last_activity_source if activity is not None else None,
            connected_since=connection.connected_since if connection is not None else None,
        )

    def snapshot(self, agent_id: str) -> policy.ActivitySnapshot:
        status = self.status(agent_id)
        agents = {agent_id: status} if status is not None else {}
        return ActivityReport(agents, self._clock()).snapshot(agent_id)

    def report(self) -> ActivityReport:
        ids = {connection.agent_id for connection in self.registry.connections()}
        ids.update(agent for agent, _ in self.activity.items())
        agents = {agent: status for agent in ids if (status := self.status(agent)) is not None}
        return ActivityReport(agents, self._clock())
