"""The periodic loops over all agents: the TTL enforcer and the status updater.

Both are thin: they gather observations (the store, the last reconcile, the gateway monitor's
snapshot, one pod listing) and hand them to `kuberde.policy` and `status`; the only writes are
a scale-down through the reconciler and a status patch when something changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kuberde import naming, plan, policy
from kuberde.aio import Kick
from kuberde.clock import Clock, utc_now
from kuberde.kube import ApiError, KubeApi, Paths
from kuberde.operator.annotations import (
    SCALED_DOWN_ANNOTATION,
    WAKE_ANNOTATION,
    annotations_of,
    parse_time,
    timestamp_of,
)
from kuberde.operator.events import EventRecorder
from kuberde.operator.metrics import OperatorMetrics
from kuberde.operator.monitor import GatewayMonitor
from kuberde.operator.reconciler import Reconciler, SyncResult
from kuberde.operator.status import (
    CONNECTED_BEFORE,
    StatusFacts,
    build_status,
    pick_pod,
    status_patch,
)
from kuberde.operator.store import AgentStore, name_of, uid_of
from kuberde.resource import RDEAgent

__all__ = ["ActivityView", "Assessment", "StatusUpdater", "TTLEnforcer"]

log = logging.getLogger(__name__)
#: The status updater's own logger: its name puts "status" in every line, which the runbook's
#: `grep -E "TTL|monitor|status"` looks for (its message starts with "Status").
status_log = logging.getLogger("kuberde.operator.status")

#: Pokes arriving together (e.g. many reconciles at start-up) share one status cycle.
_POKE_BATCH = 0.05
#: A deadline is checked this long after it passes: idle means strictly longer than the TTL.
_DEADLINE_SLACK = 0.5


@dataclass(frozen=True)
class Assessment:
    decision: policy.ScaleDecision
    snapshot: policy.ActivitySnapshot | None
    fresh: bool
    replicas: int
    #: Bad request annotations, ignored: the status message says so.
    problems: tuple[str, ...] = ()


class ActivityView:
    """One agent's activity as the policy sees it: gateway snapshot, wake and creation."""

    def __init__(self, monitor: GatewayMonitor, max_age: timedelta) -> None:
        self.monitor = monitor
        self.max_age = max_age

    def fresh(self, now: datetime) -> bool:
        observed = self.monitor.observed_at
        return observed is not None and now - observed <= self.max_age

    def assess(self, body: Mapping[str, Any], agent: RDEAgent, now: datetime) -> Assessment:
        status = body.get("status") or {}
        recorded = parse_time(status.get("lastActivity"))
        source = status.get("lastActivitySource")
        persisted = (
            policy.Activity(recorded, source if isinstance(source, str) and source else "recorded")
            if recorded is not None
            else None
        )
        snapshot = self.monitor.snapshot(agent.agent_id, persisted)
        wake = timestamp_of(body, WAKE_ANNOTATION)
        requests = plan.read_requests(annotations_of(body))
        desired = plan.Desired(
            ttl=agent.spec.ttl_duration,
            created_at=agent.metadata.creation_timestamp or now,
            scaled_down=SCALED_DOWN_ANNOTATION in annotations_of(body),
            scaled_down_at=timestamp_of(body, SCALED_DOWN_ANNOTATION),
            wake_requested_at=wake,
            woken_at=wake,
            recorded_activity=None,  # the monitor's snapshot already includes it
            extended_until=requests.extended_until,
        )
        replicas, checked = plan.verdict(desired, snapshot, now=now, max_staleness=self.max_age)
        # The latest start this observer knows of: created, or woken since.
        started_at = max(desired.created_at, wake or desired.created_at)
        seen = plan.agent_seen_since(
            started_at,
            online=snapshot is not None and snapshot.online,
            seen_online_at=self.monitor.seen_online_at(agent.agent_id),
        )
        # What an earlier operator saw survives its restart in the status (as `build_status`).
        seen = seen or status.get("phase") in CONNECTED_BEFORE
        decision = plan.hold_for_agent(checked, agent_seen=seen) if replicas else checked
        return Assessment(decision, snapshot, self.fresh(now), replicas, requests.problems)


def _runnable(
    store: AgentStore, results: Mapping[str, SyncResult]
) -> list[tuple[dict[str, Any], RDEAgent]]:
    """Agents whose last reconcile succeeded for the body we hold, with their parsed spec."""
    agents = []
    for name, result in results.items():
        body = store.get(name)
        if body is None or result.agent is None or result.error or uid_of(body) != result.uid:
            continue
        agents.append((body, result.agent))
    return agents


