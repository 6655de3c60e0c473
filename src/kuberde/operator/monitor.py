"""The gateway monitor: the gateway's view of every agent, kept as the latest snapshot.

Two ways in. A watch (`GET /mgmt/agents?watch=1`) held open pushes each agent's change the
moment it happens (connected, gone, held, released), so ONLINE follows the agent within a
second; one batch `GET /mgmt/agents` per cycle is the safety net. Both keep `observed_at`: a
list answered, or a watch event or heartbeat arrived (the view is complete as of then). A
failure keeps the previous data but not its freshness, so the policy sees it age and refuses
to scale anything down on it. A scale-down asks once more for that one agent (`refresh`).

The TTL enforcer and the status updater read the snapshot; neither calls the gateway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from kuberde.backoff import Backoff
from kuberde.clock import Clock, utc_now
from kuberde.operator.annotations import parse_time
from kuberde.operator.credentials import ManagementToken
from kuberde.operator.metrics import OperatorMetrics
from kuberde.policy import Activity, ActivitySnapshot
from kuberde.tls import client_ssl_context

__all__ = [
    "GatewayAgent",
    "GatewayMonitor",
    "WatchEvent",
    "newer_of",
    "parse_agents",
    "parse_watch_event",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GatewayAgent:
    """One entry of `/mgmt/agents`; `sessions` includes users waiting for a wake."""

    online: bool
    sessions: int
    last_activity: datetime | None
    last_activity_source: str | None


def _parse_entry(entry: object) -> tuple[str, GatewayAgent] | None:
    """One agent's entry (`/mgmt/agents/{id}`); None if it is malformed."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("id"), str):
        return None
    sessions = entry.get("sessions")
    source = entry.get("last_activity_source")
    return entry["id"], GatewayAgent(
        online=entry.get("online") is True,
        sessions=sessions if isinstance(sessions, int) and sessions > 0 else 0,
        last_activity=parse_time(entry.get("last_activity")),
        last_activity_source=source if isinstance(source, str) else None,
    )


def parse_agents(document: object) -> dict[str, GatewayAgent]:
    """The entries of a `/mgmt/agents` response by agent ID; malformed entries are skipped."""
    if not isinstance(document, Mapping) or not isinstance(document.get("agents"), list):
        raise ValueError("response has no 'agents' list")
    return dict(parsed for entry in document["agents"] if (parsed := _parse_entry(entry)))


