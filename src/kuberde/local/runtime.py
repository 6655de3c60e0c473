"""The embedded runtime: each RDEAgent runs as local processes (its workload and its agent).

It is the local counterpart of the Kubernetes operator and makes the same decisions with the
same pure functions (`kuberde.policy`): "replicas 1" means the processes run, "replicas 0"
means they are stopped. It is also the gateway's directory, so users can reach (and wake)
workspaces that are scaled down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kuberde import policy
from kuberde.auth import TokenIssuer
from kuberde.gateway.app import Gateway
from kuberde.gateway.directory import AgentRecord, WakeError
from kuberde.local.store import StateStore, WorkspaceState
from kuberde.local.supervisor import ProcessSpec, SupervisedProcess
from kuberde.resource import RDEAgent, parse_agent

__all__ = [
    "LOCAL_PORTS_ANNOTATION",
    "LocalRuntime",
    "RuntimeSettings",
    "UnknownWorkspace",
    "WorkspaceView",
]

log = logging.getLogger(__name__)

#: Maps workspace ports to real loopback ports (`22=41234`), as a pod's container ports would
#: be; passed to the agent as PORT_MAP.
LOCAL_PORTS_ANNOTATION = "kuberde.io/local-ports"


class UnknownWorkspace(KeyError):
    def __str__(self) -> str:
        return f"no workspace named {self.args[0]!r}"


@dataclass(frozen=True)
class RuntimeSettings:
    state_dir: Path
    gateway_ws_url: str
    sweep_interval: float = 1.0
    #: A workload that exits sooner than this after starting is failing, not running.
    min_uptime: float = 3.0
    stop_grace: float = 5.0
    agent_command: tuple[str, ...] = (sys.executable, "-m", "kuberde.agent")

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def credentials_dir(self) -> Path:
        return self.state_dir / "credentials"


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


@dataclass
class _Processes:
    """The live half of a workspace: what runs now, for which spec."""

    document: RDEAgent
    workload: SupervisedProcess | None
    agent: SupervisedProcess
    started_at: datetime
    agent_seen: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def all(self) -> list[SupervisedProcess]:
        return [self.agent] if self.workload is None else [self.workload, self.agent]

    @property
    def failure(self) -> str | None:
        if self.workload is not None and self.workload.failure:
            return f"workload failed: {self.workload.failure}"
        if self.agent.failure:
            return f"agent failed: {self.agent.failure}"
        return None


def _utc_now() -> datetime:
    return datetime.now(UTC)


class LocalRuntime:
    def __init__(
        self,
        settings: RuntimeSettings,
        store: StateStore,
        issuer: TokenIssuer,
        gateway: Gateway,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.settings = settings
        self.store = store
        self.issuer = issuer
        self.gateway = gateway
        self._clock = clock
        self._running: dict[str, _Processes] = {}
        self._kick = asyncio.Event()
        self._stopping = False
        settings.logs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        settings.credentials_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    # ---- the gateway's directory ---------------------------------------------------------

    def lookup(self, agent_id: str) -> AgentRecord | None:
        for state in self.store.list():
            if state.agent_id == agent_id:
                return self._record(state)
        return None

    def records(self) -> list[AgentRecord]:
        return [self._record(state) for state in self.store.list()]

    async def catch_up(self) -> None:
        """The store is the source itself: lookups are always current."""

    def _record(self, state: WorkspaceState) -> AgentRecord:
        error = state.message if state.phase == policy.Phase.ERROR else None
        spec = parse_agent(state.document).spec
        return AgentRecord(
            agent_id=state.agent_id,
            owner=state.owner,
            name=state.name,
            error=error,
            apps=tuple(spec.apps),
            ports=spec.effective_allowed_ports,
        )

    async def request_wake(self, agent_id: str, requested_by: str) -> None:
        state = next((s for s in self.store.list() if s.agent_id == agent_id), None)
        if state is None:
            raise WakeError(f"agent {agent_id} no longer exists")
        if state.scaled_down:
            log.info("waking %s: %s connected", state.name, requested_by)
        self.store.update(state.name, wake_requested_at=self._clock())
        self._kick.set()

    # ---- commands ------------------------------------------------------------------------

    def apply(self, agent: RDEAgent) -> WorkspaceState:
        """Create or update a workspace; a changed spec restarts its processes."""
        name = agent.metadata.name
        existing = self.store.get(name)
        if existing is not None and existing.owner != agent.spec.owner:
            raise ValueError(
                f"workspace {name!r} belongs to {existing.owner!r}; delete it before "
                f"applying it for {agent.spec.owner!r}"
            )
        clash = next(
            (s for s in self.store.list() if s.agent_id == agent.agent_id and s.name != name),
            None,
        )
        if clash is not None:
            raise ValueError(f"agent ID {agent.agent_id} is already used by workspace {clash.name}")
        state = self.store.upsert_spec(
            name, agent.spec.owner, agent.agent_id, agent.to_document(), self._clock()
        )
        if existing is not None and existing.phase == policy.Phase.ERROR:
            state = self.store.update(name, phase=policy.Phase.PENDING, message="")
        self._kick.set()
        return state

    async def delete(self, name: str) -> None:
        if self.store.get(name) is None:
            raise UnknownWorkspace(name)
        await self._stop_processes(name)
        self.store.delete(name)
        (self.settings.credentials_dir / f"{name}.token").unlink(missing_ok=True)
        self._kick.set()

    def wake(self, name: str) -> None:
        if self.store.get(name) is None:
            raise UnknownWorkspace(name)
        self.store.update(name, wake_requested_at=self._clock())
        self._kick.set()

    async def stop(self, name: str) -> None:
        """Scale to zero now, whatever the TTL says (a later connection wakes it again)."""
        if self.store.get(name) is None:
            raise UnknownWorkspace(name)
        self.store.update(name, scaled_down=True, scaled_down_at=self._clock())
        await self._stop_processes(name)
        self._kick.set()

    def extend(self, name: str, duration: timedelta | None = None) -> datetime:
        """Keep it up for another TTL from now, or until `duration` from now; an activity."""
        state = self.store.get(name)
        if state is None:
            raise UnknownWorkspace(name)
        now = self._clock()
        deadline, until = policy.extension(
            ttl=parse_agent(state.document).spec.ttl_duration, now=now, duration=duration
        )
        self.store.update(
            name, last_activity=now, last_activity_source="extend", extended_until=until
        )
        log.info("%s extended until %s", name, policy.format_timestamp(deadline))
        self._kick.set()
        return deadline

    def view(self, state: WorkspaceState) -> WorkspaceView:
        agent = parse_agent(state.document)
        ttl = agent.spec.ttl_duration
        activity = self.gateway.activity.get(state.agent_id)
        connections = activity.sessions if activity is not None else 0
        deadline = None
        if (
            ttl is not None
            and not state.scaled_down
            and state.last_activity is not None
            and not connections
        ):
            deadline = policy.idle_deadline(ttl, state.last_activity, state.extended_until)
        processes = self._running.get(state.name)
        pid = processes.workload.pid if processes and processes.workload else None
        if pid is None and processes is not None:
            pid = processes.agent.pid
        return WorkspaceView(
            name=state.name,
            agent_id=state.agent_id,
            owner=state.owner,
            phase=state.phase,
            online=policy.is_online(policy.Phase(state.phase)),
            pod=str(pid) if pid else None,
            created_at=state.created_at,
            ttl=policy.format_duration(ttl) if ttl else None,
            last_activity=state.last_activity,
            last_activity_source=state.last_activity_source,
            idle_deadline=deadline,
            message=state.message,
            connections=connections,
        )

    # ---- the control loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile every workspace each sweep, and at once after any command or wake."""
        while not self._stopping:
            started = asyncio.get_running_loop().time()
            for state in self.store.list():
                try:
                    await self._reconcile(state)
                except Exception:
                    log.exception("reconciling %s failed", state.name)
            elapsed = asyncio.get_running_loop().time() - started
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._kick.wait(), timeout=max(0.05, self.settings.sweep_interval - elapsed)
                )

    async def shutdown(self) -> None:
        """Stop every process; state (including scale-down markers) stays for the next start."""
        self._stopping = True
        self._kick.set()
        await asyncio.gather(*(self._stop_processes(name) for name in list(self._running)))

    async def _reconcile(self, state: WorkspaceState) -> None:
        now = self._clock()
        agent = parse_agent(state.document)
        desired = policy.desired_replicas(
            scaled_down=state.scaled_down,
            wake_requested_at=state.wake_requested_at,
            scaled_down_at=state.scaled_down_at,
        )
        if state.scaled_down and desired == 1:
            state = self.store.update(state.name, scaled_down=False, woken_at=now)
        processes = self._running.get(state.name)
        if processes is not None and processes.document != agent:
            log.info("%s: spec changed; restarting its processes", state.name)
            await self._stop_processes(state.name)
            processes = None
        if desired == 1 and processes is None:
            processes = self._start_processes(state, agent)
        elif desired == 0 and processes is not None:
            await self._stop_processes(state.name)
            processes = None

        connection = self.gateway.registry.get(state.agent_id)
        if processes is not None and connection is not None:
            processes.agent_seen = True
        activity = self.gateway.activity.get(state.agent_id)
        recorded = policy.last_activity(
            (state.last_activity, state.last_activity_source or "recorded"),
            (
                (activity.last_activity, activity.last_activity_source or "gateway")
                if activity is not None
                else None
            ),
        )
        snapshot = policy.ActivitySnapshot(
            online=connection is not None,
            open_streams=activity.sessions if activity is not None else 0,
            last_activity=recorded.at if recorded else None,
            last_activity_source=recorded.source if recorded else None,
            observed_at=now,
        )
        decision = policy.decide_scale_down(
            ttl=agent.spec.ttl_duration,
            replicas=desired,
            snapshot=snapshot,
            woken_at=state.woken_at,
            created_at=state.created_at,
            now=now,
            max_staleness=timedelta(seconds=max(5.0, 3 * self.settings.sweep_interval)),
            extended_until=state.extended_until,
        )
        if decision.scale_down:
            log.info("%s is scaled down by TTL: %s", state.name, decision.reason)
            state = self.store.update(state.name, scaled_down=True, scaled_down_at=now)
            await self._stop_processes(state.name)
            desired, processes = 0, None

        failure = processes.failure if processes is not None else None
        phase = policy.compute_phase(
            error=failure,
            desired_replicas=desired,
            workload_running=processes is not None and all(p.running for p in processes.all),
            agent_online=connection is not None,
            agent_seen_since_start=processes is not None and processes.agent_seen,
        )
        message = failure or ""
        if phase == policy.Phase.SCALED_DOWN:
            message = "scaled down; connecting wakes it"
        changes: dict[str, object] = {}
        if phase != state.phase:
            log.info("%s: %s -> %s", state.name, state.phase or "new", phase)
            changes["phase"] = str(phase)
        if message != state.message:
            changes["message"] = message
        pid = processes.workload.pid if processes and processes.workload else None
        if pid != state.pid:
            changes["pid"] = pid
        if decision.last_activity and decision.last_activity != state.last_activity:
            changes["last_activity"] = decision.last_activity
            changes["last_activity_source"] = decision.last_activity_source
        if changes:
            self.store.update(state.name, **changes)

    # ---- processes -----------------------------------------------------------------------

    def _credential_file(self, agent: RDEAgent) -> Path:
        path = self.settings.credentials_dir / f"{agent.metadata.name}.token"
        token = self.issuer.mint_agent(agent.spec.owner, agent.metadata.name)
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token)
        temporary.replace(path)
        return path

    def _start_processes(self, state: WorkspaceState, agent: RDEAgent) -> _Processes:
        log.info("%s: starting", state.name)
        logs = self.settings.logs_dir
        spec = agent.spec
        workload = None
        if spec.workload is not None:
            env = {**os.environ, **{var.name: var.value for var in spec.workload.env}}
            workload = SupervisedProcess(
                ProcessSpec(
                    name=f"{state.name}/workload",
                    argv=[*spec.workload.command, *spec.workload.args],
                    env=env,
                    cwd=spec.workload.working_dir,
                    log_path=logs / f"{state.name}.log",
                ),
                min_uptime=self.settings.min_uptime,
                on_change=self._kick.set,
            )
        agent_env = {
            **{key: value for key, value in os.environ.items() if not key.startswith("AGENT_")},
            "SERVER_URL": self.settings.gateway_ws_url,
            "AGENT_ID": agent.agent_id,
            "AGENT_TOKEN_FILE": str(self._credential_file(agent)),
            "LOCAL_TARGET": spec.local_target,
            "ALLOWED_PORTS": ",".join(str(port) for port in spec.effective_allowed_ports),
            "PORT_MAP": agent.metadata.annotations.get(LOCAL_PORTS_ANNOTATION, ""),
        }
        agent_process = SupervisedProcess(
            ProcessSpec(
                name=f"{state.name}/agent",
                argv=list(self.settings.agent_command),
                env=agent_env,
                cwd=None,
                log_path=logs / f"{state.name}.agent.log",
            ),
            min_uptime=self.settings.min_uptime,
            on_change=self._kick.set,
        )
        processes = _Processes(
            document=agent, workload=workload, agent=agent_process, started_at=self._clock()
        )
        for process in processes.all:
            process.start()
        self._running[state.name] = processes
        self.store.update(state.name, started_at=processes.started_at)
        return processes

    async def _stop_processes(self, name: str) -> None:
        # Still listed while it terminates (like a Terminating pod), so `ls` never shows a
        # phase that disagrees with the processes.
        processes = self._running.get(name)
        if processes is None:
            return
        log.info("%s: stopping", name)
        await asyncio.gather(
            *(process.stop(grace=self.settings.stop_grace) for process in processes.all)
        )
        if self._running.get(name) is processes:
            del self._running[name]
