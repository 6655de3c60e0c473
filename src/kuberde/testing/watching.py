"""The API server's change history: what a watch resumes from, as a real API server's watch cache.

Every change to a stored object is an event with its own resourceVersion, strictly increasing.
A watch from resourceVersion N gets exactly the events after N; when those are no longer all
kept (the history is bounded), it gets `410 Gone` and the client lists again, as from a real
API server whose watch cache has moved on.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import kmock

__all__ = ["HISTORY_SIZE", "Change", "Expired", "WatchHistory"]

#: Changes kept for resuming watches (a real API server keeps about five minutes' worth).
HISTORY_SIZE = 10_000


class Expired(Exception):
    """The resourceVersion asked for is older than the history goes back."""

    def __init__(self, asked: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {asked} ({oldest})")


@dataclass(frozen=True)
class Change:
    """One watch event of one resource: `type` and `object`, at `version`."""

    version: int
    resource: kmock.resource
    event: dict[str, Any]

    @property
    def namespace(self) -> str | None:
        namespace = (self.event["object"].get("metadata") or {}).get("namespace")
        return str(namespace) if namespace else None


class WatchHistory:
    """The last `size` changes, in resourceVersion order, and a wake-up for watchers."""

    def __init__(self, size: int = HISTORY_SIZE) -> None:
        self._changes: deque[Change] = deque(maxlen=size)
        self._dropped = False
        self._changed = asyncio.Condition()

    def record(self, resource: kmock.resource, event: dict[str, Any], version: int) -> Change:
        """Keep a change; `version` must be above every version recorded before."""
        if self._changes and version <= self._changes[-1].version:
            raise ValueError(f"resourceVersion {version} is not after {self._changes[-1].version}")
        if len(self._changes) == self._changes.maxlen:
            self._dropped = True
        change = Change(version, resource, event)
        self._changes.append(change)
        return change

    @property
    def latest(self) -> int:
        return self._changes[-1].version if self._changes else 0

    def since(self, version: int) -> list[Change]:
        """Every change after `version`, oldest first (`Expired` if some are no longer kept)."""
        if self._dropped and self._changes and version < self._changes[0].version - 1:
            raise Expired(version, self._changes[0].version - 1)
        newer: Iterator[Change] = itertools.takewhile(
            lambda change: change.version > version, reversed(self._changes)
        )
        return list(newer)[::-1]

    async def notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, version: int, within: float | None) -> bool:
        """Wait until there is a change after `version`; False on timeout."""
        async with self._changed:
            try:
                async with asyncio.timeout(within):
                    await self._changed.wait_for(lambda: self.latest > version)
            except TimeoutError:
                return False
        return True
