"""The emulated Kubernetes API (KMock) as the tests use it, and test peers for it.

- `Kube`: the emulated API server (`kuberde.testing.kube.ApiServer`: KMock plus what a real
  API server does itself) as a test sees it: kubectl-like calls over HTTP, direct reads of
  the store, and the log of who requested what. The operator talks to it over HTTP.
- `Kubelet`: plays the kubelet for agent Deployments: a Running pod while replicas is 1, gone
  at 0, and optionally the real agent (`kuberde.agent`) dialling a real gateway with the
  credential from the operator's Secret.
- `OperatorThread`: the real operator in its own thread and event loop, as a pod would run it
  (Kopf cancels every task of its loop that it did not start, so it cannot share the test's).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiohttp
import kmock

from kuberde.agent.client import run_agent
from kuberde.agent.config import from_env
from kuberde.auth import SIGNING_KEY_FILE
from kuberde.backoff import Backoff
from kuberde.operator.main import Operator
from kuberde.operator.settings import OperatorSettings
from kuberde.testing.cluster import kubectl_path
from kuberde.testing.kube import (
    RDEAGENTS,
    WRITE_METHODS,
    ApiCall,
    ApiServer,
    emulator,
    running_pod,
    write_kubeconfig,
)
from tests.integration.conftest import RunningGateway

NAMESPACE = "kuberde"
DEPLOYMENTS = "apps/v1/deployments"
SECRETS = "v1/secrets"
PVCS = "v1/persistentvolumeclaims"
PODS = "v1/pods"
EVENTS = "v1/events"
LEASES = "coordination.k8s.io/v1/leases"
#: Upper bound for any single wait; a healthy run needs a small fraction of it.
WAIT = 20.0

T = TypeVar("T")


@dataclass
class Kube:
    """The emulated API server as a test sees it: kubectl-like calls, reads, the request log."""

    server: ApiServer
    url: str
    kubeconfig: Path
    http: aiohttp.ClientSession

    # ---- kubectl-like calls, over HTTP --------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        async with asyncio.timeout(WAIT), self.http.request(method, path, **kwargs) as response:
            text = await response.text()
            assert response.status < 300, (method, path, response.status, text)
            result: dict[str, Any] = json.loads(text)
            return result

    async def create_agent(
        self, name: str, spec: dict[str, Any], *, annotations: dict[str, str] | None = None
    ) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
        if annotations:
            metadata["annotations"] = annotations
        body = {
            "apiVersion": "kuberde.io/v1",
            "kind": "RDEAgent",
            "metadata": metadata,
            "spec": spec,
        }
        return await self._request(
            "POST", f"/apis/kuberde.io/v1/namespaces/{NAMESPACE}/rdeagents", json=body
        )

    async def patch_agent(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self._request(
            "PATCH",
            f"/apis/kuberde.io/v1/namespaces/{NAMESPACE}/rdeagents/{name}",
            data=json.dumps(patch),
            headers={"Content-Type": "application/merge-patch+json"},
        )

    async def request_wake(self, name: str, at: datetime | None = None) -> str:
        """Write the wake annotation, as the gateway does when a user connects."""
        stamp = (at or datetime.now(UTC)).isoformat()
        await self.patch_agent(
            name, {"metadata": {"annotations": {"kuberde.io/wake-requested-at": stamp}}}
        )
        return stamp

    async def delete_agent(self, name: str) -> None:
        await self._request(
            "DELETE", f"/apis/kuberde.io/v1/namespaces/{NAMESPACE}/rdeagents/{name}"
        )

    async def delete_pvc(self, name: str) -> None:
        await self._request(
            "DELETE", f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims/{name}"
        )

    # ---- direct reads of the stored state ------------------------------------------------

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        stored = self.server.find(resource, NAMESPACE, name)
        return None if stored is None else stored.raw

    def all(self, resource: str) -> list[dict[str, Any]]:
        return [stored.raw for stored in self.server.find_all(resource, NAMESPACE)]

    def agent(self, name: str) -> dict[str, Any] | None:
        return self.get(RDEAGENTS, name)

    def status(self, name: str) -> dict[str, Any]:
        return dict((self.agent(name) or {}).get("status") or {})

    def deployment(self, agent_id: str) -> dict[str, Any] | None:
        return self.get(DEPLOYMENTS, agent_id)

    def replicas(self, agent_id: str) -> int | None:
        deployment = self.deployment(agent_id)
        return None if deployment is None else int(deployment["spec"]["replicas"])

    def events(self, name: str, reason: str | None = None) -> list[dict[str, Any]]:
        return [
            event
            for event in self.all(EVENTS)
            if event.get("involvedObject", {}).get("name") == name
            and (reason is None or event.get("reason") == reason)
        ]

    def update_stored(
        self, resource: str, name: str, change: Callable[[dict[str, Any]], None]
    ) -> None:
        """Edit a stored object in place, as the API server's own defaulting would."""
        stored = self.server.find(resource, NAMESPACE, name)
        if stored is None:
            raise AssertionError(f"no {resource} {name}")
        raw = stored.raw
        change(raw)
        stored.patch(raw)

    # ---- the request log -------------------------------------------------------------------

    def requests(self) -> list[ApiCall]:
        return list(self.server.calls)

    def mark(self) -> int:
        return len(self.server.calls)


