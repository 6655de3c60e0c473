"""Lifecycle decisions shared by the Kubernetes operator and the local runtime.

Everything here is pure: no I/O and no clock reads. Callers pass `now` and what they
observed, so both adapters make the same decision from the same facts and every edge case
can be tested without waiting. All datetimes must be timezone-aware; a naive one raises
`ValueError`, because mixing naive and aware times silently shifts deadlines by hours.

TTL rules (DESIGN.md §5):

- `spec.ttl` is a duration such as `300s`, `5m`, `1h30m` or `1d`. `0`, `""`, whitespace or
  absent disables the TTL, and so does any spelling of zero (`0s`, `0h0m`): a zero TTL must
  never mean "expired". A bare non-negative integer (`ttl: 300`) is a number of seconds,
  because that is what Kubernetes users write.
- An agent is idle when it has no open streams and `now - last activity > ttl` (strictly:
  exactly at the deadline it is not idle yet). Last activity is the latest of what the
  gateway reported, the last wake and the resource's creation.
- Never scale down without fresh activity data, while streams are open, or when the TTL is
  disabled.
- Activity timestamps in the future (the gateway's clock is ahead of ours) are clamped to
  `now`: the agent counts as active just now. Scale-down is postponed by at most the skew,
  never forever, because the same timestamp stops being "future" once the clock passes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

__all__ = [
    "MAX_TTL",
    "Activity",
    "ActivitySnapshot",
    "InvalidTTL",
    "Phase",
    "ScaleDecision",
    "compute_phase",
    "decide_scale_down",
    "desired_replicas",
    "extension",
    "extension_ahead",
    "format_duration",
    "format_timestamp",
    "idle_deadline",
    "is_online",
    "last_activity",
    "parse_ttl",
]

MAX_TTL = timedelta(days=365)
_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_MAX_TTL_TEXT = 32
_SECONDS = re.compile(r"[0-9]+")
_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
_SECOND = timedelta(seconds=1)


class Phase(StrEnum):
    """The phase shown as STATUS; the values are the strings stored in `status.phase`."""

    PENDING = "Pending"
    STARTING = "Starting"
    RUNNING = "Running"
    DISCONNECTED = "Disconnected"
    SCALED_DOWN = "ScaledDown"
    ERROR = "Error"


class InvalidTTL(ValueError):
    """A `spec.ttl` we refuse; the message names the value so it can go into `status.message`."""

    def __init__(self, value: object, reason: str) -> None:
        super().__init__(
            f"invalid TTL {value!r}: {reason}; use a duration such as 300s, 5m, 1h30m or 1d, "
            "or 0 to disable"
        )
        self.value = value


class Activity(NamedTuple):
    """A moment of activity and what it was (`stream closed`, `woken`, `created`, ...)."""

    at: datetime
    source: str


@dataclass(frozen=True, slots=True)
class ActivitySnapshot:
    """What the gateway reported for one agent, and when we fetched it (`observed_at`)."""

    online: bool
    open_streams: int
    last_activity: datetime | None
    last_activity_source: str | None
    observed_at: datetime

    def __post_init__(self) -> None:
        _require_aware(self.observed_at, "observed_at")
        if self.last_activity is not None:
            _require_aware(self.last_activity, "last_activity")
        if self.open_streams < 0:
            raise ValueError(f"open_streams must not be negative, got {self.open_streams}")


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """The outcome of one TTL check; `reason` is the human text for logs, Events and `ls`."""

    scale_down: bool
    reason: str
    idle_deadline: datetime | None
    last_activity: datetime | None
    last_activity_source: str | None


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")


def _ttl_from_seconds(value: object, seconds: int) -> timedelta | None:
    if seconds < 0:
        raise InvalidTTL(value, "negative durations are not allowed")
    if seconds > MAX_TTL // _SECOND:
        raise InvalidTTL(value, f"longer than the maximum of {format_duration(MAX_TTL)}")
    return timedelta(seconds=seconds) if seconds else None


def parse_ttl(value: object) -> timedelta | None:
    """Parse `spec.ttl`; None means the TTL is disabled.

    Accepts None, a non-negative int (seconds) or a string: whole numbers with the lower-case
    units d, h, m, s, each at most once and in that order (`1d2h`, `1h30m`, `90m`), or bare
    digits (seconds). Surrounding whitespace is ignored. Raises `InvalidTTL` for anything else,
    including negatives, fractions and durations over `MAX_TTL`.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidTTL(value, "expected a duration string or a whole number of seconds")
    if isinstance(value, int):
        return _ttl_from_seconds(value, value)
    text = value.strip()
    if not text:
        return None
    if len(text) > _MAX_TTL_TEXT:
        raise InvalidTTL(value, f"longer than {_MAX_TTL_TEXT} characters")
    if _SECONDS.fullmatch(text):
        return _ttl_from_seconds(value, int(text))
    match = _DURATION.fullmatch(text)
    if match is None:
        if text.startswith("-"):
            raise InvalidTTL(value, "negative durations are not allowed")
        if "." in text or "," in text:
            raise InvalidTTL(value, "fractions are not allowed (write 90m, not 1.5h)")
        raise InvalidTTL(
            value, "expected whole numbers with units d, h, m, s, each at most once, in that order"
        )
    seconds = sum(
        int(amount) * unit
        for amount, unit in zip(match.groups(), _UNIT_SECONDS.values(), strict=True)
        if amount is not None
    )
    return _ttl_from_seconds(value, seconds)


