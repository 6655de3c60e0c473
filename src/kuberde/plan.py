"""The decide step of the lifecycle engine: one workspace's observation in, one plan out.

Both runtimes run the same engine: observe (what is desired, what runs, what the gateway
reports, and when that was looked at) → decide (here: pure, no I/O, no clock) → act (an
actuator per runtime: local processes or a Deployment's replicas). The rules themselves (TTL,
wake, phase) are `kuberde.policy`'s; this module composes them into one answer per workspace,
so "start, stop, restart, scale down or Error, and why" is decided in exactly one place.

A workspace that no longer exists (`desired` None) is only ever stopped: whatever a slow
sweep observed before a delete, deciding on the re-read observation cannot start it again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from kuberde import policy
from kuberde.naming import EXTEND_ANNOTATION, STOP_ANNOTATION

__all__ = [
    "AWAITING_AGENT",
    "SCALED_DOWN_MESSAGE",
    "Action",
    "Desired",
    "Observation",
    "Plan",
    "Requests",
    "Running",
    "StopOutcome",
    "agent_seen_since",
    "decide",
    "hold_for_agent",
    "honour_stop",
    "read_requests",
    "request_time_text",
    "verdict",
]

SCALED_DOWN_MESSAGE = "scaled down; connecting wakes it"
#: The TTL verdict's reason while the agent has not connected since its workload started.
AWAITING_AGENT = "its agent has not connected since it started"


class Action(StrEnum):
    NONE = "none"
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    SCALE_DOWN = "scale down"


@dataclass(frozen=True, slots=True)
class Desired:
    """What the workspace's record asks for, with its lifecycle markers."""

    ttl: timedelta | None
    created_at: datetime
    scaled_down: bool
    scaled_down_at: datetime | None
    wake_requested_at: datetime | None
    woken_at: datetime | None
    #: The last activity recorded with the workspace (survives restarts of the gateway).
    recorded_activity: policy.Activity | None
    #: An explicit extend keeps it up until then, whatever the TTL says.
    extended_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Running:
    """What runs for the workspace now."""

    #: False when it runs an older spec than the desired one.
    current: bool
    workload_running: bool
    #: The agent has been online at least once since these processes started.
    agent_seen: bool
    failure: str | None


@dataclass(frozen=True, slots=True)
class Observation:
    """One workspace as observed at `now`; `desired` None means it was deleted."""

    desired: Desired | None
    running: Running | None
    activity: policy.ActivitySnapshot | None
    now: datetime


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do and why, and what the workspace's record says once it is done."""

    action: Action
    reason: str
    replicas: int
    #: None for a deleted workspace: there is no record to write.
    phase: policy.Phase | None
    message: str
    #: Clear the scaled-down marker and restart the idle clock (a wake won).
    woken: bool = False
    #: Set the scaled-down marker (the TTL expired).
    scaled_down: bool = False
    last_activity: policy.Activity | None = None


def _replicas(desired: Desired) -> int:
    return policy.desired_replicas(
        scaled_down=desired.scaled_down,
        wake_requested_at=desired.wake_requested_at,
        scaled_down_at=desired.scaled_down_at,
    )


def _snapshot(
    reported: policy.ActivitySnapshot | None, desired: Desired
) -> policy.ActivitySnapshot | None:
    """The gateway's report merged with the recorded activity (the later of the two counts)."""
    if reported is None:
        return None
    latest = policy.last_activity(
        (reported.last_activity, reported.last_activity_source or "gateway"),
        desired.recorded_activity,
    )
    return policy.ActivitySnapshot(
        online=reported.online,
        open_streams=reported.open_streams,
        last_activity=latest.at if latest else None,
        last_activity_source=latest.source if latest else None,
        observed_at=reported.observed_at,
    )


def _phase(
    *, failure: str | None, replicas: int, running: Running | None, online: bool
) -> tuple[policy.Phase, str]:
    phase = policy.compute_phase(
        error=failure,
        desired_replicas=replicas,
        workload_running=running is not None and running.workload_running,
        agent_online=online,
        agent_seen_since_start=running is not None and (running.agent_seen or online),
    )
    if phase is policy.Phase.SCALED_DOWN:
        return phase, SCALED_DOWN_MESSAGE
    return phase, failure or ""


def verdict(
    desired: Desired,
    activity: policy.ActivitySnapshot | None,
    *,
    now: datetime,
    max_staleness: timedelta,
) -> tuple[int, policy.ScaleDecision]:
    """The replicas a workspace should have and the TTL check: the wake and TTL decision both
    runtimes make (the operator calls it directly, `decide` through it)."""
    replicas = _replicas(desired)
    return replicas, policy.decide_scale_down(
        ttl=desired.ttl,
        replicas=replicas,
        snapshot=_snapshot(activity, desired),
        woken_at=desired.woken_at,
        created_at=desired.created_at,
        now=now,
        max_staleness=max_staleness,
        extended_until=desired.extended_until,
    )


def hold_for_agent(decision: policy.ScaleDecision, *, agent_seen: bool) -> policy.ScaleDecision:
    """No TTL scale-down before the agent's first connection since its workload started.

    A connection is not activity, so a workspace whose start takes longer than its TTL would
    otherwise be scaled down around its first connection: a slow start is not idleness. A
    verdict to scale down is held (no deadline: none is due until the agent has been seen);
    any other verdict, and its reason (no data, an open stream, not expired), stands. Both
    runtimes apply this to their `verdict`.
    """
    if agent_seen or not decision.scale_down:
        return decision
    return dataclasses.replace(
        decision, scale_down=False, reason=AWAITING_AGENT, idle_deadline=None
    )


