"""Coalesced agent changes for one watcher of `/mgmt/agents`: which agents, not what happened.

A watcher that reads slowly must not grow the gateway's memory. Each agent is pending at most
once, whatever happened to it meanwhile, and the watcher reads the agent's current status when
it gets to it. Past `limit` pending agents (a watcher far behind on a very large gateway) the
set is dropped for one full list, which says everything at once. No I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

__all__ = ["AgentChanges", "Batch"]


@dataclass(frozen=True, slots=True)
class Batch:
    """What changed since the last batch: these agents, or (`resync`) possibly any."""

    agent_ids: tuple[str, ...]
    resync: bool = False


class AgentChanges:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        #: Insertion-ordered: agents are reported in the order they first changed.
        self._pending: dict[str, None] = {}
        self._resync = False
        self._closed = False
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, agent_id: str) -> None:
        if self._closed or self._resync:
            return
        if agent_id not in self._pending and len(self._pending) >= self._limit:
            self._pending.clear()
            self._resync = True
        else:
            self._pending[agent_id] = None
        self._ready.set()

    def close(self) -> None:
        """End the watch: `next` returns None from now on."""
        self._closed = True
        self._ready.set()

    async def next(self, within: float) -> Batch | None:
        """The changes so far, waiting up to `within` seconds for one (empty if none came);
        None once closed."""
        if not self._ready.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self._ready.wait()
        if self._closed:
            return None
        self._ready.clear()
        batch = Batch(tuple(self._pending), self._resync)
        self._pending.clear()
        self._resync = False
        return batch
