"""Per-agent activity: open streams, waiting users and the last time the agent was used.

The operator and the local runtime decide scale-down from this data, so it must never
under-report use: a user waiting for a wake counts like an open stream. An agent connecting
is not use: a gateway restart reconnects every agent, and must not restart anyone's idle clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from kuberde.clock import Clock, utc_now

__all__ = ["ActivitySource", "ActivityTracker", "AgentActivity"]


class ActivitySource:
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
    """Byte activity is recorded at most once per `bytes_interval` per agent (hot path).

    `on_held` is called with an agent's ID when it becomes held (its first session opens) or
    released (its last one ends): what a watcher of the gateway must hear at once, without an
    event for every stream of a busy agent.
    """

    def __init__(
        self,
        *,
        bytes_interval: timedelta = timedelta(seconds=5),
        clock: Clock = utc_now,
        on_held: Callable[[str], None] | None = None,
    ) -> None:
        self._agents: dict[str, AgentActivity] = {}
        self._bytes_interval = bytes_interval
        self._clock = clock
        self._on_held = on_held

    def get(self, agent_id: str) -> AgentActivity | None:
        return self._agents.get(agent_id)

    def items(self) -> list[tuple[str, AgentActivity]]:
        return list(self._agents.items())

    def track(self, agent_id: str) -> None:
        """Know the agent (listed, also once offline) without recording any use of it."""
        self._agents.setdefault(agent_id, AgentActivity())

    def record(self, agent_id: str, source: str) -> None:
        activity = self._agents.setdefault(agent_id, AgentActivity())
        activity.last_activity = self._clock()
        activity.last_activity_source = source

    def _count(self, agent_id: str, *, streams: int = 0, waiting: int = 0) -> None:
        """Move the agent's counts (never below zero), telling `on_held` if it changes hands."""
        activity = self._agents[agent_id]
        held = activity.sessions > 0
        activity.open_streams = max(0, activity.open_streams + streams)
        activity.waiting_users = max(0, activity.waiting_users + waiting)
        if (activity.sessions > 0) != held and self._on_held is not None:
            self._on_held(agent_id)

    def stream_opened(self, agent_id: str) -> None:
        self.record(agent_id, ActivitySource.STREAM_OPENED)
        self._count(agent_id, streams=1)

    def stream_closed(self, agent_id: str) -> None:
        self.record(agent_id, ActivitySource.STREAM_CLOSED)
        self._count(agent_id, streams=-1)

    def waiting_started(self, agent_id: str) -> None:
        self.record(agent_id, ActivitySource.WAITING)
        self._count(agent_id, waiting=1)

    def waiting_ended(self, agent_id: str) -> None:
        self._count(agent_id, waiting=-1)

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
        self._count(agent_id, streams=1)

    def http_ended(self, agent_id: str) -> None:
        self.bytes_moved(agent_id, ActivitySource.HTTP)
        self._count(agent_id, streams=-1)

    def forget(self, agent_id: str) -> None:
        self._agents.pop(agent_id, None)