async def kubectl(kube: Kube, *args: str) -> str:
    """The real `kubectl ARGS…` against the emulated API server: its stdout, or fail loudly."""
    path = kubectl_path()
    assert path is not None, "kubectl is missing: scripts/system-deps.sh --tests installs it"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(kube.kubeconfig.parent),
        "KUBECONFIG": str(kube.kubeconfig),
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [path, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 0, f"kubectl {' '.join(args)} failed: {done.stderr}"
    return done.stdout


def requests_by(kube: Kube, identity: str, since: int = 0) -> list[str]:
    """`METHOD path` of every request the operator replica `identity` sent after `since`."""
    return [
        call.line for call in kube.requests()[since:] if call.user_agent.endswith(f"({identity})")
    ]


@contextlib.asynccontextmanager
async def running_kube(tmp_path: Path) -> AsyncIterator[Kube]:
    server = emulator()
    async with server, kmock.Server(server) as http_server:
        url = str(http_server.url).rstrip("/")
        kubeconfig = tmp_path / "kubeconfig"
        write_kubeconfig(kubeconfig, url, NAMESPACE)
        async with aiohttp.ClientSession(base_url=url) as http:
            yield Kube(server, url, kubeconfig, http)


async def eventually(
    probe: Callable[[], T | Literal[False] | None], what: str, within: float = WAIT
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `within`."""

    async def poll() -> T:
        while True:
            value = probe()
            if value:
                return value
            await asyncio.sleep(0.05)

    try:
        return await asyncio.wait_for(poll(), within)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def eventually_async(
    probe: Callable[[], Awaitable[bool]], what: str, within: float = WAIT
) -> None:
    """Like `eventually`, for a probe that must await (an HTTP request)."""

    async def poll() -> None:
        while True:
            if await probe():
                return
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), within)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def status_in(kube: Kube, name: str, phase: str) -> dict[str, Any] | None:
    """The RDEAgent's status if it is in `phase`, else None (for `eventually`)."""
    status = kube.status(name)
    return status if status.get("phase") == phase else None


# ---- the operator, in its own thread ---------------------------------------------------------


def fast_settings(kube: Kube, **overrides: Any) -> OperatorSettings:
    """Production behaviour with intervals of a fraction of a second.

    The gateway defaults to a loopback port nothing listens on (refused at once), never the
    cluster name `frp-server.kuberde.svc`: tests stay on loopback and resolve no names.
    """
    values: dict[str, Any] = {
        "namespace": NAMESPACE,
        "kubeconfig": kube.kubeconfig,
        "server_api": f"http://127.0.0.1:{free_port()}",
        "monitor_interval": 0.2,
        "monitor_timeout": 2.0,
        # Generous, so a loaded test machine does not make activity data look stale.
        "activity_max_age": 5.0,
        "ttl_interval": 0.2,
        "status_interval": 0.2,
        "resync_interval": 0.5,
        "watch_inactivity_timeout": 2.0,
        "api_timeout": 5.0,
        "health_listen": "127.0.0.1:0",
        "lease_duration": 3,
        "lease_renew_deadline": 2.0,
        "lease_retry_period": 0.2,
    }
    values.update(overrides)
    return OperatorSettings(**values)


class OperatorThread:
    """The real operator, run like a process: own thread, own event loop, stopped by a flag."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self.error: BaseException | None = None
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.operator: Operator | None = None
        # A daemon: an operator that does not stop fails its test, not the whole run (its
        # Kopf watchers would otherwise retry a gone API server and keep pytest alive).
        self._thread = threading.Thread(
            target=self._main, name=f"operator-{settings.identity}", daemon=True
        )

    @property
    def identity(self) -> str:
        return self.settings.identity

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.operator = Operator(self.settings)
        self._started.set()
        try:
            await self.operator.run()
        except BaseException as exc:
            self.error = exc

    async def start(self) -> OperatorThread:
        self._thread.start()
        await asyncio.to_thread(self._started.wait, WAIT)
        await eventually(lambda: self.health_url, "the operator's health server")
        return self

    @property
    def health_url(self) -> str:
        return self.operator.health_url if self.operator is not None else ""

    @property
    def leading(self) -> bool:
        return self.operator is not None and self.operator.leading

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        assert self.operator is not None
        value = self.operator.metrics.registry.get_sample_value(name, labels or {})
        return float(value or 0.0)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    async def stop(self) -> None:
        if self._loop is not None and self.operator is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.operator.stop)
        await asyncio.to_thread(self._thread.join, WAIT)
        assert not self._thread.is_alive(), f"the operator did not stop:\n{self._tasks()}"

    def _tasks(self) -> str:
        """Where each of the operator's tasks waits: what a stuck stop is stuck on."""
        if self._loop is None:
            return "(no loop)"
        shown = io.StringIO()
        for task in list(asyncio.all_tasks(self._loop)):
            task.print_stack(limit=6, file=shown)
        return shown.getvalue()


@contextlib.asynccontextmanager
async def operator_running(settings: OperatorSettings) -> AsyncIterator[OperatorThread]:
    runner = await OperatorThread(settings).start()
    try:
        yield runner
    finally:
        await runner.stop()
    if runner.error is not None:
        raise AssertionError(f"the operator failed: {runner.error!r}") from runner.error


async def reconciles_after(runner: OperatorThread, count: float) -> float:
    """Wait until the operator finished `count` more reconciles than it has now."""
    start = runner.metric("kuberde_operator_reconciles_total", {"result": "ok"})
    return await eventually(
        lambda: (
            runner.metric("kuberde_operator_reconciles_total", {"result": "ok"}) >= start + count
        ),
        f"{count} more reconciles",
    )


# ---- the kubelet ------------------------------------------------------------------------------


@dataclass
class _Pod:
    name: str
    stop: asyncio.Event | None = None
    task: asyncio.Task[int] | None = None


@dataclass
class Kubelet:
    """Runs what agent Deployments ask for: a Running pod per replica, and the real agent.

    With `run_agents`, each pod runs `kuberde.agent` with the Deployment's environment and the
    credential from its Secret (mounted as a file, as in a pod); `port_map` maps the workspace
    ports to local servers, as the agent's PORT_MAP does for the local runtime.
    """

    kube: Kube
    work_dir: Path
    run_agents: bool = False
    port_map: dict[int, int] = field(default_factory=dict)
    pods: dict[str, _Pod] = field(default_factory=dict)
    agent_codes: list[int] = field(default_factory=list)
    #: What the workloads wrote on their persistent volumes: PVC uid → {path in it: text}.
    #: Keyed by the claim's uid, so a claim deleted and made again is empty, like a new volume.
    disks: dict[str, dict[str, str]] = field(default_factory=dict)

    def _volume_at(self, agent_id: str, path: str) -> tuple[dict[str, str], str]:
        """The disk behind `path` in the workload container of the agent's running pod."""
        pod = self.pods.get(agent_id)
        stored = self.kube.get(PODS, pod.name) if pod is not None else None
        if stored is None:
            raise AssertionError(f"{agent_id} has no running pod")
        spec = stored["spec"]
        claims = {
            volume["name"]: volume["persistentVolumeClaim"]["claimName"]
            for volume in spec.get("volumes", [])
            if "persistentVolumeClaim" in volume
        }
        workload = next(c for c in spec["containers"] if c["name"] == "workload")
        for mount in workload.get("volumeMounts", []):
            root = mount["mountPath"].rstrip("/") + "/"
            if path.startswith(root) and mount["name"] in claims:
                claim = self.kube.get(PVCS, claims[mount["name"]])
                if claim is None:
                    raise AssertionError(f"the pod of {agent_id} mounts a claim that is gone")
                return self.disks.setdefault(claim["metadata"]["uid"], {}), path[len(root) :]
        raise AssertionError(f"{path} is on no persistent volume of {agent_id}: it would be lost")

    def write_file(self, agent_id: str, path: str, text: str) -> None:
        """What the workload writes at `path` (absolute, in its container)."""
        disk, relative = self._volume_at(agent_id, path)
        disk[relative] = text

    def read_file(self, agent_id: str, path: str) -> str | None:
        disk, relative = self._volume_at(agent_id, path)
        return disk.get(relative)

    def _deployments(self) -> Iterator[dict[str, Any]]:
        for deployment in self.kube.all(DEPLOYMENTS):
            labels = deployment.get("metadata", {}).get("labels") or {}
            if labels.get("app.kubernetes.io/managed-by") == "kuberde-operator":
                yield deployment

    def _start_agent(self, deployment: dict[str, Any], pod: _Pod) -> None:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {item["name"]: item["value"] for item in container["env"]}
        secret_name = deployment["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"]
        secret = self.kube.get(SECRETS, secret_name)
        assert secret is not None, f"Deployment {deployment['metadata']['name']} has no Secret"
        token_file = self.work_dir / f"{pod.name}.token"
        token_file.write_bytes(base64.b64decode(secret["data"]["token"]))
        env["AGENT_TOKEN_FILE"] = str(token_file)
        if self.port_map:
            env["PORT_MAP"] = ",".join(f"{a}={b}" for a, b in self.port_map.items())
        pod.stop = asyncio.Event()
        pod.task = asyncio.create_task(
            run_agent(from_env(env), stop=pod.stop, backoff=Backoff(base=0.05, cap=0.5)),
            name=f"agent-{pod.name}",
        )

    def start_agent(self, agent_id: str) -> None:
        """The agent of a Running pod that runs none comes up now (it was slow to start)."""
        pod = self.pods[agent_id]
        deployment = self.kube.deployment(agent_id)
        assert pod.task is None and deployment is not None, f"{agent_id} runs an agent already"
        self._start_agent(deployment, pod)

    async def kill_agent(self, agent_id: str) -> None:
        """The agent process dies while its pod stays Running (its link just drops)."""
        pod = self.pods[agent_id]
        assert pod.task is not None, f"{agent_id} runs no agent"
        pod.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(pod.task, WAIT)
        pod.stop = pod.task = None

    async def _stop_agent(self, pod: _Pod) -> None:
        if pod.stop is not None and pod.task is not None:
            pod.stop.set()
            self.agent_codes.append(await asyncio.wait_for(pod.task, WAIT))

    async def sync(self) -> None:
        deployments = list(self._deployments())
        present = {deployment["metadata"]["name"] for deployment in deployments}
        for name in [name for name in self.pods if name not in present]:
            await self._remove(name)
        for deployment in deployments:
            name = deployment["metadata"]["name"]
            wanted = int(deployment["spec"].get("replicas", 1)) > 0
            pod = self.pods.get(name)
            if wanted and pod is None:
                digest = hashlib.sha256(
                    json.dumps(deployment["spec"]["template"], sort_keys=True).encode()
                ).hexdigest()
                pod = _Pod(f"{name}-{digest[:10]}-{uuid.uuid4().hex[:5]}")
                self.kube.server.objects[PODS, NAMESPACE, pod.name] = running_pod(
                    deployment, pod.name, NAMESPACE
                )
                self.pods[name] = pod
                if self.run_agents:
                    self._start_agent(deployment, pod)
            elif not wanted and pod is not None:
                await self._remove(name)

    async def _remove(self, name: str) -> None:
        """Stop the pod of Deployment `name` (scaled to zero, or deleted)."""
        pod = self.pods.pop(name)
        self.kube.server.objects[PODS, NAMESPACE, pod.name].delete()
        await self._stop_agent(pod)

    async def run(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for pod in list(self.pods.values()):
            await self._stop_agent(pod)
        self.pods.clear()


@contextlib.asynccontextmanager
async def kubelet_running(
    kube: Kube, work_dir: Path, *, run_agents: bool = False, port_map: dict[int, int] | None = None
) -> AsyncIterator[Kubelet]:
    kubelet = Kubelet(kube, work_dir, run_agents=run_agents, port_map=dict(port_map or {}))
    task = asyncio.create_task(kubelet.run(), name="kubelet")
    try:
        yield kubelet
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await kubelet.close()


def server_defaults(deployment: dict[str, Any]) -> None:
    """Fill in what a real API server adds to a Deployment we did not send (in place)."""
    spec = deployment["spec"]
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    spec["strategy"] = {"type": spec.get("strategy", {}).get("type", "RollingUpdate")}
    template = spec["template"]
    template["metadata"].setdefault("annotations", {})
    template["metadata"].setdefault("creationTimestamp", None)
    pod = template["spec"]
    pod.setdefault("dnsPolicy", "ClusterFirst")
    pod.setdefault("restartPolicy", "Always")
    pod.setdefault("schedulerName", "default-scheduler")
    pod.setdefault("securityContext", {})
    pod.setdefault("terminationGracePeriodSeconds", 30)
    for container in pod["containers"]:
        container.setdefault("imagePullPolicy", "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
        for port in container.get("ports", []):
            port.setdefault("protocol", "TCP")
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            volume["secret"].setdefault("defaultMode", 420)
    deployment.setdefault("status", {"observedGeneration": 1, "replicas": spec.get("replicas", 1)})


def free_port() -> int:
    """A loopback port nothing listens on (for an unreachable gateway)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def echo_server() -> tuple[asyncio.Server, int]:
    """A local TCP service for the agent to forward to (banner, then echo)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-workspace\r\n")
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


def writes_of(requests: list[str], *, leases: bool = False) -> list[str]:
    """The writes among `METHOD path` lines; Lease renewals only on request."""
    return [
        line
        for line in requests
        if line.split(" ", 1)[0] in WRITE_METHODS and (leases or "/leases" not in line)
    ]


async def loops_after(runner: OperatorThread, loop: str, count: float) -> float:
    """Wait until the operator's `loop` (monitor, ttl, status) ran `count` more cycles."""
    name = "kuberde_operator_loop_duration_seconds_count"
    start = runner.metric(name, {"loop": loop})
    return await eventually(
        lambda: runner.metric(name, {"loop": loop}) >= start + count, f"{count} {loop} cycles"
    )


def key_file_of(gateway: RunningGateway) -> Path:
    """The gateway's signing key, which the operator shares (a mounted Secret in a cluster)."""
    return gateway.state_dir / SIGNING_KEY_FILE


def workspace_spec(ttl: str, owner: str = "testuser") -> dict[str, Any]:
    """An RDEAgent spec like the runbook's `ssh-server`, forwarding to 127.0.0.1:2222."""
    return {
        "owner": owner,
        "ttl": ttl,
        "localTarget": "127.0.0.1:2222",
        "workload": {"image": "lscr.io/linuxserver/openssh-server:latest"},
    }
