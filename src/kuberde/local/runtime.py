"""The embedded runtime: each RDEAgent runs as local processes (its workload and its agent).

It is the local counterpart of the Kubernetes operator and runs the same lifecycle engine:
observe (the workspace's record, its processes, the gateway's activity feed) → decide
(`kuberde.plan`, pure) → act (`LocalActuator`: "replicas 1" means the processes run,
"replicas 0" means they are stopped). `kuberde.engine` serialises that per workspace, so
apply, delete, stop and the sweep never interleave on one workspace, and different
workspaces proceed concurrently. It is also the gateway's directory, so users can reach (and
wake) workspaces that are scaled down.

The records live in SQLite (`StateStore`) and are mirrored in memory: lookups by agent ID
(every connection) are one dict access, and SQLite runs on one worker thread, never on the
event loop that carries every tunnel.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import logging
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from kuberde import policy
from kuberde.activity import ActivityFeed
from kuberde.auth import TokenIssuer
from kuberde.clock import Clock, utc_now
from kuberde.engine import Engine, Timings
from kuberde.gateway.directory import AgentRecord, WakeError
from kuberde.local.accounts import AccountError, Accounts
from kuberde.local.netns import NetworkError, OwnerNetworks
from kuberde.local.processes import LOCAL_PORTS_ANNOTATION, LocalActuator, Processes
from kuberde.local.store import StateStore, WorkspaceState
from kuberde.plan import Action, Desired, Observation, Plan, Running, decide
from kuberde.resource import RDEAgent, parse_agent

__all__ = [
    "LOCAL_PORTS_ANNOTATION",
    "LocalRuntime",
    "RuntimeSettings",
    "UnknownWorkspace",
    "WorkspaceView",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class UnknownWorkspace(KeyError):
    def __str__(self) -> str:
        return f"no workspace named {self.args[0]!r}"


@dataclass(frozen=True)
class RuntimeSettings:
    state_dir: Path
    sweep_interval: float = 1.0
    #: A workload that exits sooner than this after starting is failing, not running.
    min_uptime: float = 3.0
    stop_grace: float = 5.0
    #: No user site-packages and no working directory on the path: the agent starts as root.
    agent_command: tuple[str, ...] = (sys.executable, "-s", "-P", "-m", "kuberde.agent")

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def max_staleness(self) -> timedelta:
        return timedelta(seconds=max(5.0, 3 * self.sweep_interval))


@dataclass(frozen=True)
class WorkspaceView:
    """One row of `kuberde ls`: the same columns as `kubectl get rdeagent -o wide`."""

    name: str
    agent_id: str
    owner: str
    phase: str
    online: bool
    pod: str | None
    created_at: datetime
    ttl: str | None
    last_activity: datetime | None
    last_activity_source: str | None
    idle_deadline: datetime | None
    message: str
    #: Open connections (streams); while there are any the workspace is held up, no deadline.
    connections: int
    #: An extension still ahead (`kuberde extend NAME 2h`), shown even while connections hold it.
    extended_until: datetime | None


def _desired(state: WorkspaceState, agent: RDEAgent) -> Desired:
    recorded = (
        policy.Activity(state.last_activity, state.last_activity_source or "recorded")
        if state.last_activity is not None
        else None
    )
    return Desired(
        ttl=agent.spec.ttl_duration,
        created_at=state.created_at,
        scaled_down=state.scaled_down,
        scaled_down_at=state.scaled_down_at,
        wake_requested_at=state.wake_requested_at,
        woken_at=state.woken_at,
        recorded_activity=recorded,
        extended_until=state.extended_until,
    )


def _running(processes: Processes | None, agent: RDEAgent | None, online: bool) -> Running | None:
    if processes is None:
        return None
    if agent is None:  # deleted: whatever runs is not what anyone wants
        return Running(current=False, workload_running=False, agent_seen=False, failure=None)
    return processes.observe(agent, online)


class LocalRuntime:
    def __init__(
        self,
        settings: RuntimeSettings,
        store: StateStore,
        issuer: TokenIssuer,
        activity: ActivityFeed,
        accounts: Accounts,
        networks: OwnerNetworks,
        clock: Clock = utc_now,
    ) -> None:
        self.settings = settings
        self._store = store
        self._activity = activity
        self._clock = clock
        #: Which OS account each owner's processes run as (see kuberde.local.accounts).
        self.accounts = accounts
        self._actuator = LocalActuator(
            logs_dir=settings.logs_dir,
            accounts=accounts,
            networks=networks,
            agent_command=settings.agent_command,
            issuer=issuer,
            min_uptime=settings.min_uptime,
            stop_grace=settings.stop_grace,
        )
        self._engine = Engine(
            self._reconcile, lambda: list(self._states), interval=settings.sweep_interval
        )
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kuberde-state")
        self._states: dict[str, WorkspaceState] = {}
        self._agents: dict[str, RDEAgent] = {}
        self._records: dict[str, AgentRecord] = {}
        self._by_agent: dict[str, str] = {}
        #: Held while checking that an agent ID is free and claiming it.
        self._claims = asyncio.Lock()
        for state in store.list():
            self._remember(state)
        activity.subscribe(self._agent_changed)

    # ---- records -------------------------------------------------------------------------

    def _remember(self, state: WorkspaceState) -> WorkspaceState:
        """Mirror a row just read or written: its parsed spec and directory record too, so
        neither a connection nor a reconcile parses JSON."""
        previous = self._states.get(state.name)
        if previous is not None and previous.agent_id != state.agent_id:
            self._by_agent.pop(previous.agent_id, None)
        if previous is None or previous.document != state.document:
            self._agents[state.name] = parse_agent(state.document)
        self._states[state.name] = state
        self._by_agent[state.agent_id] = state.name
        self._records[state.name] = self._record(state, self._agents[state.name])
        return state

    def _forget(self, state: WorkspaceState) -> None:
        for index in (self._states, self._agents, self._records):
            del index[state.name]
        if self._by_agent.get(state.agent_id) == state.name:
            del self._by_agent[state.agent_id]

    async def _call(self, function: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run a store call on the store's own thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db, functools.partial(function, *args, **kwargs))

    async def _update(self, name: str, **changes: object) -> WorkspaceState:
        return self._remember(await self._call(self._store.update, name, **changes))

    def get(self, name: str) -> WorkspaceState | None:
        return self._states.get(name)

    def list(self) -> list[WorkspaceState]:
        return [self._states[name] for name in sorted(self._states)]

    def _existing(self, name: str) -> WorkspaceState:
        state = self._states.get(name)
        if state is None:
            raise UnknownWorkspace(name)
        return state

    # ---- the gateway's directory ---------------------------------------------------------

    def lookup(self, agent_id: str) -> AgentRecord | None:
        name = self._by_agent.get(agent_id)
        return self._records[name] if name is not None else None

    def records(self) -> builtins.list[AgentRecord]:
        return [self._records[name] for name in sorted(self._records)]

    async def catch_up(self, *agent_ids: str) -> None:
        """The mirror is updated with every write: lookups are always current."""

    def _record(self, state: WorkspaceState, agent: RDEAgent) -> AgentRecord:
        error = state.message if state.phase == policy.Phase.ERROR else None
        spec = agent.spec
        return AgentRecord(
            agent_id=state.agent_id,
            owner=state.owner,
            name=state.name,
            error=error,
            apps=tuple(spec.apps),
            ports=spec.effective_allowed_ports,
            login=self.accounts.login_for(state.owner),
        )

    async def request_wake(self, agent_id: str, requested_by: str) -> None:
        name = self._by_agent.get(agent_id)
        if name is None:
            raise WakeError(f"agent {agent_id} no longer exists")
        if self._states[name].scaled_down:
            log.info("waking %s: %s connected", name, requested_by)
        await self.wake(name)

    def _agent_changed(self, agent_id: str) -> None:
        """An agent connected or went: its workspace's status follows at once."""
        name = self._by_agent.get(agent_id)
        if name is not None:
            self._engine.kick(name)

    # ---- commands ------------------------------------------------------------------------

    async def apply(self, agent: RDEAgent) -> WorkspaceState:
        """Create or update a workspace; a changed spec restarts its processes."""
        name = agent.metadata.name
        async with self._engine.exclusive(name), self._claims:
            existing = self._states.get(name)
            if existing is not None and existing.owner != agent.spec.owner:
                # Names are one namespace here; whose a taken one is is not for others to see.
                raise ValueError(f"workspace name {name!r} is taken; choose another name")
            holder = self._by_agent.get(agent.agent_id)
            if holder is not None and holder != name:
                raise ValueError(
                    f"agent ID {agent.agent_id} is already used by another workspace; "
                    "choose another name"
                )
            state = self._remember(
                await self._call(
                    self._store.upsert_spec,
                    name,
                    agent.spec.owner,
                    agent.agent_id,
                    agent.to_document(),
                    self._clock(),
                )
            )
            if existing is not None and existing.phase == policy.Phase.ERROR:
                state = await self._update(name, phase=policy.Phase.PENDING, message="")
        self._engine.kick(name)
        return state

    async def delete(self, name: str) -> None:
        async with self._engine.exclusive(name):
            state = self._existing(name)
            await self._actuator.remove(name, state.owner)
            await self._call(self._store.delete, name)
            self._forget(state)
        # Its reconcile finds it gone and succeeds: the engine forgets a retry it had pending.
        self._engine.kick(name)

    async def wake(self, name: str) -> None:
        """Record a wake request; the workspace's next reconcile starts it.

        Only the request is recorded here (one field, one write), so a wake is never queued
        behind a slow stop of the same workspace: the stop finishes, then the wake wins.
        """
        self._existing(name)
        await self._update(name, wake_requested_at=self._clock())
        self._engine.kick(name)

    async def stop(self, name: str) -> None:
        """Scale to zero now, whatever the TTL says (a later connection wakes it again)."""
        async with self._engine.exclusive(name):
            self._existing(name)
            await self._update(name, scaled_down=True, scaled_down_at=self._clock())
            await self._reconcile(name)

    async def extend(self, name: str, duration: timedelta | None = None) -> datetime:
        """Keep it up for another TTL from now, or until `duration` from now; an activity."""
        async with self._engine.exclusive(name):
            self._existing(name)
            now = self._clock()
            deadline, until = policy.extension(
                ttl=self._agents[name].spec.ttl_duration, now=now, duration=duration
            )
            await self._update(
                name, last_activity=now, last_activity_source="extend", extended_until=until
            )
        log.info("%s extended until %s", name, policy.format_timestamp(deadline))
        self._engine.kick(name)
        return deadline

    def view(self, state: WorkspaceState) -> WorkspaceView:
        """The row as of now: the phase follows the agent's connection without a sweep."""
        agent = self._agents[state.name]
        ttl = agent.spec.ttl_duration
        now = self._clock()
        observation = self._observe(state.name, state, agent, now)
        plan = decide(observation, max_staleness=self._staleness)
        connections = observation.activity.open_streams if observation.activity else 0
        deadline = None
        if (
            ttl is not None
            and not state.scaled_down
            and state.last_activity is not None
            and not connections
        ):
            deadline = policy.idle_deadline(ttl, state.last_activity, state.extended_until)
        processes = self._actuator.get(state.name)
        live = plan.action is Action.NONE and plan.phase is not None
        phase = plan.phase if live and plan.phase is not None else state.phase
        pid = processes.pid if processes is not None else None
        return WorkspaceView(
            name=state.name,
            agent_id=state.agent_id,
            owner=state.owner,
            phase=phase,
            online=policy.is_online(policy.Phase(phase)),
            pod=str(pid) if pid else None,
            created_at=state.created_at,
            ttl=policy.format_duration(ttl) if ttl else None,
            last_activity=state.last_activity,
            last_activity_source=state.last_activity_source,
            idle_deadline=deadline,
            message=plan.message if live else state.message,
            connections=connections,
            extended_until=policy.extension_ahead(
                state.extended_until, now, scaled_down=state.scaled_down
            ),
        )

    # ---- the engine ----------------------------------------------------------------------

    @property
    def _staleness(self) -> timedelta:
        return self.settings.max_staleness

    def timings(self) -> Timings:
        """The lifecycle loop's sweeps and reconcile times, for `kuberde doctor`."""
        return self._engine.timings()

    async def run(self) -> None:
        """Reconcile every workspace each sweep, and at once after any command, wake or
        agent (dis)connection."""
        await self._engine.run()

    async def shutdown(self) -> None:
        """Stop every process; state (including scale-down markers) stays for the next start."""
        await self._engine.close()
        await asyncio.gather(*(self._actuator.stop(name) for name in self._actuator.names()))
        self._db.shutdown(wait=True)

    def _observe(
        self, name: str, state: WorkspaceState | None, agent: RDEAgent | None, now: datetime
    ) -> Observation:
        snapshot = self._activity.snapshot(state.agent_id) if state is not None else None
        online = snapshot is not None and snapshot.online
        return Observation(
            desired=_desired(state, agent) if state is not None and agent is not None else None,
            running=_running(self._actuator.get(name), agent, online),
            activity=snapshot,
            now=now,
        )

    async def _reconcile(self, name: str) -> None:
        """Observe, decide and act for one workspace; the engine holds its lock."""
        now = self._clock()
        state = self._states.get(name)  # re-read inside the lock
        agent = self._agents.get(name)
        plan = decide(self._observe(name, state, agent, now), max_staleness=self._staleness)
        await self._act(name, agent, plan, now)

    async def _act(self, name: str, agent: RDEAgent | None, plan: Plan, now: datetime) -> None:
        if plan.woken:
            await self._update(name, scaled_down=False, woken_at=now)
        if plan.scaled_down:
            log.info("%s is scaled down by TTL: %s", name, plan.reason)
            await self._update(name, scaled_down=True, scaled_down_at=now)
        if plan.action is Action.RESTART:
            log.info("%s: spec changed; restarting its processes", name)
        if plan.action in (Action.STOP, Action.RESTART, Action.SCALE_DOWN):
            await self._actuator.stop(name)
        if plan.action in (Action.START, Action.RESTART) and agent is not None:
            try:
                processes = await self._actuator.start(
                    agent, now, functools.partial(self._engine.kick, name)
                )
            except AccountError as exc:
                await self._start_failed(name, f"cannot run as its OS account: {exc}")
                return
            except NetworkError as exc:
                await self._start_failed(name, f"cannot set up its network: {exc}")
                return
            await self._update(name, started_at=processes.started_at)
        state = self._states.get(name)
        if state is None or plan.phase is None:
            return
        await self._record_status(state, plan)

    async def _start_failed(self, name: str, message: str) -> None:
        """Nothing can start without its account and network: Error, retried every sweep."""
        state = self._states.get(name)
        if state is not None and (state.phase != policy.Phase.ERROR or state.message != message):
            log.error("%s: %s", name, message)
            await self._update(name, phase=str(policy.Phase.ERROR), message=message)

    async def _record_status(self, state: WorkspaceState, plan: Plan) -> None:
        assert plan.phase is not None
        changes: dict[str, object] = {}
        if plan.phase != state.phase:
            log.info("%s: %s -> %s", state.name, state.phase or "new", plan.phase)
            changes["phase"] = str(plan.phase)
        if plan.message != state.message:
            changes["message"] = plan.message
        processes = self._actuator.get(state.name)
        pid = processes.workload.pid if processes is not None and processes.workload else None
        if pid != state.pid:
            changes["pid"] = pid
        activity = plan.last_activity
        if activity is not None and activity.at != state.last_activity:
            changes["last_activity"] = activity.at
            changes["last_activity_source"] = activity.source
        if changes:
            await self._update(state.name, **changes)
