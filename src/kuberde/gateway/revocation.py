"""Open connections that last only while their user stands: tunnels (`/connect`), users'
mux sessions (`/session`) and app WebSockets.

Each is held with a check (why its user may no longer use it, or None) and a way to close
it. All are checked again as soon as something that can end a standing changes — the users
file, whose `stat` `watch` polls, or a browser session ending (sign-out) — and those that
fail are closed with the reason at once, not at their next message: a server-push-only
socket or an idle ssh session ends as promptly as a busy one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

__all__ = ["Check", "Close", "HeldConnections"]

log = logging.getLogger(__name__)

#: Why the connection's user may no longer use it, or None while they may.
Check = Callable[[], str | None]
#: Close the connection, telling its user the reason.
Close = Callable[[str], Coroutine[Any, Any, None]]


class HeldConnections:
    def __init__(self) -> None:
        self._held: dict[int, tuple[Check, Close]] = {}
        self._keys = itertools.count()
        self._closing: set[asyncio.Task[None]] = set()
        self._pending = False

    def __len__(self) -> int:
        return len(self._held)

    @contextlib.contextmanager
    def hold(self, check: Check, close: Close) -> Iterator[None]:
        """Hold a connection for the block: closed by `close` once `check` gives a reason."""
        key = next(self._keys)
        self._held[key] = (check, close)
        try:
            yield
        finally:
            self._held.pop(key, None)

    def changed(self) -> None:
        """A standing may have ended: check every held connection on the loop's next turn
        (once, however often this is called meanwhile)."""
        if not self._pending:
            self._pending = True
            asyncio.get_running_loop().call_soon(self._check_all)

    def _check_all(self) -> None:
        self._pending = False
        for key, (check, close) in list(self._held.items()):
            reason = check()
            if reason is None:
                continue
            del self._held[key]
            log.info("closing a connection: %s", reason)
            task = asyncio.create_task(close(reason))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def watch(self, version: Callable[[], object], interval: float) -> None:
        """Run until cancelled: `changed` whenever `version()` (a file's `stat` signature)
        differs from the last one seen, looked at every `interval` seconds."""
        last = version()
        while True:
            await asyncio.sleep(interval)
            current = version()
            if current != last:
                last = current
                self.changed()
