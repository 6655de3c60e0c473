"""The gateway's directory in Kubernetes mode: RDEAgents tell it who owns which agent.

With it the gateway authorizes users for agents that are offline (scaled to zero) and asks
for a wake by annotating the RDEAgent (`kuberde.io/wake-requested-at`). The operator, the
only writer of Deployments, does the scaling: one writer means no scale-up/down races.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kuberde.gateway.directory import AgentRecord, WakeError
from kuberde.kube import ApiError, KubeApi, Paths
from kuberde.naming import WAKE_ANNOTATION, InvalidName, agent_id
from kuberde.resource import InvalidResource, parse_agent

__all__ = ["KubernetesDirectory", "record_of"]

log = logging.getLogger(__name__)


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


class KubernetesDirectory:
    """Keeps the RDEAgents of one namespace, re-listed every `refresh_interval` seconds.

    One list per interval (not one request per user connection) keeps the API server's load
    independent of traffic; a lookup that misses triggers an early refresh.
    """

    def __init__(self, api: KubeApi, namespace: str, *, refresh_interval: float = 5.0) -> None:
        self._api = api
        self._paths = Paths(namespace)
        self._refresh_interval = refresh_interval
        self._records: dict[str, AgentRecord] = {}
        self._names: dict[str, str] = {}
        self._kick = asyncio.Event()
        self._catching_up: list[asyncio.Future[None]] = []
        self.synced = asyncio.Event()

    def lookup(self, agent: str) -> AgentRecord | None:
        record = self._records.get(agent)
        if record is None:
            self._kick.set()
        return record

    def records(self) -> list[AgentRecord]:
        return list(self._records.values())

    async def catch_up(self) -> None:
        """Wait for a list that starts after this call to finish (successfully or not)."""
        listed = asyncio.get_running_loop().create_future()
        self._catching_up.append(listed)
        self._kick.set()
        await listed

    async def request_wake(self, agent: str, requested_by: str) -> None:
        name = self._names.get(agent)
        if name is None:
            raise WakeError(f"agent {agent} no longer exists")
        stamp = datetime.now(UTC).isoformat(timespec="microseconds")
        try:
            await self._api.merge_patch(
                self._paths.agent(name), {"metadata": {"annotations": {WAKE_ANNOTATION: stamp}}}
            )
        except ApiError as exc:
            log.warning("cannot request a wake of %s: %s", agent, exc)
            raise WakeError("the gateway could not ask Kubernetes to start it") from None
        log.info("wake requested for %s by %s", agent, requested_by)

    async def refresh(self) -> None:
        items = await self._api.list(self._paths.agents)
        records: dict[str, AgentRecord] = {}
        names: dict[str, str] = {}
        for item in items:
            record = record_of(item)
            if record is None:
                continue
            # Of two RDEAgents with one agent ID the operator puts the second in Error;
            # the healthy one is the agent.
            if record.agent_id in records and record.error is not None:
                continue
            records[record.agent_id] = record
            names[record.agent_id] = record.name
        self._records, self._names = records, names
        self.synced.set()

    async def run(self) -> None:
        failing = False
        while True:
            self._kick.clear()  # before listing, so a miss during the list is not lost
            waiting, self._catching_up = self._catching_up, []
            try:
                await self.refresh()
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
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._refresh_interval):
                    await self._kick.wait()
            await asyncio.sleep(0.2)  # a burst of misses costs one list, not many
