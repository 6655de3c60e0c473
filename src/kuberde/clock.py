"""The wall clock, as one injectable function.

Everything that stamps or compares times takes a `Clock` argument defaulting to `utc_now`, so
tests advance a `ManualClock` instead of sleeping, and every stamp is timezone-aware UTC.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

__all__ = ["Clock", "ManualClock", "parse_timestamp", "utc_now"]

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to: `clock()` reads it, `advance()` moves it."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start if start is not None else utc_now()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> datetime:
        self.now += by
        return self.now


def parse_timestamp(value: object) -> datetime | None:
    """A Kubernetes RFC 3339 timestamp ("...Z"), or None for anything else: never raises."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
