"""The lifecycle engine's scheduler: who reconciles which workspace, and when.

`reconcile(name)` is the runtime's observe → decide (`kuberde.plan`) → act for one workspace.
The engine runs it

- serialised per workspace: it holds that workspace's lock, which commands (apply, delete,
  stop) take too, so nothing interleaves on one workspace and `reconcile` re-reads the desired
  state inside the lock;
- concurrently across workspaces: one slow stop holds up nobody else, wakes included;
- on every kick, never losing one: a kick that arrives while its workspace is being
  reconciled runs one more reconcile right after;
- for every workspace each `interval` (the sweep), as a safety net for missed events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

from kuberde.aio import KeyedLocks, Kick

__all__ = ["Engine", "Timings"]

log = logging.getLogger(__name__)

#: Reconcile durations kept for `timings` (what `kuberde doctor` judges the loop by).
_DURATIONS_KEPT = 100


@dataclass(frozen=True)
class Timings:
    """How the loop is doing: sweeps so far, seconds since the last one began (None before
    the first), and the latest reconcile durations in milliseconds, oldest first."""

    sweeps: int
    last_sweep_age: float | None
    reconcile_ms: tuple[float, ...]


class Engine:
    def __init__(
        self,
        reconcile: Callable[[str], Awaitable[None]],
        names: Callable[[], Iterable[str]],
        *,
        interval: float,
    ) -> None:
        self._reconcile = reconcile
        self._names = names
        self._interval = interval
        self._locks = KeyedLocks()
        self._dirty: set[str] = set()
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._sweep = Kick()
        self._closed = False
        self._sweeps = 0
        self._last_sweep: float | None = None
        self._durations: deque[float] = deque(maxlen=_DURATIONS_KEPT)

    def timings(self) -> Timings:
        age = None if self._last_sweep is None else time.monotonic() - self._last_sweep
        return Timings(self._sweeps, age, tuple(self._durations))

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """Hold `name`'s lock: no reconcile or other command runs on it meanwhile."""
        async with self._locks.hold(name):
            yield

    def kick(self, name: str) -> None:
        """Reconcile `name` soon; if it is being reconciled now, once more afterwards."""
        if self._closed:
            return
        self._dirty.add(name)
        if name not in self._workers:
            self._workers[name] = asyncio.get_running_loop().create_task(
                self._work(name), name=f"reconcile {name}"
            )

    def kick_all(self) -> None:
        """Run a sweep now."""
        self._sweep.set()

    async def _work(self, name: str) -> None:
        try:
            while name in self._dirty and not self._closed:
                self._dirty.discard(name)
                async with self.exclusive(name):
                    started = time.monotonic()
                    try:
                        await self._reconcile(name)
                    except Exception:
                        log.exception("reconciling %s failed", name)
                    self._durations.append((time.monotonic() - started) * 1000)
        finally:
            del self._workers[name]

    async def run(self) -> None:
        """Sweep every workspace each interval, or at once after `kick_all`."""
        while not self._closed:
            self._sweeps += 1
            self._last_sweep = time.monotonic()
            for name in self._names():
                self.kick(name)
            await self._sweep.wait(self._interval)

    async def idle(self) -> None:
        """Return once no reconcile is running or pending."""
        while self._workers:
            await asyncio.gather(*self._workers.values(), return_exceptions=True)

    async def close(self) -> None:
        """Stop starting reconciles and wait for the running ones to finish."""
        self._closed = True
        self._sweep.set()
        await self.idle()
