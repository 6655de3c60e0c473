"""The local runtime's actuator: start and stop the processes of a workspace.

This is the only place that spawns a workspace's processes (its workload and its agent) and
makes the agent's credential; the engine decides when (`kuberde.plan`), this does it. It is
the local counterpart of the operator writing a Deployment's replicas.

Both processes run as the owner's OS account (`kuberde.local.accounts`) from a clean
environment, in the owner's network namespace when there is one (`kuberde.local.netns`).
The credential is an anonymous memory file only the agent holds (see
`_credential`); the agent starts as root and drops to the account itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from kuberde.agent.privileges import RUN_AS_ENV
from kuberde.auth import TokenIssuer
from kuberde.local.accounts import Accounts, clean_environment
from kuberde.local.netns import OwnerNetworks
from kuberde.local.supervisor import ProcessSpec, SupervisedProcess
from kuberde.plan import Running
from kuberde.resource import RDEAgent

__all__ = ["LOCAL_PORTS_ANNOTATION", "LocalActuator", "Processes"]

log = logging.getLogger(__name__)

#: Maps workspace ports to real loopback ports (`22=41234`), as a pod's container ports would
#: be; passed to the agent as PORT_MAP.
LOCAL_PORTS_ANNOTATION = "kuberde.io/local-ports"


@dataclass
class Processes:
    """The live half of a workspace: what runs now, for which spec."""

    document: RDEAgent
    workload: SupervisedProcess | None
    agent: SupervisedProcess
    started_at: datetime
    #: The agent's credential (see `LocalActuator._credential`), open while these run.
    credential_fd: int
    #: The agent has been online since these processes started (Disconnected, not Starting).
    agent_seen: bool = False

    @property
    def all(self) -> list[SupervisedProcess]:
        return [self.agent] if self.workload is None else [self.workload, self.agent]

    @property
    def pid(self) -> int | None:
        """The POD column: the workload's pid, else the agent's."""
        if self.workload is not None:
            return self.workload.pid
        return self.agent.pid

    @property
    def failure(self) -> str | None:
        if self.workload is not None and self.workload.failure:
            return f"workload failed: {self.workload.failure}"
        if self.agent.failure:
            return f"agent failed: {self.agent.failure}"
        return None

    def observe(self, desired: RDEAgent, online: bool) -> Running:
        """What the decide step sees; an online agent is remembered as seen."""
        self.agent_seen = self.agent_seen or online
        return Running(
            current=self.document == desired,
            workload_running=all(process.running for process in self.all),
            agent_seen=self.agent_seen,
            failure=self.failure,
        )


class LocalActuator:
    """`on_change` is called on every process transition (it kicks the workspace)."""

    def __init__(
        self,
        *,
        logs_dir: Path,
        accounts: Accounts,
        networks: OwnerNetworks,
        agent_command: tuple[str, ...],
        issuer: TokenIssuer,
        min_uptime: float,
        stop_grace: float,
    ) -> None:
        self._logs_dir = logs_dir
        self._accounts = accounts
        self._networks = networks
        self._agent_command = agent_command
        self._issuer = issuer
        self._min_uptime = min_uptime
        self._stop_grace = stop_grace
        self._running: dict[str, Processes] = {}
        logs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def get(self, name: str) -> Processes | None:
        return self._running.get(name)

    def names(self) -> list[str]:
        return list(self._running)

    def _credential(self, agent: RDEAgent) -> int:
        """A fresh agent credential in an anonymous file (memfd, 0600, ours): the agent gets
        the descriptor and no path leads to it, so no workload can open it."""
        fd = os.memfd_create(f"kuberde-credential-{agent.metadata.name}", os.MFD_CLOEXEC)
        os.fchmod(fd, 0o600)
        os.write(fd, self._issuer.mint_agent(agent.spec.owner, agent.metadata.name).encode())
        return fd

    async def start(
        self, agent: RDEAgent, now: datetime, on_change: Callable[[], None]
    ) -> Processes:
        """Start both processes as the owner's account, in the owner's network; AccountError
        if there is no account, NetworkError if there is no network."""
        name = agent.metadata.name
        spec = agent.spec
        account = self._accounts.for_owner(spec.owner)
        network = await self._networks.join(spec.owner, name, account)
        isolated = self._accounts.isolated
        log.info("%s: starting as %s", name, account.name)
        workload = None
        if spec.workload is not None:
            workload = SupervisedProcess(
                ProcessSpec(
                    name=f"{name}/workload",
                    argv=[*spec.workload.command, *spec.workload.args],
                    env=clean_environment(
                        account, os.environ, {var.name: var.value for var in spec.workload.env}
                    ),
                    cwd=spec.workload.working_dir or str(account.home),
                    log_path=self._logs_dir / f"{name}.log",
                    run_as=account if isolated else None,
                    netns=network.netns,
                    resolv_conf=network.resolv_conf,
                ),
                min_uptime=self._min_uptime,
                on_change=on_change,
            )
        credential = self._credential(agent)
        agent_config = {
            "SERVER_URL": network.gateway_url,
            "AGENT_ID": agent.agent_id,
            "AGENT_TOKEN_FD": str(credential),
            "LOCAL_TARGET": spec.local_target,
            "ALLOWED_PORTS": ",".join(str(port) for port in spec.effective_allowed_ports),
            "PORT_MAP": agent.metadata.annotations.get(LOCAL_PORTS_ANNOTATION, ""),
            # It is stopped first, its workload right after (`stop`): open streams have
            # nothing to drain into, so it resets them at once, saying why.
            "SHUTDOWN_GRACE": "0",
        }
        if isolated:
            # The agent drops to the account itself (kuberde.agent.privileges).
            agent_config[RUN_AS_ENV] = f"{account.uid}:{account.gid}"
        if "PYTHONPATH" in os.environ:
            # The agent is this interpreter running this package: it needs our import path.
            agent_config["PYTHONPATH"] = os.environ["PYTHONPATH"]
        agent_process = SupervisedProcess(
            ProcessSpec(
                name=f"{name}/agent",
                argv=list(self._agent_command),
                env=clean_environment(account, os.environ, agent_config),
                cwd="/",
                log_path=self._logs_dir / f"{name}.agent.log",
                pass_fds=(credential,),
                netns=network.netns,
                resolv_conf=network.resolv_conf,
            ),
            min_uptime=self._min_uptime,
            on_change=on_change,
        )
        processes = Processes(
            document=agent,
            workload=workload,
            agent=agent_process,
            started_at=now,
            credential_fd=credential,
        )
        for process in processes.all:
            process.start()
        self._running[name] = processes
        return processes

    async def stop(self, name: str) -> None:
        # Still listed while it terminates (like a Terminating pod), so `ls` never shows a
        # phase that disagrees with the processes.
        processes = self._running.get(name)
        if processes is None:
            return
        log.info("%s: stopping", name)
        # The agent first: it tells its users' connections why they end ("the workspace is
        # stopping") before the workload's end could cut them with less to say. What the
        # workload runs is noted before, as those connections' ends orphan their sessions.
        if processes.workload is not None:
            await processes.workload.hold_members()
        for process in (processes.agent, processes.workload):
            if process is not None:
                await process.stop(grace=self._stop_grace)
        if self._running.get(name) is processes:
            del self._running[name]
            os.close(processes.credential_fd)

    async def remove(self, name: str, owner: str) -> None:
        """Stop a deleted workspace's processes; its owner's network goes with their last."""
        await self.stop(name)
        await self._networks.leave(owner, name)