#: Holds one agent for the caller, as `Engine.exclusive` does: nothing else acts on it meanwhile.
Exclusive = Callable[[str], AbstractAsyncContextManager[None]]


class TTLEnforcer:
    def __init__(
        self,
        *,
        store: AgentStore,
        reconciler: Reconciler,
        exclusive: Exclusive,
        activity: ActivityView,
        events: EventRecorder,
        metrics: OperatorMetrics,
        rescheduled: Kick | None = None,
        clock: Clock = utc_now,
    ) -> None:
        """`exclusive` is the lifecycle engine's: a scale-down never interleaves with a
        reconcile, wake or delete of the same agent. `rescheduled`, kicked when an agent
        changes (created, new TTL, woken), has every agent assessed again at once, quietly,
        so a new deadline is known before it comes."""
        self._store = store
        self._reconciler = reconciler
        self._exclusive = exclusive
        self._activity = activity
        self._events = events
        self._metrics = metrics
        self._rescheduled = rescheduled or Kick()
        self._clock = clock
        self._logged: dict[str, tuple[object, ...]] = {}

    def remembers(self, name: str) -> bool:
        return name in self._logged

    def _log_decision(self, name: str, assessment: Assessment) -> None:
        """Each agent's verdict at INFO when it changes, at DEBUG while it stays the same."""
        decision = assessment.decision
        snapshot = assessment.snapshot
        key = (
            decision.scale_down,
            decision.idle_deadline,
            assessment.replicas,
            assessment.fresh,
            snapshot.open_streams if snapshot is not None else None,
        )
        level = logging.DEBUG if self._logged.get(name) == key else logging.INFO
        self._logged[name] = key
        log.log(level, "Agent %s: %s", name, decision.reason)

    async def sweep(self, only: Collection[str] | None = None) -> dict[str, datetime]:
        """Assess every agent (the periodic sweep, logged) or just `only` (their deadlines
        came due); return the idle deadline, still ahead, of each agent left running."""
        started = time.perf_counter()
        agents = _runnable(self._store, self._reconciler.results())
        if only is None:
            log.info("TTL enforcer: checking %d agents", len(agents))
            for name in set(self._logged) - {name_of(body) for body, _ in agents}:
                del self._logged[name]
        else:
            agents = [(body, agent) for body, agent in agents if name_of(body) in only]
        now = self._clock()
        deadlines: dict[str, datetime] = {}
        for body, agent in agents:
            name = name_of(body)
            assessment = self._activity.assess(body, agent, now)
            self._log_decision(name, assessment)
            deadline = assessment.decision.idle_deadline
            if assessment.decision.scale_down:
                await self._scale_down(name, agent.agent_id, now)
            elif assessment.replicas > 0 and deadline is not None and deadline > now:
                deadlines[name] = deadline
        if only is None:
            elapsed = time.perf_counter() - started
            self._metrics.loop_seconds.labels(loop="ttl").observe(elapsed)
            log.info("TTL enforcer completed %d agents in %.0fms", len(agents), elapsed * 1000)
        return deadlines

    async def _scale_down(self, name: str, agent_id: str, now: datetime) -> None:
        # The snapshot may predate a session that just opened: ask the gateway once more, and
        # decide on its answer (no answer, no scale-down).
        if not await self._activity.monitor.refresh(agent_id):
            return

        def decide(body: Mapping[str, Any], agent: RDEAgent) -> policy.ScaleDecision:
            return self._activity.assess(body, agent, now).decision

        try:
            async with self._exclusive(name):
                decision = await self._reconciler.scale_down(name, decide)
        except (ApiError, naming.InvalidName) as exc:
            self._metrics.errors.labels(component="ttl").inc()
            log.warning("TTL enforcer: could not scale agent %s to zero: %s", name, exc)
            return
        if decision is None:
            return
        self._metrics.scale_downs.inc()
        log.info("TTL enforcer: scaled agent %s to zero: %s", name, decision.reason)
        body = self._store.get(name)
        if body is not None:
            message = f"Scaled to zero: {decision.reason}"
            await self._events.record(body, "Normal", "ScaledDown", message)

    async def run(self, interval: float) -> None:
        """The logged sweep every `interval` (the runbook's ~60 s) and, in between, each
        agent assessed again when its own deadline comes: a workspace stops at its deadline,
        not up to a sweep later, and the loop never polls while nothing is due."""
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        deadlines: dict[str, datetime] = {}
        kicked = False
        while True:
            now = self._clock()
            due: set[str] | None
            if loop.time() >= next_sweep:
                due = None
            elif kicked:
                agents = _runnable(self._store, self._reconciler.results())
                due = {name_of(body) for body, _ in agents}
            else:
                due = {name for name, deadline in deadlines.items() if deadline <= now}
            try:
                found = await self.sweep(due)
            except Exception:
                self._metrics.errors.labels(component="ttl").inc()
                log.exception("TTL enforcer cycle failed")
                found = {}
            if due is None:
                deadlines = found
                next_sweep = loop.time() + interval
            else:
                deadlines = {n: d for n, d in deadlines.items() if n not in due} | found
            wait = next_sweep - loop.time()
            if deadlines:
                soonest = (min(deadlines.values()) - self._clock()).total_seconds()
                wait = min(wait, soonest + _DEADLINE_SLACK)
            kicked = await self._rescheduled.wait(max(wait, 0.0))