def newer_of(
    listed: Mapping[str, GatewayAgent],
    current: Mapping[str, GatewayAgent],
    changed: Collection[str],
) -> dict[str, GatewayAgent]:
    """A list that was in flight while the `changed` agents were pushed (or asked about):
    their current entries are newer than the list's, so they win (an absent one stays so)."""
    merged = dict(listed)
    for agent_id in changed:
        if agent_id in current:
            merged[agent_id] = current[agent_id]
        else:
            merged.pop(agent_id, None)
    return merged


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One line of the gateway's watch: a full list, one agent (None: the gateway no longer
    knows `agent_id`), or a heartbeat (neither)."""

    agents: dict[str, GatewayAgent] | None = None
    agent_id: str | None = None
    agent: GatewayAgent | None = None


def parse_watch_event(line: bytes) -> WatchEvent:
    """One line of `GET /mgmt/agents?watch=1`; ValueError for anything else."""
    document = json.loads(line)
    kind = document.get("type") if isinstance(document, Mapping) else None
    if kind == "list":
        return WatchEvent(agents=parse_agents(document))
    if kind == "agent":
        parsed = _parse_entry(document.get("agent"))
        if parsed is None:
            raise ValueError("agent event without a well-formed agent")
        return WatchEvent(agent_id=parsed[0], agent=parsed[1])
    if kind == "gone" and isinstance(document.get("id"), str):
        return WatchEvent(agent_id=document["id"])
    if kind == "heartbeat":
        return WatchEvent()
    raise ValueError(f"unknown watch event {str(kind)[:40]!r}")


class GatewayMonitor:
    def __init__(
        self,
        *,
        server_api: str,
        token: ManagementToken,
        timeout: float,
        metrics: OperatorMetrics,
        on_change: Callable[[], None] | None = None,
        clock: Clock = utc_now,
    ) -> None:
        """`on_change` is called when the watch reports a change (the status is due now)."""
        self._url = server_api.rstrip("/") + "/mgmt/agents"
        self._token = token
        self._timeout = timeout
        self._metrics = metrics
        self._on_change = on_change or (lambda: None)
        self._clock = clock
        self._ssl: ssl.SSLContext | None = (
            client_ssl_context() if server_api.startswith("https://") else None
        )
        self._agents: dict[str, GatewayAgent] = {}
        self._observed_at: datetime | None = None
        self._seen_online: dict[str, datetime] = {}
        self._failing = False
        self._watch_failing = False
        #: Counts every update; which one last listed everything, and each agent's last own.
        self._generation = 0
        self._listed = 0
        self._updated: dict[str, int] = {}
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
        since = self._generation
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
        self._apply_list(agents, since)
        if self._failing:
            log.info("Server monitor: the gateway answers again")
            self._failing = False
        self._metrics.gateway_up.set(1)
        elapsed = self._observe(started)
        log.info("Server monitor checked in %.0fms (%d agents)", elapsed, len(agents))
        return True

    def _apply_list(self, agents: dict[str, GatewayAgent], since: int | None = None) -> None:
        """Every agent; for a list fetched since update `since`, what the watch (or a refresh)
        said meanwhile is newer and stays."""
        if since is not None and self._listed > since:
            agents = self._agents
        elif since is not None:
            changed = [agent_id for agent_id, at in self._updated.items() if at > since]
            agents = newer_of(agents, self._agents, changed)
        self._generation += 1
        self._listed = self._generation
        self._updated.clear()
        now = self._clock()
        self._agents = agents
        self._observed_at = now
        # Only agents the gateway still lists: a deleted agent's entry goes with it.
        self._seen_online = {
            agent_id: now if agent.online else self._seen_online[agent_id]
            for agent_id, agent in agents.items()
            if agent.online or agent_id in self._seen_online
        }

    def _apply_agent(self, agent_id: str, agent: GatewayAgent | None) -> None:
        self._generation += 1
        self._updated[agent_id] = self._generation
        if agent is None:
            self._agents.pop(agent_id, None)
            self._seen_online.pop(agent_id, None)
            return
        self._agents[agent_id] = agent
        if agent.online:
            self._seen_online[agent_id] = self._clock()

    def _apply(self, event: WatchEvent) -> None:
        if event.agents is not None:
            self._apply_list(event.agents)
        else:
            self._observed_at = self._clock()
            if event.agent_id is not None:
                self._apply_agent(event.agent_id, event.agent)
        if event.agents is not None or event.agent_id is not None:
            self._on_change()

    def _observe(self, started: float) -> float:
        """Record the cycle's duration; return it in milliseconds for the log line."""
        elapsed = time.perf_counter() - started
        self._metrics.loop_seconds.labels(loop="monitor").observe(elapsed)
        return elapsed * 1000

    def _request(
        self, url: str, timeout: aiohttp.ClientTimeout, accept: str = "application/json"
    ) -> Any:
        """A GET of the management API with the current credential (an async context)."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        headers = {"Accept": accept}
        token = self._token.current()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self._http.get(
            url, headers=headers, ssl=self._ssl if self._ssl is not None else True, timeout=timeout
        )

    async def _get(self, url: str) -> tuple[int, Any]:
        """Status and JSON body (None unless 200) of one bounded GET."""
        async with (
            asyncio.timeout(self._timeout),
            self._request(url, aiohttp.ClientTimeout(total=self._timeout)) as response,
        ):
            if response.status != 200:
                return response.status, None
            return 200, await response.json(content_type=None)

    async def _fetch(self) -> dict[str, GatewayAgent]:
        status, document = await self._get(self._url)
        if status != 200:
            raise ValueError(f"HTTP {status}")
        return parse_agents(document)

    async def refresh(self, agent_id: str) -> bool:
        """Ask the gateway about one agent now (before a scale-down); True if it answered."""
        try:
            status, document = await self._get(f"{self._url}/{agent_id}")
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            why = str(exc) or type(exc).__name__
            log.warning("Server monitor: cannot confirm agent %s: %s", agent_id, why)
            return False
        parsed = _parse_entry(document) if status == 200 else None
        if status not in (200, 404) or (status == 200 and parsed is None):
            log.warning("Server monitor: cannot confirm agent %s: HTTP %d", agent_id, status)
            return False
        self._apply_agent(agent_id, parsed[1] if parsed is not None else None)
        return True

    async def _watch_once(self, heartbeat: float) -> None:
        """Hold one watch until it fails; raises what ended it."""
        url = f"{self._url}?watch=1&heartbeat={heartbeat:g}"
        # A heartbeat missed by more than a request timeout: the link is dead.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._timeout, sock_read=heartbeat + self._timeout
        )
        async with self._request(url, timeout, accept="application/x-ndjson") as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status} {response.reason}")
            opened = False
            async for line in response.content:
                if not line.strip():
                    continue
                self._apply(parse_watch_event(line))
                if not opened:
                    opened = True
                    level = logging.INFO if self._watch_failing else logging.DEBUG
                    log.log(level, "Server monitor: watching %s for agent changes", self._url)
                    self._watch_failing = False
        raise ConnectionError("the gateway ended the watch")

    async def watch(self, heartbeat: float, backoff: Backoff | None = None) -> None:
        """Keep one watch open for good, reconnecting with backoff after each failure."""
        backoff = backoff or Backoff(base=0.2, cap=10.0, stable_after=3 * heartbeat)
        while True:
            started = time.monotonic()
            try:
                await self._watch_once(heartbeat)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                level = logging.DEBUG if self._watch_failing else logging.WARNING
                why = str(exc) or type(exc).__name__
                log.log(level, "Server monitor: watch of %s failed: %s", self._url, why)
                self._watch_failing = True
            backoff.session_ended(time.monotonic() - started)
            await asyncio.sleep(backoff.next_delay())

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
