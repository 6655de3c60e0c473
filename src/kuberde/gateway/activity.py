"""Per-agent activity: open streams, waiting users and the last time the agent was used.

The operator and the local runtime decide scale-down from this data, so it must never
under-report use: a user waiting for a wake counts like an open stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from kuberde.clock import Clock, utc_now

__all__ = ["ActivitySource", "ActivityTracker", "AgentActivity"]


class ActivitySource:
    CONNECTED = "connected"
    STREAM_OPENED = "stream opened"
    STREAM_CLOSED = "stream closed"
    BYTES = "bytes"
    WAITING = "user waiting"
    #: Requests and WebSocket messages through the app proxy.
    HTTP = "http"


@dataclass
class AgentActivity:
    open_streams: int = 0
    waiting_users: int = 0
    last_activity: datetime | None = None
    last_activity_source: str | None = None

    @property
    def sessions(self) -> int:
        """What the operator treats as "in use": open streams plus users waiting for a wake."""
        return self.open_streams + self.waiting_users


class ActivityTracker:
    """Byte activity is recorded at most once per `bytes_interval` per agent (hot path)."""

    def __init__(
        self,
        *,
        bytes_interval: timedelta = timedelta(seconds=5),
        clock: Clock = utc_now,
    ) -> None:
        self._agents: dict[str, AgentActivity] = {}
        self._bytes_interval = bytes_interval
        self._clock = clock

    def get(self, agent_id: str) -> AgentActivity | None:
        return self._agents.get(agent_id)

    def items(self) -> list[tuple[str, AgentActivity]]:
        return list(self._agents.items())

    def record(self, agent_id: str, source: str) -> None:
        activity = self._agents.setdefault(agent_id, AgentActivity())
        activity.last_activity = self._clock()
        activity.last_activity_source = source

    def stream_opened(self, agent_id: str) -> None:
        self.record(agent_id, ActivitySource.STREAM_OPENED)
        self._agents[agent_id].open_streams += 1

    def stream_closed(self, agent_id: str) -> None:
        self.record(agent_id, ActivitySource.STREAM_CLOSED)
        activity = self._agents[agent_id]
        activity.open_streams = max(0, activity.open_streams - 1)

    def waiting_started(self, agent_id: str) -> None:
        self.record(agent_id, ActivitySource.WAITING)
        self._agents[agent_id].waiting_users += 1

    def waiting_ended(self, agent_id: str) -> None:
        activity = self._agents[agent_id]
        activity.waiting_users = max(0, activity.waiting_users - 1)

    def bytes_moved(self, agent_id: str, source: str = ActivitySource.BYTES) -> None:
        """Traffic on an open connection (throttled): bytes of a stream, or `http` requests."""
        activity = self._agents.get(agent_id)
        now = self._clock()
        if activity is None or activity.last_activity is None:
            self.record(agent_id, source)
        elif now - activity.last_activity >= self._bytes_interval:
            activity.last_activity = now
            activity.last_activity_source = source

    def http_started(self, agent_id: str) -> None:
        """A proxied request or WebSocket began: it holds the agent up like an open stream."""
        self.bytes_moved(agent_id, ActivitySource.HTTP)
        self._agents[agent_id].open_streams += 1

    def http_ended(self, agent_id: str) -> None:
        self.bytes_moved(agent_id, ActivitySource.HTTP)
        activity = self._agents[agent_id]
        activity.open_streams = max(0, activity.open_streams - 1)

    def forget(self, agent_id: str) -> None:
        self._agents.pop(agent_id, None)
