"""What the gateway knows about agents that are not connected: owner, state and how to wake.

The tunnel core knows only connected agents. The local runtime (`kuberde up`) and the
Kubernetes watch each provide a directory so the gateway can authorize users for offline
agents and ask for them to be woken; the gateway itself never starts or scales anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kuberde.resource import App

__all__ = ["AgentDirectory", "AgentRecord", "WakeError"]


@dataclass(frozen=True)
class AgentRecord:
    agent_id: str
    owner: str
    name: str
    uid: str | None = None
    #: Set when the workspace cannot run (phase Error); users connecting get this message.
    error: str | None = None
    #: Its web apps (`spec.apps`); the first is the default app of its app host.
    apps: tuple[App, ...] = ()
    #: Ports users may reach (allowed ports, app ports and the local target's).
    ports: tuple[int, ...] = ()
    #: The OS user its workload runs as, when the runtime knows (`kuberde ssh`'s default).
    login: str | None = None


class WakeError(Exception):
    """The workspace cannot be woken; the message is shown to the user."""


class AgentDirectory(Protocol):
    def lookup(self, agent_id: str) -> AgentRecord | None: ...

    def records(self) -> list[AgentRecord]: ...

    async def catch_up(self, *agent_ids: str) -> None:
        """Return once lookups reflect the source as of this call (instant if always current).

        The gateway calls it, with the IDs that missed, before telling a user an agent does
        not exist, so that a workspace created a moment ago (`kubectl apply`, then
        `kuberde ssh`) is found. A directory may return at once for IDs it already knows to
        be missing since its last look (misses cached until the next refresh).
        """
        ...

    async def request_wake(self, agent_id: str, requested_by: str) -> None:
        """Ask for the agent to be started; returns once the request is recorded."""
        ...
