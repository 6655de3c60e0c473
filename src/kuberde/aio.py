"""Running our entry points: uvloop where available (lower latency, less memory per TLS
connection), a clean exit on SIGTERM/SIGINT, the kick that wakes a periodic loop early, and
a gauge of how late the loop runs its callbacks."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["KeyedLocks", "Kick", "LoopLag", "run", "wait_for_signal"]

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def wait_for_signal(*signals: signal.Signals) -> signal.Signals:
    """Return the first of `signals` delivered to the process. By default SIGTERM, SIGINT and
    SIGHUP: a command stopped by closing its terminal shuts down as cleanly as on Ctrl-C
    (left to SIGHUP's default, `kuberde up` died and its workspaces ran on)."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()
    wanted = signals or (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def deliver(sig: signal.Signals) -> None:
        if not received.done():
            received.set_result(sig)

    for sig in wanted:
        loop.add_signal_handler(sig, deliver, sig)
    try:
        return await received
    finally:
        for sig in wanted:
            loop.remove_signal_handler(sig)


class KeyedLocks:
    """One lock per key, kept only while someone holds or waits for it.

    A dict of `asyncio.Lock` per key grows with every key ever used (every agent ever
    reconciled); here a key's lock is dropped when its last holder leaves, and the next
    caller makes a new one, which is safe because nobody holds or awaits the old one.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    def __contains__(self, key: object) -> bool:
        """Whether someone holds or waits for `key`'s lock."""
        return key in self._locks

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class Kick:
    """Wakes a periodic loop before its interval is over; a kick is never lost.

    The loop does its work, then `await kick.wait(interval)`. A kick that arrives while the
    work runs is kept, so the next `wait` returns at once; the flag is cleared only when
    `wait` returns, just before the next round of work starts.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        """Kick: the loop's current or next `wait` returns now."""
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self, interval: float, *, settle: float = 0.0) -> bool:
        """Return after a kick or `interval` seconds; True if kicked.

        `settle` waits that long after a kick, so a burst of kicks costs one round of work.
        """
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # coincides with its timeout, and the loop would outlive its owner.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(interval, 0.0)):
                await self._event.wait()
        kicked = self._event.is_set()
        if kicked and settle > 0:
            await asyncio.sleep(settle)
        self._event.clear()
        return kicked


class LoopLag:
    """How late the running loop fires a timer: what every ready callback waits on a
    saturated loop (a relay turn, a new stream's first bytes). One timer per `interval`
    is cheap enough to run always; each late-by (seconds, >= 0) goes to `report`."""

    def __init__(self, report: Callable[[float], None], interval: float = 0.5) -> None:
        self._report = report
        self._interval = interval
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        self._schedule(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = loop.time() + self._interval
        self._handle = loop.call_at(self._due, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._report(max(0.0, loop.time() - self._due))
        self._schedule(loop)
