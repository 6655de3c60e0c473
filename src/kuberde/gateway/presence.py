"""The gateway's in-process transport of the activity interface (`kuberde.activity`).

It owns the registry of connected agents and the activity tracker, reports both as one
`ActivityReport`, and tells subscribers (the local runtime) the moment an agent connects or
goes, so a workspace's status follows its agent instead of waiting for a sweep. Watchers
(`/mgmt/agents?watch=1`, the operator's push) also hear when an agent becomes held or released.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from kuberde import policy
from kuberde.activity import ActivityReport, AgentListener, AgentStatus
from kuberde.clock import Clock, utc_now
from kuberde.gateway.activity import ActivityTracker
from kuberde.gateway.changes import AgentChanges
from kuberde.gateway.registry import AgentRegistry

__all__ = ["Presence"]

log = logging.getLogger(__name__)


class Presence:
    def __init__(self, *, clock: Clock = utc_now) -> None:
        self._clock = clock
        self._listeners: list[AgentListener] = []
        self._watchers: set[AgentChanges] = set()
        self.registry = AgentRegistry(on_change=self._connection_changed)
        self.activity = ActivityTracker(clock=clock, on_held=self._tell_watchers)

    def subscribe(self, listener: AgentListener) -> None:
        self._listeners.append(listener)

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    @contextlib.contextmanager
    def watching(self, limit: int) -> Iterator[AgentChanges]:
        """Collect changes for one watcher until the block ends (at most `limit` pending)."""
        changes = AgentChanges(limit)
        self._watchers.add(changes)
        try:
            yield changes
        finally:
            self._watchers.discard(changes)

    def end_watches(self) -> None:
        """Gateway shutdown: every watcher's stream ends now."""
        for changes in self._watchers:
            changes.close()

    def _tell_watchers(self, agent_id: str) -> None:
        for changes in self._watchers:
            changes.add(agent_id)

    def _connection_changed(self, agent_id: str) -> None:
        self._tell_watchers(agent_id)
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
