"""Leader election with a `coordination.k8s.io/v1` Lease, as client-go does it.

Only the holder of the Lease runs the operator; other replicas stand by and take over when it
stops renewing. Expiry is judged by how long *we* have seen the record unchanged (not by the
holder's timestamps), so clock skew between nodes cannot make two replicas act at once; every
write is a JSON patch that first tests the resourceVersion, so two candidates cannot both win.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kuberde.clock import Clock, utc_now
from kuberde.kube import ApiError, KubeApi, Paths
from kuberde.operator.metrics import OperatorMetrics

__all__ = ["LeaderElector", "LeadershipLost"]

log = logging.getLogger(__name__)


class LeadershipLost(Exception):
    """The Lease could not be renewed in time; the replica must stop acting at once."""


def _micro_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api: KubeApi,
        paths: Paths,
        *,
        name: str,
        identity: str,
        lease_duration: int,
        renew_deadline: float,
        retry_period: float,
        metrics: OperatorMetrics,
        clock: Clock = utc_now,
    ) -> None:
        self._api = api
        self._path = Paths.item(paths.leases, name)
        self._collection = paths.leases
        self._namespace = paths.namespace
        self._name = name
        self.identity = identity
        self._duration = lease_duration
        self._renew_deadline = renew_deadline
        self._retry_period = retry_period
        self._metrics = metrics
        self._clock = clock
        self._observed: tuple[object, ...] | None = None
        self._observed_at = 0.0
        self.leading = False

    def _spec(self, previous: Mapping[str, Any] | None) -> dict[str, Any]:
        now = _micro_time(self._clock())
        previous = previous or {}
        ours = previous.get("holderIdentity") == self.identity
        transitions = int(previous.get("leaseTransitions") or 0)
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self._duration,
            "acquireTime": previous.get("acquireTime") if ours else now,
            "renewTime": now,
            "leaseTransitions": transitions if ours or not previous else transitions + 1,
        }

    async def _try(self) -> bool:
        """One acquire-or-renew attempt; True if we hold the Lease afterwards."""
        lease = await self._api.get(self._path)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self._name, "namespace": self._namespace},
                "spec": self._spec(None),
            }
            try:
                await self._api.create(self._collection, body)
            except ApiError as exc:
                if exc.status == 409:
                    return False
                raise
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()
        if holder and holder != self.identity:
            duration = spec.get("leaseDurationSeconds") or self._duration
            if time.monotonic() < self._observed_at + float(duration):
                return False
        operations: list[dict[str, Any]] = []
        version = (lease.get("metadata") or {}).get("resourceVersion")
        if version:
            operations.append({"op": "test", "path": "/metadata/resourceVersion", "value": version})
        operations.append({"op": "add", "path": "/spec", "value": self._spec(spec)})
        try:
            await self._api.json_patch(self._path, operations)
        except ApiError as exc:
            if exc.status:
                log.debug("lost the race for Lease %s: %s", self._name, exc)
                return False
            raise
        return True

    async def acquire(self) -> None:
        """Block until this replica holds the Lease."""
        announced = False
        while True:
            try:
                if await self._try():
                    break
            except ApiError as exc:
                self._metrics.errors.labels(component="lease").inc()
                log.warning("Lease %s: %s", self._name, exc)
            if not announced:
                log.info("Standing by: Lease %s is held by another replica", self._name)
                announced = True
            await asyncio.sleep(self._retry_period)
        self.leading = True
        self._metrics.leader.set(1)
        log.info("Acquired Lease %s as %s; this replica now acts", self._name, self.identity)

    async def hold(self) -> None:
        """Renew until cancelled; raise `LeadershipLost` if renewal fails for the deadline."""
        last_renewed = time.monotonic()
        while True:
            await asyncio.sleep(self._retry_period)
            try:
                renewed = await self._try()
            except ApiError as exc:
                self._metrics.errors.labels(component="lease").inc()
                log.warning("Lease %s: renewal failed: %s", self._name, exc)
                renewed = False
            if renewed:
                last_renewed = time.monotonic()
            elif time.monotonic() - last_renewed > self._renew_deadline:
                self.leading = False
                self._metrics.leader.set(0)
                raise LeadershipLost(
                    f"could not renew Lease {self._name} for {self._renew_deadline:g}s"
                )

    async def release(self) -> None:
        """Hand the Lease over at once (instead of making the next leader wait it out)."""
        if not self.leading:
            return
        self.leading = False
        self._metrics.leader.set(0)
        lease = await self._api.get(self._path)
        spec = (lease or {}).get("spec") or {}
        if lease is None or spec.get("holderIdentity") != self.identity:
            return
        operations: list[dict[str, Any]] = []
        version = (lease.get("metadata") or {}).get("resourceVersion")
        if version:
            operations.append({"op": "test", "path": "/metadata/resourceVersion", "value": version})
        operations.append(
            {
                "op": "add",
                "path": "/spec",
                "value": {**spec, "holderIdentity": "", "leaseDurationSeconds": 1},
            }
        )
        await self._api.json_patch(self._path, operations)
        log.info("Released Lease %s", self._name)
