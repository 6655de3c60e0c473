"""The gateway monitor: one batch `GET /mgmt/agents` per cycle, kept as the latest snapshot.

The TTL enforcer and the status updater read the snapshot; neither calls the gateway. A failed
fetch keeps the previous data but not its freshness (`observed_at` stays put), so the policy
sees it age and refuses to scale anything down on it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from kuberde.clock import Clock, utc_now
from kuberde.operator.annotations import parse_time
from kuberde.operator.credentials import ManagementToken
from kuberde.operator.metrics import OperatorMetrics
from kuberde.policy import Activity, ActivitySnapshot
from kuberde.tls import client_ssl_context

__all__ = ["GatewayAgent", "GatewayMonitor", "parse_agents"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GatewayAgent:
    """One entry of `/mgmt/agents`; `sessions` includes users waiting for a wake."""

    online: bool
    sessions: int
    last_activity: datetime | None
    last_activity_source: str | None


def parse_agents(document: object) -> dict[str, GatewayAgent]:
    """The entries of a `/mgmt/agents` response by agent ID; malformed entries are skipped."""
    if not isinstance(document, Mapping) or not isinstance(document.get("agents"), list):
        raise ValueError("response has no 'agents' list")
    agents: dict[str, GatewayAgent] = {}
    for entry in document["agents"]:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("id"), str):
            continue
        sessions = entry.get("sessions")
        source = entry.get("last_activity_source")
        agents[entry["id"]] = GatewayAgent(
            online=entry.get("online") is True,
            sessions=sessions if isinstance(sessions, int) and sessions > 0 else 0,
            last_activity=parse_time(entry.get("last_activity")),
            last_activity_source=source if isinstance(source, str) else None,
        )
    return agents


class GatewayMonitor:
    def __init__(
        self,
        *,
        server_api: str,
        token: ManagementToken,
        timeout: float,
        metrics: OperatorMetrics,
        clock: Clock = utc_now,
    ) -> None:
        self._url = server_api.rstrip("/") + "/mgmt/agents"
        self._token = token
        self._timeout = timeout
        self._metrics = metrics
        self._clock = clock
        self._ssl: ssl.SSLContext | None = (
            client_ssl_context() if server_api.startswith("https://") else None
        )
        self._agents: dict[str, GatewayAgent] = {}
        self._observed_at: datetime | None = None
        self._seen_online: dict[str, datetime] = {}
        self._failing = False
        self._attempted = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None

    @property
    def observed_at(self) -> datetime | None:
        """When the gateway last answered; None until it has."""
        return self._observed_at

    async def attempted(self) -> None:
        """Return once the first check finished, whatever its outcome.

        Until then "no data" only means "not asked yet"; reporting it would flip every agent's
        status on each operator restart.
        """
        await self._attempted.wait()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def check(self) -> bool:
        """One cycle; True if the gateway answered."""
        started = time.perf_counter()
        try:
            agents = await self._fetch()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            elapsed = self._observe(started)
            self._metrics.errors.labels(component="monitor").inc()
            self._metrics.gateway_up.set(0)
            why = str(exc) or type(exc).__name__
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(
                level, "Server monitor: GET %s failed after %.0fms: %s", self._url, elapsed, why
            )
            self._failing = True
            return False
        now = self._clock()
        self._agents = agents
        self._observed_at = now
        # Only agents the gateway still lists: a deleted agent's entry goes with it.
        self._seen_online = {
            agent_id: now if agent.online else self._seen_online[agent_id]
            for agent_id, agent in agents.items()
            if agent.online or agent_id in self._seen_online
        }
        if self._failing:
            log.info("Server monitor: the gateway answers again")
            self._failing = False
        self._metrics.gateway_up.set(1)
        elapsed = self._observe(started)
        log.info("Server monitor checked in %.0fms (%d agents)", elapsed, len(agents))
        return True

    def _observe(self, started: float) -> float:
        """Record the cycle's duration; return it in milliseconds for the log line."""
        elapsed = time.perf_counter() - started
        self._metrics.loop_seconds.labels(loop="monitor").observe(elapsed)
        return elapsed * 1000

    async def _fetch(self) -> dict[str, GatewayAgent]:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        headers = {"Accept": "application/json"}
        token = self._token.current()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with (
            asyncio.timeout(self._timeout),
            self._http.get(
                self._url,
                headers=headers,
                ssl=self._ssl if self._ssl is not None else True,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as response,
        ):
            if response.status != 200:
                raise ValueError(f"HTTP {response.status} {response.reason}")
            document: Any = await response.json(content_type=None)
        return parse_agents(document)

    def snapshot(self, agent_id: str, persisted: Activity | None = None) -> ActivitySnapshot | None:
        """What the gateway last said about `agent_id`, or None if it never answered.

        An agent the gateway does not list is offline with no streams. `persisted` (the last
        activity the operator recorded in the RDEAgent's status) keeps activity monotonic
        across gateway restarts, which forget it.
        """
        if self._observed_at is None:
            return None
        entry = self._agents.get(agent_id)
        last, source = (entry.last_activity, entry.last_activity_source) if entry else (None, None)
        if persisted is not None and (last is None or persisted.at > last):
            last, source = persisted.at, persisted.source
        return ActivitySnapshot(
            online=entry.online if entry else False,
            open_streams=entry.sessions if entry else 0,
            last_activity=last,
            last_activity_source=source,
            observed_at=self._observed_at,
        )

    def seen_online_at(self, agent_id: str) -> datetime | None:
        """The last time the gateway reported the agent online (since this operator started)."""
        return self._seen_online.get(agent_id)

    async def run(self, interval: float) -> None:
        while True:
            try:
                await self.check()
            finally:
                self._attempted.set()
            await asyncio.sleep(interval)
