"""Keep-alive connections to workspace apps, parked between requests.

A browser loading a web IDE makes hundreds of requests. Opening a stream for each costs a
stream open, a TCP connect in the workspace and the app's accept, and spends the user's
new-streams budget (`kuberde.gateway.limits`). So an exchange whose request and response both
ended cleanly, on a connection the app keeps open, is parked here with its stream reservation,
and the next request of the same user to the same app over the same agent session takes it.

A parked connection is closed after `IDLE_TIMEOUT`, shorter than the keep-alive timeouts of
common app servers (Node's and uvicorn's are 5 s), so an app rarely closes one under us; when
it does, its FIN usually arrives first and the connection is skipped. The proxy sends a
request without a body once more on a fresh stream if a parked connection ended before any
byte of the response came back.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from kuberde.gateway.guard import StreamGuard
from kuberde.gateway.streamhttp import StreamHttp
from kuberde.mux import Session

__all__ = ["IDLE_TIMEOUT", "MAX_IDLE_PER_APP", "Upstream", "UpstreamKey", "UpstreamPool"]

IDLE_TIMEOUT = 4.0
#: About what one browser keeps open to one host (6), plus room for a second tab.
MAX_IDLE_PER_APP = 8


@dataclass(frozen=True)
class UpstreamKey:
    """Whose connection it is: parked connections are never shared between users."""

    session: Session
    port: int
    user: str


@dataclass(eq=False)
class Upstream:
    """One HTTP connection to an app: its exchange (over a stream) and the stream's quota."""

    exchange: StreamHttp
    guard: StreamGuard
    #: Whether it was parked before: such a connection may turn out to be closed by the app.
    reused: bool = False
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)

    def unpark(self) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None

    def close(self, reason: str) -> None:
        self.unpark()
        self.exchange.stream.reset(reason)
        self.guard.release()


class UpstreamPool:
    def __init__(
        self, *, idle_timeout: float = IDLE_TIMEOUT, per_app: int = MAX_IDLE_PER_APP
    ) -> None:
        self._idle_timeout = idle_timeout
        self._per_app = per_app
        self._idle: dict[UpstreamKey, list[Upstream]] = {}

    def take(self, key: UpstreamKey) -> Upstream | None:
        """The most recently parked connection still open, if any (the others stay parked)."""
        idle = self._idle.get(key, [])
        while idle:
            upstream = idle.pop()
            upstream.unpark()
            if upstream.exchange.stream.is_quiet:
                upstream.reused = True
                break
            upstream.close("closed while parked")
        else:
            upstream = None
        if not idle:
            self._idle.pop(key, None)
        return upstream

    def give_back(self, key: UpstreamKey, upstream: Upstream) -> None:
        """Park `upstream` for the next request, or close it if it cannot serve one."""
        idle = self._idle.setdefault(key, [])
        if not upstream.exchange.reusable or len(idle) >= self._per_app:
            if not idle:
                del self._idle[key]
            upstream.close("request done")
            return
        upstream.exchange.next_cycle()
        loop = asyncio.get_running_loop()
        upstream.expiry = loop.call_later(self._idle_timeout, self._expire, key, upstream)
        idle.append(upstream)

    def _expire(self, key: UpstreamKey, upstream: Upstream) -> None:
        idle = self._idle.get(key, [])
        if upstream in idle:
            idle.remove(upstream)
            if not idle:
                del self._idle[key]
        upstream.close("idle")

    def close_all(self) -> None:
        for idle in self._idle.values():
            for upstream in idle:
                upstream.close("gateway stopping")
        self._idle.clear()