class StatusUpdater:
    def __init__(
        self,
        *,
        api: KubeApi,
        paths: Paths,
        store: AgentStore,
        reconciler: Reconciler,
        activity: ActivityView,
        metrics: OperatorMetrics,
        wake: Kick | None = None,
        clock: Clock = utc_now,
    ) -> None:
        """`wake` set by anyone (the reconciler, on a change) runs a cycle before the interval."""
        self._api = api
        self._paths = paths
        self._store = store
        self._reconciler = reconciler
        self._activity = activity
        self._metrics = metrics
        self._clock = clock
        self._wake = wake if wake is not None else Kick()

    def _facts(
        self,
        body: Mapping[str, Any],
        result: SyncResult,
        pods: Mapping[str, list[Mapping[str, Any]]],
        now: datetime,
    ) -> StatusFacts:
        agent = result.agent
        if agent is None:
            return StatusFacts(
                generation=result.generation,
                replicas=result.replicas,
                ttl=None,
                error=result.error,
                error_reason=result.error_reason,
                failure=result.failure,
            )
        assessment = self._activity.assess(body, agent, now)
        return StatusFacts(
            generation=result.generation,
            replicas=result.replicas,
            ttl=agent.spec.ttl_duration,
            failure=result.failure,
            scaled_down_at=result.scaled_down_at,
            decision=assessment.decision,
            pod=pick_pod(pods.get(agent.agent_id, [])),
            snapshot=assessment.snapshot,
            fresh=assessment.fresh,
            seen_online_at=self._activity.monitor.seen_online_at(agent.agent_id),
            problems=assessment.problems,
        )

    async def update(self) -> None:
        started = time.perf_counter()
        try:
            listed = await self._api.list(self._paths.pods, labels={"app": naming.AGENT_APP_LABEL})
        except ApiError as exc:
            self._metrics.errors.labels(component="status").inc()
            status_log.warning("Status updater: cannot list pods: %s", exc)
            return
        pods: dict[str, list[Mapping[str, Any]]] = {}
        for pod in listed:
            instance = ((pod.get("metadata") or {}).get("labels") or {}).get("instance")
            if instance:
                pods.setdefault(instance, []).append(pod)
        now = self._clock()
        phases: Counter[str] = Counter()
        processed = 0
        for body in self._store.bodies():
            name = name_of(body)
            result = self._reconciler.result(name)
            if result is None or result.uid != uid_of(body):
                continue
            current = body.get("status") or {}
            desired = build_status(self._facts(body, result, pods, now), current, now)
            phases[desired["phase"]] += 1
            processed += 1
            patch = status_patch(current, desired)
            if patch:
                await self._write(name, patch)
        for phase in policy.Phase:
            self._metrics.agents.labels(phase=phase.value).set(phases[phase.value])
        elapsed = time.perf_counter() - started
        self._metrics.loop_seconds.labels(loop="status").observe(elapsed)
        status_log.info("Status updater processed in %.0fms (%d agents)", elapsed * 1000, processed)

    async def _write(self, name: str, patch: Mapping[str, Any]) -> None:
        try:
            updated = await self._api.merge_patch(
                self._paths.agent_status(name), {"status": dict(patch)}
            )
        except ApiError as exc:
            if exc.status != 404:
                self._metrics.errors.labels(component="status").inc()
                status_log.warning("Status updater: cannot update RDEAgent %s: %s", name, exc)
            return
        self._store.put(updated)

    async def run(self, interval: float) -> None:
        await self._activity.monitor.attempted()
        while True:
            try:
                await self.update()
            except Exception:
                self._metrics.errors.labels(component="status").inc()
                status_log.exception("Status updater cycle failed")
            await self._wake.wait(interval, settle=_POKE_BATCH)