def agent_seen_since(
    started_at: datetime, *, online: bool, seen_online_at: datetime | None
) -> bool:
    """Whether the agent has been online since `started_at` (its workload's latest start, as
    far as the observer knows it): online now, or last seen online no earlier than then."""
    return online or (seen_online_at is not None and seen_online_at >= started_at)


def decide(observation: Observation, *, max_staleness: timedelta) -> Plan:
    """The plan for one workspace; the phase is the one it has once the action is done."""
    desired, running, now = observation.desired, observation.running, observation.now
    if desired is None:
        if running is None:
            return Plan(Action.NONE, "deleted", 0, None, "")
        return Plan(Action.STOP, "deleted", 0, None, "")

    replicas = _replicas(desired)
    woken = desired.scaled_down and replicas == 1
    online = observation.activity is not None and observation.activity.online
    if replicas == 0:
        phase, message = _phase(failure=None, replicas=0, running=None, online=False)
        if running is not None:
            return Plan(Action.STOP, "scaled down", 0, phase, message)
        return Plan(Action.NONE, "scaled down", 0, phase, message)
    if running is None:
        phase, message = _phase(failure=None, replicas=1, running=None, online=online)
        reason = "woken by a wake request" if woken else "not running"
        return Plan(Action.START, reason, 1, phase, message, woken=woken)
    if not running.current:
        phase, message = _phase(failure=None, replicas=1, running=None, online=online)
        return Plan(Action.RESTART, "spec changed", 1, phase, message, woken=woken)

    # A wake that wins now restarts the idle clock now.
    clock = dataclasses.replace(desired, woken_at=now, scaled_down=False) if woken else desired
    _, checked = verdict(clock, observation.activity, now=now, max_staleness=max_staleness)
    ttl = hold_for_agent(checked, agent_seen=running.agent_seen or online)
    activity = (
        policy.Activity(ttl.last_activity, ttl.last_activity_source or "recorded")
        if ttl.last_activity is not None
        else None
    )
    if ttl.scale_down:
        phase, message = _phase(failure=None, replicas=0, running=None, online=False)
        return Plan(
            Action.SCALE_DOWN,
            ttl.reason,
            0,
            phase,
            message,
            scaled_down=True,
            last_activity=activity,
        )
    phase, message = _phase(failure=running.failure, replicas=1, running=running, online=online)
    return Plan(Action.NONE, ttl.reason, 1, phase, message, woken=woken, last_activity=activity)


# ---- users' requests carried on the record (Kubernetes: annotations the gateway writes) -----

#: How much of a bad annotation value (its repr) a status message quotes.
_QUOTED = 64


@dataclass(frozen=True, slots=True)
class Requests:
    """What users asked of a workspace through its record's annotations: `kuberde stop` and
    `kuberde extend` (and the dashboard) on Kubernetes, where the gateway may not scale."""

    stop_requested_at: datetime | None = None
    extended_until: datetime | None = None
    #: Annotations whose value is no timestamp, each saying so: ignored and left in place.
    problems: tuple[str, ...] = ()


def _timestamp(value: str) -> datetime | None:
    """RFC 3339 as Kubernetes and the gateway write it; without an offset it means UTC."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def read_requests(annotations: Mapping[str, str]) -> Requests:
    """The stop and extend requests among `annotations`; a bad value is a problem, not an
    error: the workspace keeps running as it was, and nothing is removed."""
    found: dict[str, datetime | None] = {}
    problems = []
    for key in (STOP_ANNOTATION, EXTEND_ANNOTATION):
        raw = annotations.get(key)
        if raw is None:
            continue
        found[key] = _timestamp(raw) if isinstance(raw, str) else None
        if found[key] is None:
            quoted = repr(raw)
            shown = quoted[:_QUOTED] + "…" if len(quoted) > _QUOTED else quoted
            problems.append(f"annotation {key}={shown} is not an RFC 3339 time; ignored")
    return Requests(found.get(STOP_ANNOTATION), found.get(EXTEND_ANNOTATION), tuple(problems))


@dataclass(frozen=True, slots=True)
class StopOutcome:
    """What honouring a stop request writes on the record; the request is removed either way."""

    #: Set: the stop is the latest word; record the scale-down at this time (replicas 0) and
    #: drop any extension. None: a later wake overtook it; only the request goes.
    scaled_down_at: datetime | None
    reason: str


def request_time_text(at: datetime) -> str:
    """How a request, or a scale-down (by stop or TTL), is written: RFC 3339 to the microsecond,
    as the gateway writes requests, so requests within one second keep their order (a
    stop written to the second would lose to the wake just before it)."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def honour_stop(
    requests: Requests,
    *,
    scaled_down: bool,
    scaled_down_at: datetime | None,
    wake_requested_at: datetime | None,
) -> StopOutcome | None:
    """The outcome of a pending stop request, or None when there is none.

    The scale-down is recorded at the request's own time (never earlier than one already
    recorded), so a wake asked for after the stop still wins (`policy.desired_replicas`),
    and one asked for before it does not. A wake at the very same time wins: a user waiting
    on a connection is the safe side.
    """
    stop = requests.stop_requested_at
    if stop is None:
        return None
    if wake_requested_at is not None and wake_requested_at >= stop:
        return StopOutcome(
            None,
            f"stop requested at {policy.format_timestamp(stop)} was overtaken by a wake "
            f"requested at {policy.format_timestamp(wake_requested_at)}",
        )
    at = max(stop, scaled_down_at) if scaled_down and scaled_down_at is not None else stop
    return StopOutcome(at, f"stop requested at {policy.format_timestamp(stop)}")
