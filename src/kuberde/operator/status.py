"""The RDEAgent status as `kubectl get rdeagent -o wide` shows it, built from observations.

Pure: no I/O and no clock reads (`now` only stamps condition transitions). Every field is a
function of state that does not move while nothing happens, so a steady state produces the
same status every cycle and the updater writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kuberde.operator.annotations import parse_time
from kuberde.plan import AWAITING_AGENT
from kuberde.policy import (
    ActivitySnapshot,
    Phase,
    ScaleDecision,
    compute_phase,
    format_duration,
    format_timestamp,
    is_online,
)

__all__ = ["CONNECTED_BEFORE", "PodView", "StatusFacts", "build_status", "pick_pod", "status_patch"]

#: Phases that mean the agent was online since its pod started.
CONNECTED_BEFORE = frozenset({Phase.RUNNING.value, Phase.DISCONNECTED.value})
_NO_FRESH_DATA = "no fresh activity data from the gateway"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Why a workspace past its TTL still runs: its agent has not connected since the pod started.
_HELD = "the TTL does not scale it down before its agent has connected"
_MESSAGES = {
    Phase.PENDING: "waiting for the workspace pod to run",
    Phase.STARTING: "waiting for the agent to connect to the gateway",
    Phase.DISCONNECTED: "the agent lost its connection to the gateway",
}


@dataclass(frozen=True, slots=True)
class PodView:
    name: str
    running: bool
    started_at: datetime | None


def pick_pod(pods: Iterable[Mapping[str, Any]]) -> PodView | None:
    """The pod that represents the workspace: a running one first, then the newest."""
    views: list[PodView] = []
    for pod in pods:
        metadata = pod.get("metadata") or {}
        if metadata.get("deletionTimestamp") or not metadata.get("name"):
            continue
        status = pod.get("status") or {}
        views.append(
            PodView(
                name=str(metadata["name"]),
                running=status.get("phase") == "Running",
                started_at=parse_time(status.get("startTime")),
            )
        )
    if not views:
        return None
    return max(views, key=lambda view: (view.running, view.started_at or _EPOCH, view.name))


@dataclass(frozen=True)
class StatusFacts:
    """What the status is built from; `decision` is None for agents that cannot run."""

    generation: int | None
    replicas: int
    ttl: timedelta | None
    error: str | None = None
    error_reason: str | None = None
    failure: str | None = None
    scaled_down_at: datetime | None = None
    decision: ScaleDecision | None = None
    pod: PodView | None = None
    snapshot: ActivitySnapshot | None = None
    fresh: bool = False
    seen_online_at: datetime | None = None
    #: Annotations the operator ignored (bad values), shown in the message until fixed.
    problems: tuple[str, ...] = ()


def _condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


def _message(facts: StatusFacts, phase: Phase) -> str | None:
    if phase is Phase.ERROR:
        return facts.error
    if phase is Phase.SCALED_DOWN:
        idle = f" after {format_duration(facts.ttl)} idle" if facts.ttl else ""
        at = f" at {format_timestamp(facts.scaled_down_at)}" if facts.scaled_down_at else ""
        base: str | None = f"scaled to zero{idle}{at}; connecting wakes it"
    elif not facts.fresh:
        base = f"{_NO_FRESH_DATA}: ONLINE unknown, nothing is scaled down"
    else:
        base = _MESSAGES.get(phase)
    held = (
        bool(facts.ttl) and facts.decision is not None and facts.decision.reason == AWAITING_AGENT
    )
    parts = [part for part in (base, _HELD if held else None, *facts.problems) if part]
    if facts.failure:
        parts.append(f"last reconcile failed: {facts.failure}")
    return "; ".join(parts) or None


def _conditions(facts: StatusFacts, phase: Phase, message: str | None) -> list[dict[str, str]]:
    ready = _condition("Ready", str(phase is Phase.RUNNING), phase.value, message or "")
    if facts.error:
        connected = _condition("Connected", "False", "NotRunnable", "the agent cannot run")
        synced = _condition("Synced", "False", facts.error_reason or "Error", facts.error)
    else:
        if not facts.fresh:
            connected = _condition("Connected", "Unknown", "GatewayUnreachable", _NO_FRESH_DATA)
        elif facts.snapshot is not None and facts.snapshot.online:
            connected = _condition("Connected", "True", "AgentConnected", "")
        else:
            connected = _condition("Connected", "False", "AgentOffline", "")
        if facts.failure:
            synced = _condition("Synced", "False", "ReconcileFailed", facts.failure)
        else:
            synced = _condition("Synced", "True", "Reconciled", "")
    return [ready, connected, synced]


def _stamp(
    conditions: list[dict[str, str]], current: object, now: datetime
) -> list[dict[str, str]]:
    """Carry `lastTransitionTime` over unless the condition's status changed."""
    previous: dict[str, Mapping[str, Any]] = {}
    if isinstance(current, list):
        previous = {str(item.get("type")): item for item in current if isinstance(item, Mapping)}
    stamped = []
    for condition in conditions:
        old = previous.get(condition["type"])
        if (
            old is not None
            and old.get("status") == condition["status"]
            and old.get("lastTransitionTime")
        ):
            when = str(old["lastTransitionTime"])
        else:
            when = format_timestamp(now)
        stamped.append({**condition, "lastTransitionTime": when})
    return stamped


def build_status(facts: StatusFacts, current: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The status we want; a None value means the field must be absent."""
    # Beyond the staleness bound the gateway's word is no longer news: not online (unknown).
    online = facts.snapshot.online if facts.snapshot is not None and facts.fresh else False
    pod = facts.pod
    seen = facts.seen_online_at is not None and (
        pod is None or pod.started_at is None or facts.seen_online_at >= pod.started_at
    )
    # What an earlier operator saw survives its restart in the status itself.
    seen = seen or (
        pod is not None
        and current.get("pod") == pod.name
        and current.get("phase") in CONNECTED_BEFORE
    )
    phase = compute_phase(
        error=facts.error,
        desired_replicas=facts.replicas,
        workload_running=pod is not None and pod.running,
        agent_online=online,
        agent_seen_since_start=seen,
    )
    message = _message(facts, phase)
    decision = facts.decision if not facts.error else None
    active = phase is not Phase.SCALED_DOWN and not facts.error
    return {
        "phase": phase.value,
        "online": is_online(phase),
        "pod": pod.name if pod is not None and pod.running and active else None,
        "lastActivity": (
            format_timestamp(decision.last_activity)
            if decision is not None and decision.last_activity is not None
            else None
        ),
        "lastActivitySource": decision.last_activity_source if decision is not None else None,
        "idleDeadline": (
            format_timestamp(decision.idle_deadline)
            if decision is not None and decision.idle_deadline is not None and active
            else None
        ),
        "message": message,
        "observedGeneration": facts.generation,
        "conditions": _stamp(_conditions(facts, phase, message), current.get("conditions"), now),
    }


def status_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch from `current` to `desired` (None removes a field); empty if equal."""
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        if value is None:
            if key in current:
                patch[key] = None
        elif current.get(key) != value:
            patch[key] = value
    return patch
