"""The operator process: health server, leader election, then Kopf and the lifecycle loops.

The leader reconciles on the lifecycle engine the local runtime runs too (`kuberde.engine`):
Kopf's watch events, the resync sweep and retries kick it, and the TTL enforcer's scale-downs
hold the agent through it, so nothing interleaves on one agent.

A standby replica serves its health endpoints and waits for the Lease; only the leader starts
watching and acting. Losing the Lease stops everything and `run()` raises `LeadershipLost`, so
the process exits and Kubernetes restarts it as a standby: a replica that is unsure whether it
still leads must not act.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import kopf
from kubernetes_asyncio import client as k8s_client

from kuberde import __version__
from kuberde.aio import Kick
from kuberde.auth import SigningKey
from kuberde.engine import Engine
from kuberde.kube import ApiError, KubeApi, Paths, connection_info, load_configuration
from kuberde.operator.builder import BuilderSettings
from kuberde.operator.credentials import AgentCredentials, ManagementToken, load_signing_key
from kuberde.operator.events import EventRecorder
from kuberde.operator.handlers import build_registry, kopf_settings
from kuberde.operator.health import HealthServer, Readiness
from kuberde.operator.leader import LeaderElector, LeadershipLost
from kuberde.operator.lifecycle import ActivityView, StatusUpdater, TTLEnforcer
from kuberde.operator.metrics import OperatorMetrics
from kuberde.operator.monitor import GatewayMonitor
from kuberde.operator.reconciler import Reconciler
from kuberde.operator.settings import OperatorSettings
from kuberde.operator.store import AgentStore, name_of

__all__ = ["LeadershipLost", "Operator", "run_operator"]

log = logging.getLogger(__name__)

_READY_PROBE_CACHE = 2.0
_KOPF_STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class _Leading:
    """What the leader keeps per agent while it acts."""

    engine: Engine
    reconciler: Reconciler
    enforcer: TTLEnforcer


class Operator:
    """One operator replica: `run()` until `stop()`; `health_url` is set once it serves."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self.metrics = OperatorMetrics()
        self.paths = Paths(settings.namespace)
        self.store = AgentStore()
        self._stop = asyncio.Event()
        self._kopf_ready = asyncio.Event()
        self._api: KubeApi | None = None
        self._leading = False
        self._acting: _Leading | None = None
        self._probe: tuple[float, Readiness] | None = None
        self._health = HealthServer(
            listen=settings.health_listen, metrics=self.metrics, readiness=self._readiness
        )

    @property
    def health_url(self) -> str:
        return self._health.url

    @property
    def leading(self) -> bool:
        return self._leading

    def stop(self) -> None:
        self._stop.set()

    def remembers(self, name: str) -> list[str]:
        """The parts that still keep something about RDEAgent `name` (none once it is gone)."""
        parts = {"store": self.store.get(name) is not None}
        acting = self._acting
        if acting is not None:
            parts |= {
                "engine": acting.engine.remembers(name),
                "reconciler": acting.reconciler.remembers(name),
                "TTL enforcer": acting.enforcer.remembers(name),
            }
        return [part for part, keeps in parts.items() if keeps]

    async def _readiness(self) -> Readiness:
        if self._api is None:
            return Readiness(False, "starting")
        if self._leading and not self._kopf_ready.is_set():
            return Readiness(False, "watches are starting")
        now = time.monotonic()
        if self._probe is None or now - self._probe[0] > _READY_PROBE_CACHE:
            try:
                await self._api.list(self.paths.agents, limit=1)
            except ApiError as exc:
                self._probe = (now, Readiness(False, f"Kubernetes API: {exc}"))
            else:
                role = "leading" if self._leading else "standing by for the Lease"
                self._probe = (now, Readiness(True, role))
        return self._probe[1]

    async def run(self) -> None:
        settings = self.settings
        key = load_signing_key(settings.signing_key_file, settings.state_dir)
        configuration = await load_configuration(settings.kubeconfig)
        api = KubeApi.connect(
            configuration,
            timeout=settings.api_timeout,
            api_writes=self.metrics.api_writes,
            user_agent=f"kuberde-operator/{__version__} ({settings.identity})",
        )
        self._api = api
        elector: LeaderElector | None = None
        try:
            await self._health.start()
            log.info(
                "KubeRDE operator %s: namespace %s, gateway %s, health %s",
                settings.identity,
                settings.namespace,
                settings.server_api,
                self._health.url,
            )
            if settings.leader_election:
                elector = LeaderElector(
                    api,
                    self.paths,
                    name=settings.lease_name,
                    identity=settings.identity,
                    lease_duration=settings.lease_duration,
                    renew_deadline=settings.lease_renew_deadline,
                    retry_period=settings.lease_retry_period,
                    metrics=self.metrics,
                )
                if not await self._unless_stopped(elector.acquire()):
                    return
            else:
                self.metrics.leader.set(1)
            self._leading = True
            await self._act(api, configuration, key, elector)
        finally:
            self._leading = False
            self.metrics.leader.set(0)
            if elector is not None:
                try:
                    await elector.release()
                except ApiError as exc:
                    log.warning("could not release the Lease: %s", exc)
            await self._health.stop()
            await api.close()

    async def _unless_stopped(self, work: Coroutine[Any, Any, None]) -> bool:
        """Await `work` unless `stop()` comes first; True if it finished, False if stopped."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.cancelled():
            return False
        task.result()
        return True

    async def _act(
        self,
        api: KubeApi,
        configuration: k8s_client.Configuration,
        key: SigningKey,
        elector: LeaderElector | None,
    ) -> None:
        """Watch and reconcile until stopped; the leader's whole job."""
        settings = self.settings
        events = EventRecorder(api, self.paths, instance=settings.identity)
        status_wanted = Kick()
        ttl_wanted = Kick()

        def changed() -> None:
            status_wanted.set()
            ttl_wanted.set()

        monitor = GatewayMonitor(
            server_api=settings.server_api,
            token=ManagementToken(
                token=settings.mgmt_token, token_file=settings.mgmt_token_file, key=key
            ),
            timeout=settings.monitor_timeout,
            metrics=self.metrics,
            # An agent that connects, goes, or gets or loses its last session: its status now.
            on_change=changed,
        )
        activity = ActivityView(monitor, timedelta(seconds=settings.max_activity_age))

        reconciler = Reconciler(
            api=api,
            paths=self.paths,
            store=self.store,
            events=events,
            credentials=AgentCredentials(key),
            builder=BuilderSettings(
                gateway_url=settings.gateway_url_for_agents, agent_image=settings.agent_image
            ),
            metrics=self.metrics,
            on_change=changed,
        )
        status = StatusUpdater(
            api=api,
            paths=self.paths,
            store=self.store,
            reconciler=reconciler,
            activity=activity,
            metrics=self.metrics,
            wake=status_wanted,
        )
        engine = Engine(
            reconciler.reconcile,
            lambda: [name_of(body) for body in self.store.bodies()],
            interval=settings.resync_interval,
            concurrency=settings.workers,
        )
        enforcer = TTLEnforcer(
            store=self.store,
            reconciler=reconciler,
            exclusive=engine.exclusive,
            activity=activity,
            events=events,
            metrics=self.metrics,
            rescheduled=ttl_wanted,
        )
        self._acting = _Leading(engine, reconciler, enforcer)

        async def login() -> kopf.ConnectionInfo:
            return await connection_info(configuration)

        loops = {
            asyncio.create_task(engine.run(), name="engine"): "lifecycle engine",
            asyncio.create_task(monitor.run(settings.monitor_interval), name="monitor"): "monitor",
            asyncio.create_task(monitor.watch(settings.watch_heartbeat), name="watch"): "watch",
            asyncio.create_task(enforcer.run(settings.ttl_interval), name="ttl"): "TTL enforcer",
            asyncio.create_task(status.run(settings.status_interval), name="status"): "status",
            asyncio.create_task(self._stop.wait(), name="stop"): "stop",
        }
        lease = asyncio.create_task(elector.hold(), name="lease") if elector else None
        if lease is not None:
            loops[lease] = "lease"
        kopf_stop = asyncio.Event()
        # Kopf starts last: on exit it cancels every task created after it started.
        watches = asyncio.create_task(
            kopf.operator(
                registry=build_registry(store=self.store, kick=engine.kick, login=login),
                settings=kopf_settings(
                    watch_inactivity_timeout=settings.watch_inactivity_timeout,
                    api_timeout=settings.api_timeout,
                ),
                namespaces=[settings.namespace],
                standalone=True,
                stop_flag=kopf_stop,
                ready_flag=self._kopf_ready,
            ),
            name="kopf",
        )
        loops[watches] = "Kopf"
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            first = done.pop()
            error = None if first.cancelled() else first.exception()
            if isinstance(error, LeadershipLost):
                log.error("%s; stopping so that another replica can act", error)
                raise error
            if error is not None:
                log.error("operator component %s failed: %r", loops[first], error)
                raise error
            if loops[first] != "stop":
                log.info("%s stopped; the operator stops too", loops[first])
        finally:
            self._leading = False
            others = [task for task in loops if task is not watches and task is not lease]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            await engine.close(cancel=True)
            self._acting = None
            # The health server's connections would look like Kopf's own leftover tasks.
            await self._health.stop()
            kopf_stop.set()
            try:
                async with asyncio.timeout(_KOPF_STOP_TIMEOUT):
                    await asyncio.shield(watches)
            except TimeoutError:
                watches.cancel()
            except Exception as exc:
                log.debug("Kopf stopped with %r", exc)
            if lease is not None:
                lease.cancel()
                await asyncio.gather(lease, return_exceptions=True)
            await monitor.close()
            log.info("operator stopped acting")


async def run_operator(settings: OperatorSettings, *, stop: asyncio.Event | None = None) -> None:
    """Run one replica until `stop` is set; raises `LeadershipLost` if the Lease is lost."""
    operator = Operator(settings)
    watcher = asyncio.ensure_future(stop.wait()) if stop is not None else None
    if watcher is not None:
        watcher.add_done_callback(lambda _: operator.stop())
    try:
        await operator.run()
    finally:
        if watcher is not None:
            watcher.cancel()
