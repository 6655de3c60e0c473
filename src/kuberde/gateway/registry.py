"""Connected agents by ID, and waiting for one to come online (the wake path)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from kuberde.mux import Session

__all__ = ["AgentConnection", "AgentRegistry"]


@dataclass(eq=False)
class AgentConnection:
    agent_id: str
    #: From the verified credential — never parsed out of the ID.
    owner: str
    uid: str | None
    session: Session
    connected_since: datetime = field(repr=False, default_factory=datetime.now)


class AgentRegistry:
    """`on_change` is called with the agent's ID whenever it connects or disconnects."""

    def __init__(self, on_change: Callable[[str], None] | None = None) -> None:
        self._on_change = on_change
        self._online: dict[str, AgentConnection] = {}
        self._waiters: dict[str, list[asyncio.Future[AgentConnection]]] = {}

    def __len__(self) -> int:
        return len(self._online)

    def get(self, agent_id: str) -> AgentConnection | None:
        return self._online.get(agent_id)

    def connections(self) -> list[AgentConnection]:
        return list(self._online.values())

    def register(self, connection: AgentConnection) -> AgentConnection | None:
        """Make `connection` current for its ID; return the one it replaces, if any."""
        previous = self._online.get(connection.agent_id)
        self._online[connection.agent_id] = connection
        for waiter in self._waiters.pop(connection.agent_id, []):
            if not waiter.done():
                waiter.set_result(connection)
        if self._on_change is not None:
            self._on_change(connection.agent_id)
        return previous

    def unregister(self, connection: AgentConnection) -> bool:
        """Remove `connection` if it is still current (a replaced one is already gone)."""
        if self._online.get(connection.agent_id) is connection:
            del self._online[connection.agent_id]
            if self._on_change is not None:
                self._on_change(connection.agent_id)
            return True
        return False

    async def wait_online(self, agent_id: str) -> AgentConnection:
        connection = self._online.get(agent_id)
        if connection is not None:
            return connection
        waiter: asyncio.Future[AgentConnection] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(agent_id, [])
        waiters.append(waiter)
        try:
            return await waiter
        finally:
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(agent_id, None)
