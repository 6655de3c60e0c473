"""Per-user and per-agent stream limits: concurrent streams, buffered bytes, new streams/s.

Opening streams costs the agent work, so new streams are rate limited with a token bucket
(GCRA), and their number is capped. `StreamQuota.acquire` either returns a `Reservation` to
release when the stream ends or raises `LimitExceeded` with a reason the user can read (HTTP
429 before a WebSocket upgrade, a refused stream or close code 4429 after one).

Buffered bytes are counted live: each reservation is told (`Reservation.hold`) how many bytes
the gateway holds for its streams right now — queued for a reader that is slower than the
writer. When a user's or an agent's total goes over its cap, the reservation holding the
most of it is told so (`on_exceeded`) and its streams are cut: memory stays bounded by the
cap, not by open streams times their windows, and only the one over the cap pays. Any path
that opens streams for a user (the /connect relay, a multiplexed user session, the app
proxy) goes through the same quota.

No I/O; time comes from an injectable monotonic clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

__all__ = ["LimitExceeded", "Reservation", "StreamLimits", "StreamQuota", "StreamQuotaSettings"]

MIB = 1024 * 1024
#: Idle entries (no streams, bucket full again) are swept once the map holds this many.
_SWEEP_AT = 4096

LimitKind = Literal["streams", "buffered", "rate"]


@dataclass(frozen=True, slots=True)
class StreamLimits:
    max_streams: int
    #: What the gateway may hold at once, queued for these streams' slower readers.
    max_buffered_bytes: int
    streams_per_second: float
    #: New streams allowed at once before the rate applies.
    burst: int

    def __post_init__(self) -> None:
        if (
            self.max_streams < 1
            or self.burst < 1
            or self.streams_per_second <= 0
            or self.max_buffered_bytes < 1
        ):
            raise ValueError("stream limits must be positive")


@dataclass(frozen=True, slots=True)
class StreamQuotaSettings:
    """Defaults a real team does not hit by accident: ~128 sessions and tunnels each.

    Every proxied HTTP request is a new stream, so the rate must carry a web IDE loading
    hundreds of assets (code-server, JupyterLab) and a benchmark's keep-alive clients; the
    concurrency and buffer caps are what bound memory, the rate only bounds dial churn. One
    stream stalled by its reader holds at most a window (4 MiB): the buffer cap is reached
    by some 60 (per user) or 120 (per workspace) stalled streams, never by busy ones.
    """

    per_user: StreamLimits = field(
        default_factory=lambda: StreamLimits(
            max_streams=128, max_buffered_bytes=256 * MIB, streams_per_second=500, burst=512
        )
    )
    per_agent: StreamLimits = field(
        default_factory=lambda: StreamLimits(
            max_streams=256, max_buffered_bytes=512 * MIB, streams_per_second=1000, burst=1024
        )
    )


class LimitExceeded(Exception):
    """A stream was refused or cut; `reason` says which limit, `retry_after` when to try
    again, `kind` which limit it was."""

    def __init__(self, reason: str, retry_after: float, kind: LimitKind) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.kind = kind


@dataclass(slots=True)
class _Usage:
    streams: int = 0
    buffered: int = 0
    #: GCRA theoretical arrival time of the next new stream.
    tat: float = 0.0
    holders: set[Reservation] = field(default_factory=set)


class Reservation:
    """One admitted stream's share of its user's and agent's limits; release it once."""

    __slots__ = ("_entries", "_keys", "_on_exceeded", "_quota", "exceeded", "held")

    def __init__(
        self,
        quota: StreamQuota,
        keys: tuple[str, str],
        entries: tuple[_Usage, _Usage],
        on_exceeded: Callable[[LimitExceeded], None],
    ) -> None:
        self._quota: StreamQuota | None = quota
        self._keys = keys
        #: The user's and the agent's usage, kept while this holds a stream of each.
        self._entries = entries
        self._on_exceeded = on_exceeded
        #: Bytes the gateway holds for this stream now.
        self.held = 0
        #: Set once this stream was picked to pay for a buffer cap.
        self.exceeded: LimitExceeded | None = None

    def hold(self, delta: int) -> None:
        """The bytes held for this stream changed by `delta` (a stream's buffer watcher)."""
        if self._quota is not None and delta:
            self._quota._hold(self, delta)

    def release(self) -> None:
        if self._quota is not None:
            self._quota._release(self)
            self._quota = None

    def _exceed(self, error: LimitExceeded) -> None:
        self.exceeded = error
        self._on_exceeded(error)

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
        """(open streams, held bytes) of `user:NAME` or `agent:ID`."""
        entry = self._usage.get(key)
        return (entry.streams, entry.buffered) if entry is not None else (0, 0)

    def acquire(
        self,
        user: str,
        agent: str,
        on_exceeded: Callable[[LimitExceeded], None],
    ) -> Reservation:
        """Admit one stream of `user` to `agent`; `on_exceeded` is called (from inside
        `Reservation.hold`, so it must only schedule work) if it is to be cut."""
        now = self._clock()
        if len(self._usage) >= _SWEEP_AT:
            self._sweep(now)
        checks = (
            (f"user:{user}", self.settings.per_user),
            (f"agent:{agent}", self.settings.per_agent),
        )
        for key, limits in checks:
            self._check(self._usage.get(key) or _Usage(), limits, _scope(key), now)
        entries = (
            self._usage.setdefault(checks[0][0], _Usage()),
            self._usage.setdefault(checks[1][0], _Usage()),
        )
        reservation = Reservation(self, (checks[0][0], checks[1][0]), entries, on_exceeded)
        for entry, (_, limits) in zip(entries, checks, strict=True):
            entry.streams += 1
            entry.holders.add(reservation)
            entry.tat = max(entry.tat, now) + 1.0 / limits.streams_per_second
        return reservation

    @staticmethod
    def _check(entry: _Usage, limits: StreamLimits, scope: str, now: float) -> None:
        if entry.streams >= limits.max_streams:
            raise LimitExceeded(
                f"stream limit: {limits.max_streams} concurrent streams per {scope}; "
                "close some first",
                1.0,
                "streams",
            )
        if entry.buffered >= limits.max_buffered_bytes:
            raise LimitExceeded(_buffer_reason(limits, scope), 1.0, "buffered")
        interval = 1.0 / limits.streams_per_second
        tolerance = (limits.burst - 1) * interval
        early = max(entry.tat, now) - now - tolerance
        if early > 0:
            retry = math.ceil(early * 10) / 10
            raise LimitExceeded(
                f"stream limit: {limits.streams_per_second:g} new streams per second per "
                f"{scope}; retry in {retry:.1f}s",
                early,
                "rate",
            )

    def _hold(self, reservation: Reservation, delta: int) -> None:
        """On every buffer change of every stream: kept to a few additions."""
        reservation.held += delta
        user, agent = reservation._entries
        user.buffered += delta
        agent.buffered += delta
        if delta > 0:
            per_user, per_agent = self.settings.per_user, self.settings.per_agent
            if user.buffered > per_user.max_buffered_bytes:
                self._cut_largest(user, per_user, "user")
            if agent.buffered > per_agent.max_buffered_bytes:
                self._cut_largest(agent, per_agent, "workspace")

    @staticmethod
    def _cut_largest(entry: _Usage, limits: StreamLimits, scope: str) -> None:
        """The one holding the most pays — a stalled reader, not a busy stream beside it —
        unless streams already told to go account for the excess."""
        staying = [r for r in entry.holders if r.exceeded is None]
        if sum(r.held for r in staying) > limits.max_buffered_bytes:
            victim = max(staying, key=lambda r: r.held)
            victim._exceed(LimitExceeded(_buffer_reason(limits, scope), 1.0, "buffered"))

    def _release(self, reservation: Reservation) -> None:
        now = self._clock()
        for key in reservation._keys:
            entry = self._usage[key]
            entry.streams -= 1
            entry.buffered -= reservation.held
            entry.holders.discard(reservation)
            if entry.streams == 0 and entry.tat <= now:
                del self._usage[key]

    def _sweep(self, now: float) -> None:
        self._usage = {
            key: entry for key, entry in self._usage.items() if entry.streams or entry.tat > now
        }


def _scope(key: str) -> str:
    return "user" if key.startswith("user:") else "workspace"


def _buffer_reason(limits: StreamLimits, scope: str) -> str:
    mib = math.ceil(limits.max_buffered_bytes / MIB)
    return (
        f"buffer limit: {mib} MiB held for slow readers per {scope}; "
        "read or close other connections first"
    )
