"""A kubelet and Deployment controller for the emulated API server, running real processes.

For every Deployment in its namespace it keeps one ReplicaSet per pod template
(`{deployment}-{pod-template-hash}`, with revisions: `kuberde.testing.rollout`) and
`spec.replicas` pods of the current one, named `{deployment}-{pod-template-hash}-{suffix}`,
the hash stable while the template is (a new template rolls the pods). Each container
whose command is `kuberde …` runs as a real process (`python -m kuberde …`) with the pod's
environment; its output is the pod's log (`kubectl logs`), a crash restarts it (`RESTARTS`,
`--previous`), deleting the pod stops it and the controller starts a replacement. Other
containers (workload images) count as running without a process.

In-cluster addresses are mapped to loopback: each Deployment's container ports get a free
local port (stable across its pods), `0.0.0.0:PORT` in a command and `SERVICE.NS.svc:PORT`
in the environment point at it, Secret and emptyDir volumes become directories, and every
process gets the emulator's kubeconfig as a pod gets its service account.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kuberde.testing import metrics, rollout
from kuberde.testing.kube import ApiServer, ContainerLog, now_rfc3339

__all__ = ["ContainerExtras", "Kubelet", "pod_template_hash"]

DEPLOYMENTS = "apps/v1/deployments"
REPLICASETS = "apps/v1/replicasets"
PODS = "v1/pods"
SECRETS = "v1/secrets"
SERVICES = "v1/services"
EVENTS = "v1/events"
#: Kubernetes' alphabet for generated names (no vowels, no look-alike characters).
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_STOP_GRACE = 10.0


def pod_template_hash(template: Mapping[str, Any]) -> str:
    """A stable 10-character hash of a pod template, in Kubernetes' alphabet.

    Empty and null fields do not count: a template that went through a typed client (the one
    `kubectl rollout undo` sends back) is the same template, as after a real server's defaulting.
    """
    digest = hashlib.sha256(json.dumps(_without_empty(template), sort_keys=True).encode()).digest()
    return "".join(_ALPHABET[byte % len(_ALPHABET)] for byte in digest[:10])


def _without_empty(value: Any) -> Any:
    if isinstance(value, Mapping):
        kept = {key: _without_empty(item) for key, item in value.items()}
        return {key: item for key, item in kept.items() if item not in (None, {}, [])}
    if isinstance(value, list):
        return [_without_empty(item) for item in value]
    return value


def _suffix() -> str:
    return "".join(_ALPHABET[byte % len(_ALPHABET)] for byte in uuid.uuid4().bytes[:5])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass(frozen=True)
class ContainerExtras:
    """What a test adds to a container it runs: arguments and environment.

    `{port:N}` in a value is the local port of the Deployment's container port N; service
    addresses in them are kept as written.
    """

    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


Extras = Callable[[Mapping[str, Any], Mapping[str, Any]], ContainerExtras]


def _no_extras(_: Mapping[str, Any], __: Mapping[str, Any]) -> ContainerExtras:
    return ContainerExtras()


@dataclass
class _Container:
    name: str
    argv: list[str] | None
    env: dict[str, str]
    restarts: int = 0
    ready: bool = False
    process: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    probe: tuple[str, int] | None = None
    #: When the current instance started (a pod status keeps it until the next restart).
    started_at: str | None = None


@dataclass
class _Pod:
    name: str
    deployment: str
    template_hash: str
    directory: Path
    containers: list[_Container] = field(default_factory=list)
    stopping: bool = False


class Kubelet:
    """Runs the pods of every Deployment in `namespace` (see the module docstring)."""

    def __init__(
        self,
        server: ApiServer,
        namespace: str,
        work_dir: Path,
        kubeconfig: Path,
        *,
        extras: Extras = _no_extras,
        interval: float = 0.1,
    ) -> None:
        self.server = server
        self.namespace = namespace
        self.work_dir = work_dir
        self.kubeconfig = kubeconfig
        self.extras = extras
        self.interval = interval
        self.pods: dict[str, _Pod] = {}
        self._ports: dict[tuple[str, int], int] = {}
        self._http: aiohttp.ClientSession | None = None
        server.runtimes.append(self)

    # ---- addresses -----------------------------------------------------------------------

    def local_port(self, deployment: str, container_port: int) -> int:
        """The loopback port standing for `container_port` of `deployment`'s pods."""
        key = (deployment, container_port)
        if key not in self._ports:
            self._ports[key] = _free_port()
        return self._ports[key]

    def _service_port(self, service: str, port: int) -> int | None:
        stored = self.server.find(SERVICES, self.namespace, service)
        if stored is None:
            return None
        spec = stored.raw.get("spec") or {}
        selector = spec.get("selector") or {}
        target: int | str = port
        for item in spec.get("ports") or []:
            if int(item.get("port", 0)) == port:
                target = item.get("targetPort", port)
        for deployment in self._deployments():
            template = deployment["spec"]["template"]
            labels = template["metadata"].get("labels") or {}
            if not selector or any(labels.get(key) != value for key, value in selector.items()):
                continue
            for container in template["spec"]["containers"]:
                for item in container.get("ports") or []:
                    if target in (item.get("name"), item.get("containerPort")):
                        return self.local_port(
                            deployment["metadata"]["name"], item["containerPort"]
                        )
        return None

    def _rewrite(self, value: str, deployment: str, mounts: Mapping[str, Path]) -> str:
        def service(found: re.Match[str]) -> str:
            port = self._service_port(found.group(1), int(found.group(3)))
            return found.group(0) if port is None else f"127.0.0.1:{port}"

        value = re.sub(
            r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?:(\d+)", service, value
        )
        return self._local(value, deployment, mounts)

    def _local(self, value: str, deployment: str, mounts: Mapping[str, Path]) -> str:
        """Ports and mount paths of the pod itself as their local stand-ins."""
        value = re.sub(
            r"0\.0\.0\.0:(\d+)",
            lambda found: f"127.0.0.1:{self.local_port(deployment, int(found.group(1)))}",
            value,
        )
        value = re.sub(
            r"\{port:(\d+)\}",
            lambda found: str(self.local_port(deployment, int(found.group(1)))),
            value,
        )
        for mount_path, directory in sorted(mounts.items(), key=lambda item: -len(item[0])):
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                return str(directory) + value[len(mount_path.rstrip("/")) :]
        return value

    # ---- events ---------------------------------------------------------------------------

    async def _event(
        self, involved: Mapping[str, Any], reason: str, message: str, component: str
    ) -> None:
        """An Event as the kubelet, scheduler or Deployment controller records it."""
        metadata = involved["metadata"]
        now = now_rfc3339()
        await self.server.store(
            EVENTS,
            self.namespace,
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {
                    "name": f"{metadata['name']}.{uuid.uuid4().hex[:16]}",
                    "namespace": self.namespace,
                },
                "involvedObject": {
                    "apiVersion": involved.get("apiVersion", "v1"),
                    "kind": involved.get("kind", ""),
                    "name": metadata["name"],
                    "namespace": self.namespace,
                    "uid": metadata.get("uid", ""),
                },
                "type": "Normal",
                "reason": reason,
                "message": message,
                "source": {"component": component},
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            },
        )

    # ---- pods ---------------------------------------------------------------------------

    def _deployments(self) -> list[dict[str, Any]]:
        return [stored.raw for stored in self.server.find_all(DEPLOYMENTS, self.namespace)]

    def _volumes(self, template: Mapping[str, Any], directory: Path) -> dict[str, Path] | None:
        """Each volume as a local directory; None while a Secret it needs does not exist."""
        volumes: dict[str, Path] = {}
        for volume in template["spec"].get("volumes") or []:
            path = directory / "volumes" / volume["name"]
            path.mkdir(parents=True, exist_ok=True)
            if "secret" in volume:
                secret = self.server.find(SECRETS, self.namespace, volume["secret"]["secretName"])
                if secret is None:
                    return None
                for key, data in (secret.raw.get("data") or {}).items():
                    (path / key).write_bytes(base64.b64decode(data))
            volumes[volume["name"]] = path
        return volumes

    def _container(
        self, deployment: Mapping[str, Any], spec: Mapping[str, Any], volumes: Mapping[str, Path]
    ) -> _Container:
        name = deployment["metadata"]["name"]
        mounts = {
            mount["mountPath"]: volumes[mount["name"]]
            for mount in spec.get("volumeMounts") or []
            if mount["name"] in volumes
        }
        extras = self.extras(deployment, spec)
        env = {
            item["name"]: self._rewrite(str(item.get("value", "")), name, mounts)
            for item in spec.get("env") or []
        }
        # A test's additions keep service addresses as written (they may be meant for others).
        env.update({key: self._local(value, name, mounts) for key, value in extras.env.items()})
        command = [*spec.get("command", []), *spec.get("args", []), *extras.args]
        argv = None
        if command[:1] == ["kuberde"]:
            argv = [sys.executable, "-m", "kuberde"] + [
                self._rewrite(arg, name, mounts) for arg in command[1:]
            ]
        probe = None
        http_get = (spec.get("readinessProbe") or {}).get("httpGet")
        if http_get and argv is not None:
            port = http_get["port"]
            for item in spec.get("ports") or []:
                if port in (item.get("name"), item.get("containerPort")):
                    probe = (str(http_get["path"]), self.local_port(name, item["containerPort"]))
        return _Container(spec["name"], argv, env, probe=probe)

    async def _start_pod(
        self, deployment: Mapping[str, Any], template_hash: str, owner: Mapping[str, Any]
    ) -> None:
        name = deployment["metadata"]["name"]
        pod_name = f"{name}-{template_hash}-{_suffix()}"
        template = deployment["spec"]["template"]
        directory = self.work_dir / pod_name
        directory.mkdir(parents=True, exist_ok=True)
        volumes = self._volumes(template, directory)
        if volumes is None:
            return
        pod = _Pod(pod_name, name, template_hash, directory)
        pod.containers = [
            self._container(deployment, spec, volumes) for spec in template["spec"]["containers"]
        ]
        labels = {**(template["metadata"].get("labels") or {}), "pod-template-hash": template_hash}
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": self.namespace,
                "labels": labels,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": now_rfc3339(),
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "ReplicaSet",
                        "name": owner["metadata"]["name"],
                        "uid": owner["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {**template["spec"], "nodeName": "emulated-node"},
            "status": {"phase": "Pending"},
        }
        replicas = deployment["spec"].get("replicas", 1)
        await self._event(
            {**deployment, "kind": "Deployment", "apiVersion": "apps/v1"},
            "ScalingReplicaSet",
            f"Scaled up replica set {owner['metadata']['name']} to {replicas}",
            "deployment-controller",
        )
        await self.server.store(PODS, self.namespace, body)
        self.pods[pod_name] = pod
        assigned = f"Successfully assigned {self.namespace}/{pod_name} to emulated-node"
        await self._event(body, "Scheduled", assigned, "default-scheduler")
        for container in pod.containers:
            if container.argv is None:
                container.ready = True
                container.started_at = now_rfc3339()
            else:
                container.task = asyncio.create_task(self._run(pod, container))
        await self._report(pod)

    def _environment(self, pod: _Pod, container: _Container) -> dict[str, str]:
        """What a container's processes see: the pod's environment and service account."""
        return {
            **{key: value for key, value in os.environ.items() if not key.startswith("KUBERDE_")},
            "KUBECONFIG": str(self.kubeconfig),
            "HOME": str(pod.directory),
            "POD_NAME": pod.name,
            "PYTHONUNBUFFERED": "1",
            **container.env,
        }

    def exec_target(
        self, namespace: str, pod_name: str, container_name: str
    ) -> tuple[dict[str, str], Path] | None:
        """Where `kubectl exec` runs in a pod's container: its environment and directory."""
        pod = self.pods.get(pod_name) if namespace == self.namespace else None
        if pod is None or pod.stopping:
            return None
        for container in pod.containers:
            if container.name == container_name:
                return self._environment(pod, container), pod.directory
        return None

    def usage(self, namespace: str, pod_name: str) -> dict[str, metrics.Usage] | None:
        """What each container of a pod uses now (`kubectl top pod`), or None if not here."""
        pod = self.pods.get(pod_name) if namespace == self.namespace else None
        if pod is None:
            return None
        return {
            container.name: (
                metrics.read_usage(container.process.pid)
                if container.process is not None and container.process.returncode is None
                else metrics.NONE
            )
            for container in pod.containers
        }

    async def _run(self, pod: _Pod, container: _Container) -> None:
        """Run the container's process until the pod stops, restarting it when it exits."""
        assert container.argv is not None
        env = self._environment(pod, container)
        while not pod.stopping:
            log: ContainerLog = self.server.logs.start(self.namespace, pod.name, container.name)
            container.process = await asyncio.create_subprocess_exec(
                *container.argv,
                env=env,
                cwd=pod.directory,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
            container.started_at = now_rfc3339()
            await self._report(pod)
            pod_object = self.server.find(PODS, self.namespace, pod.name)
            if pod_object is not None:
                started = f"Started container {container.name}"
                await self._event(pod_object.raw, "Started", started, "kubelet")
            assert container.process.stdout is not None
            while line := await container.process.stdout.readline():
                log.write(line)
            await container.process.wait()
            log.close()
            container.ready = False
            if pod.stopping:
                break
            container.restarts += 1
            await self._report(pod)
            await asyncio.sleep(min(10.0, 0.5 * container.restarts))

    async def _stop_pod(self, pod: _Pod) -> None:
        pod.stopping = True
        pod_object = self.server.find(PODS, self.namespace, pod.name)
        if pod_object is not None:
            for container in pod.containers:
                stopping = f"Stopping container {container.name}"
                await self._event(pod_object.raw, "Killing", stopping, "kubelet")
        for container in pod.containers:
            process = container.process
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), _STOP_GRACE)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
            if container.task is not None:
                await asyncio.wait_for(container.task, _STOP_GRACE)
        self.pods.pop(pod.name, None)
        await self.server.remove(PODS, self.namespace, pod.name)

    async def _probe(self, container: _Container) -> bool:
        if container.probe is None:
            return container.process is not None and container.process.returncode is None
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0))
        path, port = container.probe
        try:
            async with self._http.get(f"http://127.0.0.1:{port}{path}") as response:
                return response.status < 400
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _report(self, pod: _Pod) -> None:
        """Write the pod's status as the kubelet does: phase, ready, restarts."""
        if self.server.find(PODS, self.namespace, pod.name) is None or pod.stopping:
            return
        statuses = []
        for container in pod.containers:
            state = (
                {"running": {"startedAt": container.started_at}}
                if container.started_at is not None
                else {"waiting": {"reason": "ContainerCreating"}}
            )
            statuses.append(
                {
                    "name": container.name,
                    "ready": container.ready,
                    "restartCount": container.restarts,
                    "state": state,
                }
            )
        all_ready = all(container.ready for container in pod.containers)
        status = {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "containerStatuses": statuses,
            "conditions": [{"type": "Ready", "status": "True" if all_ready else "False"}],
        }
        stored = self.server.find(PODS, self.namespace, pod.name)
        if stored is not None and stored.raw.get("status") != status:
            await self.server.patch_stored(PODS, self.namespace, pod.name, {"status": status})

    def _replica_sets(self, deployment: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        stored = [item.raw for item in self.server.find_all(REPLICASETS, self.namespace)]
        return rollout.owned_by(deployment, stored)

    async def _replica_set(
        self, deployment: Mapping[str, Any], template_hash: str, replicas: int
    ) -> Mapping[str, Any]:
        """The ReplicaSet of the Deployment's template, created or made the latest revision
        (`kuberde.testing.rollout`); the Deployment's own revision annotation follows it."""
        name = f"{deployment['metadata']['name']}-{template_hash}"
        owned = self._replica_sets(deployment)
        others = [rs for rs in owned if rs["metadata"]["name"] != name]
        if len(others) == len(owned):
            number = rollout.next_revision(others)
            body = rollout.replica_set(deployment, template_hash, number, replicas)
            await self.server.store(REPLICASETS, self.namespace, body)
        else:
            [current] = [rs for rs in owned if rs["metadata"]["name"] == name]
            promoted = rollout.promotion(current, others)
            if promoted is not None:
                patch = {"metadata": {"annotations": promoted}}
                await self.server.patch_stored(REPLICASETS, self.namespace, name, patch)
        stored = self.server.find(REPLICASETS, self.namespace, name)
        assert stored is not None
        current_revision = str(rollout.revision(stored.raw))
        annotations = deployment["metadata"].get("annotations") or {}
        if annotations.get(rollout.REVISION) != current_revision:
            patch = {"metadata": {"annotations": {rollout.REVISION: current_revision}}}
            await self.server.patch_stored(
                DEPLOYMENTS, self.namespace, deployment["metadata"]["name"], patch
            )
        return stored.raw

    async def _report_replica_sets(self, deployment: Mapping[str, Any], pods: list[_Pod]) -> None:
        """Each ReplicaSet's replicas: the template's wanted count, 0 for the old ones."""
        template_hash = pod_template_hash(deployment["spec"]["template"])
        wanted = int(deployment["spec"].get("replicas", 1))
        for rs in self._replica_sets(deployment):
            rs_hash = rs["metadata"]["labels"].get(rollout.HASH_LABEL)
            mine = [pod for pod in pods if pod.template_hash == rs_hash]
            ready = [pod for pod in mine if all(c.ready for c in pod.containers)]
            replicas = wanted if rs_hash == template_hash else 0
            patch: dict[str, Any] = {
                "spec": {"replicas": replicas},
                "status": {
                    "replicas": len(mine),
                    "fullyLabeledReplicas": len(mine),
                    "readyReplicas": len(ready),
                    "availableReplicas": len(ready),
                    "observedGeneration": rs["metadata"].get("generation", 1),
                },
            }
            if rs["spec"].get("replicas") != replicas or rs.get("status") != patch["status"]:
                await self.server.patch_stored(
                    REPLICASETS, self.namespace, rs["metadata"]["name"], patch
                )

    async def _report_deployment(self, deployment: Mapping[str, Any], pods: list[_Pod]) -> None:
        template_hash = pod_template_hash(deployment["spec"]["template"])
        ready = [pod for pod in pods if all(c.ready for c in pod.containers)]
        updated = [pod for pod in pods if pod.template_hash == template_hash]
        status: dict[str, Any] = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": len(pods),
            "updatedReplicas": len(updated),
            "readyReplicas": len(ready),
            "availableReplicas": len(ready),
        }
        if deployment.get("status") != status:
            name = deployment["metadata"]["name"]
            await self.server.patch_stored(DEPLOYMENTS, self.namespace, name, {"status": status})

    async def sync(self) -> None:
        """One pass of the Deployment controller and the kubelet."""
        deployments = {item["metadata"]["name"]: item for item in self._deployments()}
        for pod in list(self.pods.values()):
            deleted = self.server.find(PODS, self.namespace, pod.name) is None
            deployment = deployments.get(pod.deployment)
            current = deployment is not None and pod.template_hash == pod_template_hash(
                deployment["spec"]["template"]
            )
            if deleted or not current:
                await self._stop_pod(pod)
        for name, deployment in deployments.items():
            template_hash = pod_template_hash(deployment["spec"]["template"])
            pods = [pod for pod in self.pods.values() if pod.deployment == name]
            wanted = int(deployment["spec"].get("replicas", 1))
            for pod in pods[wanted:]:
                await self._stop_pod(pod)
            owner = await self._replica_set(deployment, template_hash, wanted)
            for _ in range(wanted - len(pods)):
                await self._start_pod(deployment, template_hash, owner)
            pods = [pod for pod in self.pods.values() if pod.deployment == name]
            for pod in pods:
                for container in pod.containers:
                    if container.argv is not None:
                        container.ready = await self._probe(container)
                await self._report(pod)
            await self._report_replica_sets(deployment, pods)
            await self._report_deployment(deployment, pods)

    async def run(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        for pod in list(self.pods.values()):
            await self._stop_pod(pod)
        if self._http is not None:
            await self._http.close()
