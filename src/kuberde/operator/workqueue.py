"""A deduplicating work queue: one reconcile per key at a time, retries with backoff.

Watch events only say "look at agent X again"; the reconcile reads the current state itself.
So ten events for one agent while it is being reconciled become one more reconcile, never ten,
and a failed reconcile is retried (Kopf's event handlers are not).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

__all__ = ["WorkQueue"]

log = logging.getLogger(__name__)

Handler = Callable[[str], Awaitable[None]]


class WorkQueue:
    def __init__(
        self,
        handler: Handler,
        *,
        workers: int,
        base_delay: float = 0.5,
        max_delay: float = 60.0,
    ) -> None:
        self._handler = handler
        self._workers = workers
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._dirty: set[str] = set()
        self._failures: dict[str, int] = {}
        self._retries: dict[str, asyncio.TimerHandle] = {}

    def add(self, key: str) -> None:
        """Reconcile `key` soon; a key already waiting or running is not queued twice."""
        retry = self._retries.pop(key, None)
        if retry is not None:
            retry.cancel()
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def _add_later(self, key: str, delay: float) -> None:
        if key in self._retries:
            return
        loop = asyncio.get_running_loop()
        self._retries[key] = loop.call_later(delay, self._retry, key)

    def _retry(self, key: str) -> None:
        self._retries.pop(key, None)
        self.add(key)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._active.add(key)
            try:
                await self._handler(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = min(self._max_delay, self._base_delay * 2 ** (failures - 1))
                log.warning("reconcile of %s failed (retry in %.1fs): %s", key, delay, exc)
                self._add_later(key, delay)
            else:
                self._failures.pop(key, None)
            finally:
                self._active.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)

    async def run(self) -> None:
        """Run the workers until cancelled; pending retries are dropped then."""
        try:
            async with asyncio.TaskGroup() as group:
                for number in range(self._workers):
                    group.create_task(self._work(), name=f"reconcile-worker-{number}")
        finally:
            for handle in self._retries.values():
                handle.cancel()
            self._retries.clear()