def format_duration(td: timedelta) -> str:
    """Compact form (`45s`, `5m`, `1h30m`, `2d3h`) that `parse_ttl` reads back.

    Fractions of a second are dropped; zero is `0s`. Negative durations raise `ValueError`.
    """
    if td < timedelta(0):
        raise ValueError(f"cannot format a negative duration: {td}")
    remaining = td // _SECOND
    parts: list[str] = []
    for unit, size in _UNIT_SECONDS.items():
        amount, remaining = divmod(remaining, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC to the second (`2026-01-02T03:04:05Z`), as Kubernetes writes times."""
    _require_aware(value, "timestamp")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def last_activity(*candidates: tuple[datetime | None, str] | None) -> Activity | None:
    """The latest of several `(time, source)` candidates, skipping None and None times.

    On a tie the candidate listed first wins, so callers list the most informative first.
    """
    latest: Activity | None = None
    for candidate in candidates:
        if candidate is None:
            continue
        at, source = candidate
        if at is None:
            continue
        _require_aware(at, f"activity time ({source})")
        if latest is None or at > latest.at:
            latest = Activity(at, source)
    return latest


def idle_deadline(
    ttl: timedelta | None, last_activity: datetime | None, extended_until: datetime | None = None
) -> datetime | None:
    """The moment after which the agent is idle; None when the TTL is disabled or unknown.

    An extension to a chosen time (`kuberde extend NAME 2h`) moves it later, never earlier.
    """
    if ttl is None or last_activity is None:
        return None
    _require_aware(last_activity, "last_activity")
    deadline = last_activity + ttl
    if extended_until is not None:
        _require_aware(extended_until, "extended_until")
        deadline = max(deadline, extended_until)
    return deadline


def extension_ahead(
    extended_until: datetime | None, now: datetime, *, scaled_down: bool
) -> datetime | None:
    """The extension worth showing: still ahead, on a workspace that is up."""
    if extended_until is None or scaled_down or extended_until <= now:
        return None
    return extended_until


def extension(
    *, ttl: timedelta | None, now: datetime, duration: timedelta | None
) -> tuple[datetime, datetime | None]:
    """What `extend` records: activity now (source `extend`), and with a chosen duration a
    time it stays up until. Returns (deadline, extended_until); raises ValueError without TTL.
    """
    _require_aware(now, "now")
    if not ttl:
        raise ValueError("it has no TTL, so it stays up until stopped; nothing to extend")
    if duration is not None and duration <= timedelta(0):
        raise ValueError("the duration must be positive")
    until = now + duration if duration is not None else None
    deadline = idle_deadline(ttl, now, until)
    assert deadline is not None
    return deadline, until


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def decide_scale_down(
    *,
    ttl: timedelta | None,
    replicas: int,
    snapshot: ActivitySnapshot | None,
    woken_at: datetime | None,
    created_at: datetime,
    now: datetime,
    max_staleness: timedelta,
    extended_until: datetime | None = None,
) -> ScaleDecision:
    """Decide whether the TTL sweep scales this agent to zero now.

    Fails safe: without a snapshot, or with one older than `max_staleness`, the answer is no.
    A zero `ttl` is treated like None (disabled). `extended_until` (an explicit extend to a
    chosen time) keeps it up until then whatever the activity.
    """
    _require_aware(now, "now")
    _require_aware(created_at, "created_at")
    if woken_at is not None:
        _require_aware(woken_at, "woken_at")
    if replicas < 0:
        raise ValueError(f"replicas must not be negative, got {replicas}")
    if max_staleness < timedelta(0):
        raise ValueError(f"max_staleness must not be negative, got {max_staleness}")
    if ttl is not None and ttl < timedelta(0):
        raise ValueError(f"ttl must not be negative, got {ttl}")

    reported = (
        (snapshot.last_activity, snapshot.last_activity_source or "gateway") if snapshot else None
    )
    created = Activity(created_at, "created")
    raw = last_activity(reported, (woken_at, "woken"), created) or created
    latest = Activity(min(raw.at, now), raw.source)
    enabled_ttl = ttl if ttl else None
    deadline = idle_deadline(enabled_ttl, latest.at, extended_until)

    def keep(reason: str) -> ScaleDecision:
        return ScaleDecision(False, reason, deadline, latest.at, latest.source)

    if enabled_ttl is None:
        return keep("TTL disabled")
    if replicas == 0:
        return keep("already scaled down (replicas 0)")
    if snapshot is None:
        return keep("no activity data from the gateway; not scaling down")
    age = now - snapshot.observed_at
    if age > max_staleness:
        return keep(
            f"activity data is stale (observed {format_duration(age)} ago); not scaling down"
        )
    if snapshot.open_streams > 0:
        return keep(_plural(snapshot.open_streams, "open stream"))
    if extended_until is not None and now <= extended_until:
        return keep(f"extended until {format_timestamp(extended_until)}")

    idle_for = now - latest.at
    skew = f", reported {format_duration(raw.at - now)} in the future" if raw.at > now else ""
    summary = (
        f"idle for {format_duration(idle_for)} (ttl {format_duration(enabled_ttl)}), "
        f"lastActivity: {format_timestamp(latest.at)} ({latest.source}{skew})"
    )
    if idle_for > enabled_ttl:
        return ScaleDecision(True, summary, deadline, latest.at, latest.source)
    return keep(f"{summary}; TTL not expired, deadline {format_timestamp(latest.at + enabled_ttl)}")


def desired_replicas(
    *,
    scaled_down: bool,
    wake_requested_at: datetime | None,
    scaled_down_at: datetime | None,
) -> int:
    """Replicas a reconcile should ask for: 1 unless the agent is scaled down by TTL.

    A wake request strictly newer than the scale-down wins; an older or equal one does not
    undo it, so a stale wake annotation cannot cause 1→0→1 flapping. When the scale-down time
    is unknown (`scaled_down_at` None) any wake request wins: honouring a user's request is the
    safe side, and the next scale-down records its time. Callers that act on a winning wake
    clear their scaled-down marker and pass the wake time as `woken_at` to
    `decide_scale_down`, which restarts the idle clock.
    """
    if wake_requested_at is not None:
        _require_aware(wake_requested_at, "wake_requested_at")
    if scaled_down_at is not None:
        _require_aware(scaled_down_at, "scaled_down_at")
    if not scaled_down:
        return 1
    if wake_requested_at is None:
        return 0
    if scaled_down_at is None or wake_requested_at > scaled_down_at:
        return 1
    return 0


def compute_phase(
    *,
    error: str | None,
    desired_replicas: int,
    workload_running: bool,
    agent_online: bool,
    agent_seen_since_start: bool,
) -> Phase:
    """The agent's phase; the first matching row wins.

    | condition                                   | phase        |
    |---------------------------------------------|--------------|
    | `error` is a non-empty message              | Error        |
    | `desired_replicas == 0`                     | ScaledDown   |
    | workload not running (not started/scheduled)| Pending      |
    | agent online                                | Running      |
    | agent was online since the workload started | Disconnected |
    | otherwise (never connected yet)             | Starting     |
    """
    if desired_replicas < 0:
        raise ValueError(f"desired_replicas must not be negative, got {desired_replicas}")
    if error:
        return Phase.ERROR
    if desired_replicas == 0:
        return Phase.SCALED_DOWN
    if not workload_running:
        return Phase.PENDING
    if agent_online:
        return Phase.RUNNING
    if agent_seen_since_start:
        return Phase.DISCONNECTED
    return Phase.STARTING


def is_online(phase: Phase) -> bool:
    """The ONLINE column: true only in Running."""
    return phase is Phase.RUNNING
