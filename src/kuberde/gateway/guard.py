"""The I/O side of the stream quota: one user connection's reservation and its streams.

`kuberde.gateway.limits` decides; this joins a decision to the mux streams it is about. The
bytes the streams hold are reported to the reservation as they change, and a stream picked
to pay for a buffer cap is reset with the reason — on the next turn of the event loop, never
from inside the mux callback that reported the bytes. Whoever serves the connection reads
`exceeded` to tell the user why it ended (close code 4429, or the refused stream's reason).
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from kuberde.gateway.limits import LimitExceeded, StreamQuota
from kuberde.mux import Stream

__all__ = ["StreamGuard"]


class StreamGuard:
    """Admit one connection of `user` to `agent` (raises `LimitExceeded`), then `attach`
    each stream it uses; release it (or leave the `with` block) when the connection ends."""

    def __init__(self, quota: StreamQuota, user: str, agent: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._streams: list[Stream] = []
        self._cut_done = asyncio.Event()
        self.reservation = quota.acquire(user, agent, self._exceeded)

    @property
    def exceeded(self) -> LimitExceeded | None:
        """The limit this connection was cut for, if it was."""
        return self.reservation.exceeded

    def attach(self, stream: Stream) -> None:
        self._streams.append(stream)
        stream.watch_held(self.reservation.hold)
        if self.reservation.exceeded is not None:
            self._cut()

    async def wait_cut(self) -> None:
        """Return once this connection's streams were cut for a buffer cap."""
        await self._cut_done.wait()

    def release(self) -> None:
        self.reservation.release()

    def _exceeded(self, error: LimitExceeded) -> None:
        self._loop.call_soon(self._cut)

    def _cut(self) -> None:
        assert self.reservation.exceeded is not None
        for stream in self._streams:
            stream.reset(self.reservation.exceeded.reason)
        self._cut_done.set()

    def __enter__(self) -> StreamGuard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
