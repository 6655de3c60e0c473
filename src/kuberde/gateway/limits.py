"""Per-user and per-agent stream limits: concurrent streams, buffered bytes, new streams/s.

The gateway holds memory for every stream (its receive window and send buffer), so one user,
or the users of one agent, may hold only so much of it; and opening streams costs the agent
work, so new streams are rate limited with a token bucket (GCRA). Limits are checked before
anything is set up; `StreamQuota.acquire` either returns a `Reservation` to release when the
stream ends or raises `LimitExceeded` with a reason the user can read (HTTP 429 before a
WebSocket upgrade, close code 4429 after one). Any path that opens streams for a user (the
/connect relay, a multiplexed user session, the app proxy) goes through the same quota.

No I/O; time comes from an injectable monotonic clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

__all__ = ["LimitExceeded", "Reservation", "StreamLimits", "StreamQuota", "StreamQuotaSettings"]

MIB = 1024 * 1024
#: Idle entries (no streams, bucket full again) are swept once the map holds this many.
_SWEEP_AT = 4096


@dataclass(frozen=True, slots=True)
class StreamLimits:
    max_streams: int
    #: What the gateway may buffer for these streams; each reserves its window and buffer.
    max_buffered_bytes: int
    streams_per_second: float
    #: New streams allowed at once before the rate applies.
    burst: int

    def __post_init__(self) -> None:
        if self.max_streams < 1 or self.burst < 1 or self.streams_per_second <= 0:
            raise ValueError("stream limits must be positive")


@dataclass(frozen=True, slots=True)
class StreamQuotaSettings:
    """Defaults a real team does not hit by accident: ~128 sessions and tunnels each.

    Every proxied HTTP request is a new stream, so the rate must carry a web IDE loading
    hundreds of assets (code-server, JupyterLab) and a benchmark's keep-alive clients; the
    concurrency and buffer caps are what bound memory, the rate only bounds dial churn.
    """

    per_user: StreamLimits = field(
        default_factory=lambda: StreamLimits(
            max_streams=128, max_buffered_bytes=512 * MIB, streams_per_second=500, burst=512
        )
    )
    per_agent: StreamLimits = field(
        default_factory=lambda: StreamLimits(
            max_streams=256, max_buffered_bytes=1024 * MIB, streams_per_second=1000, burst=1024
        )
    )


class LimitExceeded(Exception):
    """A stream was refused; `reason` says which limit, `retry_after` when to try again."""

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(slots=True)
class _Usage:
    streams: int = 0
    buffered: int = 0
    #: GCRA theoretical arrival time of the next new stream.
    tat: float = 0.0


class Reservation:
    """One admitted stream's share of its user's and agent's limits; release it once."""

    __slots__ = ("_keys", "_quota", "_size")

    def __init__(self, quota: StreamQuota, keys: tuple[str, str], size: int) -> None:
        self._quota: StreamQuota | None = quota
        self._keys = keys
        self._size = size

    def release(self) -> None:
        if self._quota is not None:
            self._quota._release(self._keys, self._size)
            self._quota = None

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class StreamQuota:
    def __init__(
        self,
        settings: StreamQuotaSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or StreamQuotaSettings()
        self._clock = clock
        self._usage: dict[str, _Usage] = {}

    def usage(self, key: str) -> tuple[int, int]:
        """(open streams, reserved bytes) of `user:NAME` or `agent:ID`."""
        entry = self._usage.get(key)
        return (entry.streams, entry.buffered) if entry is not None else (0, 0)

    def acquire(self, user: str, agent: str, size: int) -> Reservation:
        """Admit one stream of `user` to `agent` holding up to `size` buffered bytes."""
        now = self._clock()
        if len(self._usage) >= _SWEEP_AT:
            self._sweep(now)
        checks = (
            (f"user:{user}", self.settings.per_user, f"user {user}"),
            (f"agent:{agent}", self.settings.per_agent, f"workspace {agent}"),
        )
        for key, limits, who in checks:
            self._check(self._usage.get(key) or _Usage(), limits, who, size, now)
        for key, limits, _ in checks:
            entry = self._usage.setdefault(key, _Usage())
            entry.streams += 1
            entry.buffered += size
            entry.tat = max(entry.tat, now) + 1.0 / limits.streams_per_second
        return Reservation(self, (checks[0][0], checks[1][0]), size)

    @staticmethod
    def _check(entry: _Usage, limits: StreamLimits, who: str, size: int, now: float) -> None:
        if entry.streams >= limits.max_streams:
            raise LimitExceeded(
                f"{who} has {entry.streams} open connections, the limit; close some first", 1.0
            )
        if entry.buffered + size > limits.max_buffered_bytes:
            limit = math.ceil(limits.max_buffered_bytes / MIB)
            raise LimitExceeded(
                f"{who} would exceed {limit} MiB of buffered connection data; close some first",
                1.0,
            )
        interval = 1.0 / limits.streams_per_second
        tolerance = (limits.burst - 1) * interval
        early = max(entry.tat, now) - now - tolerance
        if early > 0:
            retry = math.ceil(early * 10) / 10
            raise LimitExceeded(
                f"{who} is opening connections faster than "
                f"{limits.streams_per_second:g} per second; retry in {retry:.1f}s",
                early,
            )

    def _release(self, keys: tuple[str, str], size: int) -> None:
        now = self._clock()
        for key in keys:
            entry = self._usage[key]
            entry.streams -= 1
            entry.buffered -= size
            if entry.streams == 0 and entry.tat <= now:
                del self._usage[key]

    def _sweep(self, now: float) -> None:
        self._usage = {
            key: entry for key, entry in self._usage.items() if entry.streams or entry.tat > now
        }
