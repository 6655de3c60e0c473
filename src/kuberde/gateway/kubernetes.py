"""The gateway's directory in Kubernetes mode: RDEAgents tell it who owns which agent.

With it the gateway authorizes users for agents that are offline (scaled to zero) and asks
for a wake, a stop or an extension by annotating the RDEAgent (`kuberde.io/wake-requested-at`,
`kuberde.io/stop-requested`, `kuberde.io/extend-until`). The operator, the only writer of
Deployments, does the scaling: one writer means no scale-up/down races.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kuberde import plan
from kuberde.aio import Kick
from kuberde.clock import parse_timestamp
from kuberde.gateway.directory import AgentRecord, WakeError
from kuberde.kube import ApiError, KubeApi, Paths
from kuberde.naming import (
    EXTEND_ANNOTATION,
    STOP_ANNOTATION,
    WAKE_ANNOTATION,
    InvalidName,
    agent_id,
)
from kuberde.policy import format_timestamp
from kuberde.resource import InvalidResource, parse_agent

__all__ = ["KubernetesDirectory", "Lifecycle", "holder_of", "lifecycle_of", "record_of"]

log = logging.getLogger(__name__)

#: Names that missed, waiting for the next list; past this, misses wait for the periodic one.
_MAX_PENDING_MISSES = 10_000


def record_of(body: Mapping[str, Any]) -> AgentRecord | None:
    """The directory entry of one RDEAgent, or None if it names no valid agent."""
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    name, owner = metadata.get("name"), spec.get("owner")
    if not isinstance(name, str) or not isinstance(owner, str):
        return None
    try:
        identity = agent_id(owner, name)
    except InvalidName:
        return None
    error = None
    if status.get("phase") == "Error":
        error = str(status.get("message") or "the RDEAgent is in phase Error")
    try:
        spec_model = parse_agent(body).spec
        apps, ports = tuple(spec_model.apps), spec_model.effective_allowed_ports
    except InvalidResource:
        apps, ports = (), ()
    return AgentRecord(
        agent_id=identity,
        owner=owner,
        name=name,
        uid=metadata.get("uid"),
        error=error,
        apps=apps,
        ports=ports,
    )


@dataclass(frozen=True)
class Lifecycle:
    """What the dashboard shows of an RDEAgent's lifecycle: its TTL, the extension asked
    for, and the idle deadline and phase the operator last wrote in its status."""

    ttl: timedelta | None = None
    extended_until: datetime | None = None
    idle_deadline: datetime | None = None
    phase: str | None = None
    #: The running pod the operator reports (`status.pod`).
    pod: str | None = None
    created_at: datetime | None = None


def lifecycle_of(body: Mapping[str, Any]) -> Lifecycle:
    status = body.get("status") or {}
    try:
        ttl = parse_agent(body).spec.ttl_duration
    except InvalidResource:
        ttl = None
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    phase = status.get("phase")
    pod = status.get("pod")
    return Lifecycle(
        ttl=ttl,
        extended_until=plan.read_requests(annotations).extended_until,
        idle_deadline=parse_timestamp(status.get("idleDeadline")),
        phase=phase if isinstance(phase, str) else None,
        pod=pod if isinstance(pod, str) and pod else None,
        created_at=parse_timestamp((body.get("metadata") or {}).get("creationTimestamp")),
    )


def holder_of(claimants: list[AgentRecord]) -> AgentRecord:
    """The record users of an agent ID get, when one or more RDEAgents claim it.

    The operator decides which RDEAgent holds a colliding ID and puts the others in Error.
    Until it has, more than one claimant looks healthy: then nobody may use the ID (the
    record carries an error), because authorizing by the wrong one's owner would hand that
    owner the other one's running workspace.
    """
    ordered = sorted(claimants, key=lambda record: record.name)
    healthy = [record for record in ordered if record.error is None]
    if len(healthy) == 1:
        return healthy[0]
    if not healthy:
        return ordered[0]
    # Shown to whoever connects: it names none of the claimants (issue 11); the operator's
    # log and Events say which they are.
    return dataclasses.replace(
        healthy[0],
        error=f"agent ID {healthy[0].agent_id} is claimed by more than one workspace; "
        "waiting for the operator to decide which one holds it",
    )


class KubernetesDirectory:
    """Keeps the RDEAgents of one namespace, re-listed every `refresh_interval` seconds.

    One list per interval (not one request per user connection) keeps the API server's load
    independent of traffic. A lookup that misses triggers an early refresh, once per name:
    a name still missing after that list is a cached miss until the next refresh, so a user
    probing names (or retrying one) does not make the gateway list again and again.
    """

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        *,
        refresh_interval: float = 5.0,
        min_interval: float = 0.5,
    ) -> None:
        self._api = api
        self._min_interval = min_interval
        self._paths = Paths(namespace)
        self._refresh_interval = refresh_interval
        self._records: dict[str, AgentRecord] = {}
        self._names: dict[str, str] = {}
        self._lifecycles: dict[str, Lifecycle] = {}
        self._kick = Kick()
        #: Missed since the current list began / missed in the last completed list.
        self._pending_misses: set[str] = set()
        self._cached_misses: frozenset[str] = frozenset()
        self._catching_up: list[asyncio.Future[None]] = []
        self.synced = asyncio.Event()

    def lookup(self, agent: str) -> AgentRecord | None:
        record = self._records.get(agent)
        if (
            record is None
            and agent not in self._cached_misses
            and len(self._pending_misses) < _MAX_PENDING_MISSES
        ):
            self._pending_misses.add(agent)
            self._kick.set()
        return record

    def records(self) -> list[AgentRecord]:
        return list(self._records.values())

    def lifecycle(self, agent: str) -> Lifecycle:
        return self._lifecycles.get(agent) or Lifecycle()

    async def catch_up(self, *agent_ids: str) -> None:
        """Wait for a list that starts after this call to finish (successfully or not);
        at once if every ID is known, or was missing in the last list."""
        if agent_ids and all(
            agent in self._records or agent in self._cached_misses for agent in agent_ids
        ):
            return
        listed = asyncio.get_running_loop().create_future()
        self._catching_up.append(listed)
        self._kick.set()
        await listed

    async def _annotate(self, agent: str, annotation: str, value: str, what: str) -> None:
        """Record a request on the RDEAgent for the operator; WakeError says why not."""
        name = self._names.get(agent)
        if name is None:
            raise WakeError(f"agent {agent} no longer exists")
        try:
            await self._api.merge_patch(
                self._paths.agent(name), {"metadata": {"annotations": {annotation: value}}}
            )
        except ApiError as exc:
            log.warning("cannot request a %s of %s: %s", what, agent, exc)
            raise WakeError(f"the gateway could not ask Kubernetes for the {what}") from None

    @staticmethod
    def _now() -> str:
        """Subsecond, so two requests within one second stay ordered."""
        return datetime.now(UTC).isoformat(timespec="microseconds")

    async def request_wake(self, agent: str, requested_by: str) -> None:
        await self._annotate(agent, WAKE_ANNOTATION, self._now(), "wake")
        log.info("wake requested for %s by %s", agent, requested_by)

    async def request_stop(self, agent: str, requested_by: str) -> None:
        """The operator scales it to zero now (unless a later wake overtakes the request)."""
        await self._annotate(agent, STOP_ANNOTATION, self._now(), "stop")
        log.info("stop requested for %s by %s", agent, requested_by)

    async def request_extension(self, agent: str, until: datetime, requested_by: str) -> None:
        """The operator keeps it up until `until`, whatever its TTL says."""
        await self._annotate(agent, EXTEND_ANNOTATION, format_timestamp(until), "extension")
        log.info("extension of %s until %s by %s", agent, format_timestamp(until), requested_by)

    async def refresh(self) -> None:
        items = await self._api.list(self._paths.agents)
        claims: dict[str, list[AgentRecord]] = {}
        bodies: dict[str, Mapping[str, Any]] = {}
        for item in items:
            record = record_of(item)
            if record is not None:
                claims.setdefault(record.agent_id, []).append(record)
                bodies[record.name] = item
        records = {agent: holder_of(claimants) for agent, claimants in claims.items()}
        self._records = records
        self._names = {agent: record.name for agent, record in records.items()}
        self._lifecycles = {
            agent: lifecycle_of(bodies[record.name]) for agent, record in records.items()
        }
        self.synced.set()

    async def run(self) -> None:
        failing = False
        while True:
            waiting, self._catching_up = self._catching_up, []
            asked, self._pending_misses = self._pending_misses, set()
            try:
                await self.refresh()
                self._cached_misses = frozenset(a for a in asked if a not in self._records)
                if failing:
                    log.info("listing RDEAgents works again")
                failing = False
            except ApiError as exc:
                if not failing:
                    log.warning("cannot list RDEAgents (will keep trying): %s", exc)
                failing = True
            finally:
                for listed in waiting:
                    if not listed.done():
                        listed.set_result(None)
            # A miss during the list is kept for the next one; a burst of misses costs one list.
            await self._kick.wait(self._refresh_interval, settle=self._min_interval)
