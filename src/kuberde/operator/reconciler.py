"""Reconcile one RDEAgent: its Secret, PVC and Deployment, and the replicas `policy` decides.

Every reconcile reads the RDEAgent and its Deployment afresh (reads are cheap; acting on a
stale annotation would undo a scale-down) and writes only what differs:

- the Deployment is compared by the spec-hash annotation, never field by field, so server
  defaults cannot look like changes; replicas alone are patched when only they differ;
- the Secret is re-minted only when its credential must change; the home PVC is created once,
  mounted only for the owner and RDEAgent name it records, and patched only when its
  reclaimPolicy changes (an owner reference for `Delete`); the operator never deletes it;
- replicas come from `policy.desired_replicas` over the RDEAgent's own annotations, so a
  scaled-down agent stays at zero across resyncs and restarts, and a wake request scales it up;
- a stop request (`kuberde.io/stop-requested`, `plan.honour_stop`) becomes the scale-down
  marker at the request's time and removes itself (and any extension) in one patch.

All writes for one agent happen while the lifecycle engine holds that agent
(`kuberde.engine.Engine`: it runs `reconcile`, and the TTL enforcer's `scale_down` takes
`Engine.exclusive`), so a scale-down, a wake and a reconcile of one agent never interleave.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kuberde import naming, plan, policy
from kuberde.clock import Clock, utc_now
from kuberde.kube import KubeApi, Paths
from kuberde.operator.annotations import (
    EXTEND_ANNOTATION,
    SCALED_DOWN_ANNOTATION,
    STOP_ANNOTATION,
    WAKE_ANNOTATION,
    annotations_of,
    timestamp_of,
)
from kuberde.operator.builder import (
    SPEC_HASH_ANNOTATION,
    BuildError,
    BuilderSettings,
    build_deployment,
    build_pvc,
    build_secret,
    credential_secret_name,
    deployment_needs_update,
    pvc_name,
)
from kuberde.operator.credentials import AgentCredentials
from kuberde.operator.events import EventRecorder
from kuberde.operator.metrics import OperatorMetrics
from kuberde.operator.ownership import Refusal, choose_holder, claimant_of, id_taken, recorded_owner
from kuberde.operator.storage import deletion_notice, foreign_volume, owner_references_patch
from kuberde.operator.store import AgentStore, name_of, uid_of
from kuberde.resource import InvalidResource, RDEAgent, parse_agent

__all__ = ["Reconciler", "SyncResult"]

log = logging.getLogger(__name__)

Decide = Callable[[Mapping[str, Any], RDEAgent], policy.ScaleDecision]


@dataclass(frozen=True)
class SyncResult:
    """What the last reconcile of one RDEAgent found and applied; the status is built from it.

    `error` is a problem only the user can fix (phase Error); `failure` is the last transient
    failure (the reconcile is retried), shown in the Synced condition.
    """

    uid: str | None
    generation: int | None
    agent: RDEAgent | None
    replicas: int
    scaled_down_at: datetime | None = None
    error: str | None = None
    error_reason: str | None = None
    failure: str | None = None

    @property
    def agent_id(self) -> str | None:
        return self.agent.agent_id if self.agent is not None else None


class Reconciler:
    def __init__(
        self,
        *,
        api: KubeApi,
        paths: Paths,
        store: AgentStore,
        events: EventRecorder,
        credentials: AgentCredentials,
        builder: BuilderSettings,
        metrics: OperatorMetrics,
        on_change: Callable[[], None],
        clock: Clock = utc_now,
    ) -> None:
        self._api = api
        self._paths = paths
        self._store = store
        self._events = events
        self._credentials = credentials
        self._builder = builder
        self._metrics = metrics
        self._on_change = on_change
        self._clock = clock
        self._results: dict[str, SyncResult] = {}
        self._announced: dict[str, str] = {}

    def result(self, name: str) -> SyncResult | None:
        return self._results.get(name)

    def results(self) -> dict[str, SyncResult]:
        return dict(self._results)

    def forget(self, name: str) -> None:
        self._results.pop(name, None)
        self._announced.pop(name, None)

    def remembers(self, name: str) -> bool:
        return name in self._results or name in self._announced

    async def reconcile(self, name: str) -> None:
        """The engine's reconcile, run while it holds `name`: raise so it is retried."""
        try:
            await self._reconcile(name)
        except Exception as exc:
            self._metrics.reconciles.labels(result="error").inc()
            self._metrics.errors.labels(component="reconcile").inc()
            previous = self._results.get(name)
            if previous is not None:
                self._results[name] = dataclasses.replace(previous, failure=str(exc))
                self._on_change()
            raise
        self._metrics.reconciles.labels(result="ok").inc()

    async def scale_down(self, name: str, decide: Decide) -> policy.ScaleDecision | None:
        """Record the scale-down on the RDEAgent and apply it, if `decide` still says so.

        The caller holds the agent (`Engine.exclusive`); the decision is taken again on a
        freshly read RDEAgent, so a wake request or a spec change that arrived since the sweep
        began wins.
        """
        body = await self._api.get(self._paths.agent(name))
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None
        self._store.put(body)
        result = self._results.get(name)
        if result is None or result.agent is None or result.error:
            return None
        try:
            agent = parse_agent(body)
        except InvalidResource:
            return None
        decision = decide(body, agent)
        if not decision.scale_down:
            return None
        stamp = plan.request_time_text(self._clock())
        patched = await self._api.merge_patch(
            self._paths.agent(name),
            {"metadata": {"annotations": {SCALED_DOWN_ANNOTATION: stamp}}},
        )
        self._store.put(patched)
        await self._reconcile(name)
        return decision

    async def _reconcile(self, name: str) -> None:
        body = await self._api.get(self._paths.agent(name))
        if body is None:
            previous = self._results.get(name)
            self._store.discard(name)
            self.forget(name)
            if previous is not None:
                await self._announce_deletion(name, previous)
            return
        self._store.put(body)
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            return
        try:
            agent = parse_agent(body)
        except InvalidResource as exc:
            await self._fail(body, "InvalidSpec", f"invalid RDEAgent: {exc}")
            return
        deployment_path = Paths.item(self._paths.deployments, agent.agent_id)
        live = await self._api.get(deployment_path)
        live_claim = await self._api.get(Paths.item(self._paths.pvcs, pvc_name(agent.agent_id)))
        conflict = self._conflict(body, agent, live, live_claim)
        if conflict is not None:
            await self._fail(body, "AgentIDConflict", conflict)
            return
        body = await self._honour_stop(body)
        scaled_down_at = timestamp_of(body, SCALED_DOWN_ANNOTATION)
        wake = timestamp_of(body, WAKE_ANNOTATION)
        scaled_down = SCALED_DOWN_ANNOTATION in annotations_of(body)
        replicas = policy.desired_replicas(
            scaled_down=scaled_down, wake_requested_at=wake, scaled_down_at=scaled_down_at
        )
        try:
            desired = build_deployment(
                agent,
                namespace=self._paths.namespace,
                replicas=replicas,
                secret_name=credential_secret_name(agent),
                settings=self._builder,
            )
            claim = build_pvc(agent, namespace=self._paths.namespace)
        except (BuildError, naming.InvalidName) as exc:
            await self._fail(body, "InvalidSpec", str(exc))
            return
        foreign = foreign_volume(agent, live_claim) if claim is not None else None
        if foreign is not None:
            await self._fail(body, "ForeignVolume", foreign)
            return
        if claim is not None and live_claim is not None and live is None:
            log.info(
                "RDEAgent %s (owner %s) mounts its existing PersistentVolumeClaim %s again",
                name,
                agent.spec.owner,
                claim["metadata"]["name"],
            )
        if scaled_down and replicas == 1:
            body = await self._wake(body, wake)
        elif replicas == 0 and ((live or {}).get("spec") or {}).get("replicas") == 0:
            log.info("Agent %s is scaled down by TTL, preserving replicas=0", name)
        await self._ensure_secret(agent)
        if claim is not None:
            await self._ensure_pvc(claim, live_claim)
        await self._ensure_deployment(name, desired, live, replicas)
        previous = self._results.get(name)
        result = SyncResult(
            uid=uid_of(body),
            generation=(body.get("metadata") or {}).get("generation"),
            agent=agent,
            replicas=replicas,
            scaled_down_at=scaled_down_at if replicas == 0 else None,
        )
        self._results[name] = result
        self._announced.pop(name, None)
        if previous != result:
            self._on_change()

    def _conflict(
        self,
        body: Mapping[str, Any],
        agent: RDEAgent,
        live: Mapping[str, Any] | None,
        live_claim: Mapping[str, Any] | None,
    ) -> Refusal | None:
        """Why this RDEAgent may not use its agent ID, if another one holds it.

        `ownership.choose_holder` decides from the owners recorded on the Deployment and the
        PVC, then age and name, so the decision does not flip with the order agents are
        applied or reconciled in, nor across a restore.
        """
        me = claimant_of(body)
        others = [
            claimant_of(other)
            for other in self._store.claiming(agent.agent_id)
            if name_of(other) != me.name
            and not (other.get("metadata") or {}).get("deletionTimestamp")
        ]
        if not others:
            return None
        holder = choose_holder([me, *others], [recorded_owner(live), recorded_owner(live_claim)])
        if holder.name == me.name:
            return None
        return id_taken(agent.agent_id, holder)

    async def _fail(self, body: Mapping[str, Any], reason: str, problem: str | Refusal) -> None:
        """Record a problem only the user can fix; announce it once with a Warning Event.

        A `Refusal` puts its `shown` text in the status (the owner's view) and its `detail`
        in the log and the Event (the admin's).
        """
        refusal = problem if isinstance(problem, Refusal) else Refusal(problem, problem)
        message = refusal.shown
        name = name_of(body)
        status = body.get("status") or {}
        previous = self._results.get(name)
        self._results[name] = SyncResult(
            uid=uid_of(body),
            generation=(body.get("metadata") or {}).get("generation"),
            agent=None,
            replicas=0,
            error=message,
            error_reason=reason,
        )
        shown = status.get("phase") == policy.Phase.ERROR.value and status.get("message") == message
        if self._announced.get(name) != refusal.detail and not shown:
            log.warning("RDEAgent %s: %s", name, refusal.detail)
            await self._events.record(body, "Warning", reason, refusal.detail)
        self._announced[name] = refusal.detail
        if previous != self._results[name]:
            self._on_change()

    async def _honour_stop(self, body: dict[str, Any]) -> dict[str, Any]:
        """Turn a pending stop request into the scale-down marker, or drop an overtaken one."""
        outcome = plan.honour_stop(
            plan.read_requests(annotations_of(body)),
            scaled_down=SCALED_DOWN_ANNOTATION in annotations_of(body),
            scaled_down_at=timestamp_of(body, SCALED_DOWN_ANNOTATION),
            wake_requested_at=timestamp_of(body, WAKE_ANNOTATION),
        )
        if outcome is None:
            return body
        name = name_of(body)
        changes: dict[str, str | None] = {STOP_ANNOTATION: None}
        if outcome.scaled_down_at is not None:
            changes[SCALED_DOWN_ANNOTATION] = plan.request_time_text(outcome.scaled_down_at)
            changes[EXTEND_ANNOTATION] = None
        patched = await self._api.merge_patch(
            self._paths.agent(name), {"metadata": {"annotations": changes}}
        )
        self._store.put(patched)
        if outcome.scaled_down_at is None:
            log.info("Agent %s: %s; not stopping", name, outcome.reason)
            return patched
        log.info("Stopping agent %s: %s, scaling to 0", name, outcome.reason)
        await self._events.record(patched, "Normal", "Stopped", f"Scaled to zero: {outcome.reason}")
        return patched

    async def _wake(self, body: dict[str, Any], wake: datetime | None) -> dict[str, Any]:
        """Clear the scale-down marker; `wake` becomes the agent's latest activity."""
        name = name_of(body)
        patched = await self._api.merge_patch(
            self._paths.agent(name), {"metadata": {"annotations": {SCALED_DOWN_ANNOTATION: None}}}
        )
        self._store.put(patched)
        self._metrics.wakes.inc()
        when = policy.format_timestamp(wake) if wake is not None else "an unknown time"
        log.info("Waking agent %s: wake requested at %s, scaling to 1", name, when)
        await self._events.record(
            patched, "Normal", "Woken", f"Scaled to one replica: wake requested at {when}"
        )
        return patched

    async def _ensure_secret(self, agent: RDEAgent) -> None:
        name = credential_secret_name(agent)
        path = Paths.item(self._paths.secrets, name)
        live = await self._api.get(path)
        uid = agent.metadata.uid or ""
        reason = self._credentials.replace_reason(live, uid)
        if reason is None:
            return
        minted = self._credentials.mint(agent)
        secret = build_secret(agent, namespace=self._paths.namespace, name=name, token=minted.token)
        secret["metadata"]["annotations"] = minted.annotations
        if live is None:
            await self._api.create(self._paths.secrets, secret)
            log.info("Created Secret %s with the credential of agent %s", name, agent.agent_id)
            return
        metadata = secret["metadata"]
        await self._api.merge_patch(
            path,
            {
                "metadata": {
                    "labels": metadata["labels"],
                    "annotations": metadata["annotations"],
                    "ownerReferences": metadata["ownerReferences"],
                },
                "data": secret["data"],
            },
        )
        log.info("Renewed the credential in Secret %s: %s", name, reason)

    async def _ensure_pvc(self, claim: Mapping[str, Any], live: Mapping[str, Any] | None) -> None:
        """Create the home PVC, or make its owner references follow the reclaimPolicy."""
        name = str(claim["metadata"]["name"])
        if live is None:
            await self._api.create(self._paths.pvcs, claim)
            log.info("Created PersistentVolumeClaim %s", name)
            return
        patch = owner_references_patch(claim, live)
        if patch is not None:
            await self._api.merge_patch(Paths.item(self._paths.pvcs, name), patch)
            goes = "goes with" if claim["metadata"].get("ownerReferences") else "outlives"
            log.info("PersistentVolumeClaim %s now %s its RDEAgent", name, goes)

    async def _announce_deletion(self, name: str, last: SyncResult) -> None:
        """Say, in the log and an Event, what happens to a deleted RDEAgent's home PVC.

        Only for an RDEAgent whose last reconcile mounted its own PVC: one refused a foreign
        PVC must not speak for that PVC.
        """
        agent = last.agent
        if agent is None or last.error or agent.spec.home_mount_path is None:
            return
        claim = pvc_name(agent.agent_id)
        notice = deletion_notice(agent, self._paths.namespace, claim)
        log.info("RDEAgent %s deleted: %s", name, notice.message)
        involved = {"metadata": {"name": name, "uid": last.uid}}
        await self._events.record(involved, "Normal", notice.reason, notice.message)

    async def _ensure_deployment(
        self,
        name: str,
        desired: Mapping[str, Any],
        live: Mapping[str, Any] | None,
        replicas: int,
    ) -> None:
        metadata = desired["metadata"]
        desired_hash = metadata["annotations"][SPEC_HASH_ANNOTATION]
        path = Paths.item(self._paths.deployments, str(metadata["name"]))
        if live is None:
            await self._api.create(self._paths.deployments, desired)
            log.info("Created Deployment %s with replicas=%d", metadata["name"], replicas)
            return
        # Only about a Deployment that exists: the runbook reads `true` as a false alarm.
        changed = deployment_needs_update(live, desired_hash)
        log.info("Agent %s: deploymentSpecChanged returned: %s", name, str(changed).lower())
        live_metadata = live.get("metadata") or {}
        if changed:
            operations: list[dict[str, Any]] = []
            version = live_metadata.get("resourceVersion")
            if version:
                operations.append(
                    {"op": "test", "path": "/metadata/resourceVersion", "value": version}
                )
            labels = {**(live_metadata.get("labels") or {}), **metadata["labels"]}
            annotations = {**(live_metadata.get("annotations") or {}), **metadata["annotations"]}
            operations += [
                {"op": "add", "path": "/metadata/labels", "value": labels},
                {"op": "add", "path": "/metadata/annotations", "value": annotations},
                {
                    "op": "add",
                    "path": "/metadata/ownerReferences",
                    "value": metadata["ownerReferences"],
                },
                {"op": "add", "path": "/spec", "value": desired["spec"]},
            ]
            await self._api.json_patch(path, operations)
            log.info("Updated Deployment %s to spec hash %s", metadata["name"], desired_hash[:12])
            return
        if (live.get("spec") or {}).get("replicas", 1) != replicas:
            await self._api.merge_patch(path, {"spec": {"replicas": replicas}})
            log.info("Scaled Deployment %s to replicas=%d", metadata["name"], replicas)
