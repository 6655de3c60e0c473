"""The lifecycle engine's scheduler: who reconciles which workspace, and when.

`reconcile(name)` is the runtime's observe → decide (`kuberde.plan`) → act for one workspace
(the local runtime's processes, or the operator's Deployment). The engine runs it

- serialised per workspace: it holds that workspace's lock, which commands (apply, delete,
  stop, a TTL scale-down) take too, so nothing interleaves on one workspace and `reconcile`
  re-reads the desired state inside the lock;
- concurrently across workspaces: one slow stop holds up nobody else, wakes included; at
  most `concurrency` at once if given (the operator bounds its load on the API server);
- on every kick, never losing one: a kick that arrives while its workspace is being
  reconciled runs one more reconcile right after;
- again after a failure, with capped exponential backoff and jitter (watch events are not
  redelivered); the failure count goes with the next success, so a workspace that is gone
  (whose reconcile finds nothing to do) leaves nothing behind;
- for every workspace each `interval` (the sweep), as a safety net for missed events.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

from kuberde.aio import KeyedLocks, Kick
from kuberde.backoff import full_jitter

__all__ = ["RETRY_BASE", "RETRY_CAP", "Engine", "RetryDelay", "Timings"]

log = logging.getLogger(__name__)

#: The first retry comes within half a second, later ones at most a minute apart.
RETRY_BASE = 0.5
RETRY_CAP = 60.0

#: Seconds to wait before retrying after `failures` (1, 2, ...) consecutive failed reconciles.
RetryDelay = Callable[[int], float]

#: Reconcile durations kept for `timings` (what `kuberde doctor` judges the loop by).
_DURATIONS_KEPT = 100


@dataclass(frozen=True)
class Timings:
    """How the loop is doing: sweeps so far, seconds since the last one began (None before
    the first), and the latest reconcile durations in milliseconds, oldest first."""

    sweeps: int
    last_sweep_age: float | None
    reconcile_ms: tuple[float, ...]


def _jittered(failures: int, *, rng: random.Random) -> float:
    return full_jitter(failures - 1, base=RETRY_BASE, cap=RETRY_CAP, rng=rng)


class Engine:
    def __init__(
        self,
        reconcile: Callable[[str], Awaitable[None]],
        names: Callable[[], Iterable[str]],
        *,
        interval: float,
        concurrency: int | None = None,
        retry_delay: RetryDelay | None = None,
    ) -> None:
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._reconcile = reconcile
        self._names = names
        self._interval = interval
        self._slots: contextlib.AbstractAsyncContextManager[object] = (
            asyncio.Semaphore(concurrency) if concurrency is not None else contextlib.nullcontext()
        )
        self._retry_delay = retry_delay or functools.partial(_jittered, rng=random.Random())
        self._locks = KeyedLocks()
        self._dirty: set[str] = set()
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, int] = {}
        self._retries: dict[str, asyncio.TimerHandle] = {}
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
        """Reconcile `name` soon; if it is being reconciled now, once more afterwards.

        A retry waiting for its backoff is replaced: this reconcile comes sooner."""
        if self._closed:
            return
        self._cancel_retry(name)
        self._dirty.add(name)
        if name not in self._workers:
            self._workers[name] = asyncio.get_running_loop().create_task(
                self._work(name), name=f"reconcile {name}"
            )

    def kick_all(self) -> None:
        """Run a sweep now."""
        self._sweep.set()

    def failures(self, name: str) -> int:
        """Consecutive failed reconciles of `name`: 0 once one succeeded."""
        return self._failures.get(name, 0)

    def remembers(self, name: str) -> bool:
        """Whether anything about `name` is kept: a reconcile, a retry, a failure, a lock."""
        return (
            name in self._workers
            or name in self._dirty
            or name in self._failures
            or name in self._retries
            or name in self._locks
        )

    async def _work(self, name: str) -> None:
        try:
            while name in self._dirty and not self._closed:
                self._dirty.discard(name)
                async with self.exclusive(name), self._slots:
                    started = time.monotonic()
                    try:
                        await self._reconcile(name)
                    except Exception as exc:
                        self._failed(name, exc)
                    else:
                        self._failures.pop(name, None)
                        self._cancel_retry(name)
                    self._durations.append((time.monotonic() - started) * 1000)
        finally:
            del self._workers[name]

    def _failed(self, name: str, error: Exception) -> None:
        failures = self._failures.get(name, 0) + 1
        self._failures[name] = failures
        delay = self._retry_delay(failures)
        # The traceback once: a workspace failing again is usually the same API outage.
        log.warning(
            "reconciling %s failed (%d in a row; retry in %.1fs): %s",
            name,
            failures,
            delay,
            error,
            exc_info=error if failures == 1 else None,
        )
        self._cancel_retry(name)
        if not self._closed:
            self._retries[name] = asyncio.get_running_loop().call_later(delay, self._retry, name)

    def _retry(self, name: str) -> None:
        del self._retries[name]
        self.kick(name)

    def _cancel_retry(self, name: str) -> None:
        timer = self._retries.pop(name, None)
        if timer is not None:
            timer.cancel()

    async def run(self) -> None:
        """Sweep every workspace each interval, or at once after `kick_all`."""
        while not self._closed:
            self._sweeps += 1
            self._last_sweep = time.monotonic()
            for name in self._names():
                self.kick(name)
            await self._sweep.wait(self._interval)

    async def idle(self) -> None:
        """Return once no reconcile is running or due (a retry waiting for its backoff is
        not due yet)."""
        while self._workers:
            await asyncio.gather(*self._workers.values(), return_exceptions=True)

    async def close(self, *, cancel: bool = False) -> None:
        """Stop starting reconciles, drop the retries, and wait for the running ones; with
        `cancel`, cancel them first (an operator that lost its Lease must not act on)."""
        self._closed = True
        for timer in self._retries.values():
            timer.cancel()
        self._retries.clear()
        self._sweep.set()
        if cancel:
            for worker in self._workers.values():
                worker.cancel()
        await self.idle()
        self._failures.clear()
