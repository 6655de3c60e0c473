"""`kubectl exec` into the kubelet fixture's pods: a real process in the pod's environment."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import kmock
import pytest

from kuberde.testing.cluster import kubectl_path
from kuberde.testing.kube import emulator, write_kubeconfig
from kuberde.testing.kubelet import Kubelet

WAIT = 20.0
DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "box"},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "box"}},
        "template": {
            "metadata": {"labels": {"app": "box"}},
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": "busybox",
                        "env": [{"name": "GREETING", "value": "hi"}],
                    }
                ]
            },
        },
    },
}


@dataclass
class Pod:
    name: str
    directory: Path
    env: dict[str, str]

    async def kubectl(self, command: str, stdin: bytes = b"") -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_shell(
            command,
            env=self.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(stdin), WAIT)
        return process.returncode or 0, out.decode(), err.decode()


@pytest.fixture
async def pod(tmp_path: Path) -> AsyncIterator[Pod]:
    kubectl = kubectl_path()
    if kubectl is None:
        pytest.skip("kubectl is not installed (scripts/system-deps.sh --tests installs it)")
    server = emulator()
    async with server, kmock.Server(server) as http_server:
        kubeconfig = tmp_path / "kubeconfig"
        write_kubeconfig(kubeconfig, str(http_server.url).rstrip("/"), "kuberde")
        kubelet = Kubelet(server, "kuberde", tmp_path / "pods", kubeconfig)
        task = asyncio.create_task(kubelet.run())
        try:
            namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kuberde"}}
            await server.store("v1/namespaces", None, namespace)
            await server.store("apps/v1/deployments", "kuberde", copy.deepcopy(DEPLOYMENT))
            async with asyncio.timeout(WAIT):
                while True:
                    if kubelet.pods:
                        break
                    await asyncio.sleep(0.05)
            [(name, running)] = kubelet.pods.items()
            path = f"{Path(kubectl).parent}:{os.environ.get('PATH', '')}"
            env = {"PATH": path, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}
            yield Pod(name, running.directory, env)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await kubelet.close()


async def test_exec_runs_the_command_in_the_pods_environment(pod: Pod) -> None:
    code, out, err = await pod.kubectl(
        f"kubectl exec {pod.name} -- sh -c 'echo $POD_NAME $GREETING; pwd; echo oops >&2; exit 3'"
    )
    assert out.splitlines() == [f"{pod.name} hi", str(pod.directory)], err
    assert "oops" in err and code == 3, "stderr apart, and the exit code kept"


async def test_exec_feeds_stdin_as_the_runbook_shells_in(pod: Pod) -> None:
    code, out, err = await pod.kubectl(
        f"kubectl exec -it -n kuberde {pod.name} -- /bin/sh", stdin=b"echo in $POD_NAME\nexit 0\n"
    )
    assert (code, out) == (0, f"in {pod.name}\n"), err
    code, out, _ = await pod.kubectl(f"kubectl exec -i {pod.name} -- cat", stdin=b"x" * 100_000)
    assert (code, len(out)) == (0, 100_000), "all of stdin, then its end"


async def test_exec_into_what_is_not_there_is_a_clear_error(pod: Pod) -> None:
    code, _, err = await pod.kubectl("kubectl exec missing -- true")
    assert code != 0 and 'pods "missing" not found' in err
    code, _, err = await pod.kubectl(f"kubectl exec {pod.name} -c other -- true")
    assert code != 0 and "container other is not valid" in err
    code, _, err = await pod.kubectl(f"kubectl exec {pod.name} -- /no/such/command")
    assert code != 0 and "/no/such/command" in err
    code, out, _ = await pod.kubectl(f"kubectl exec {pod.name} -- echo still serving")
    assert (code, out) == (0, "still serving\n")


async def test_top_pod_reads_the_pods_metrics(pod: Pod) -> None:
    code, out, err = await pod.kubectl("kubectl top pod -n kuberde -l app=box")
    assert code == 0, err
    assert [line.split() for line in out.splitlines()] == [
        ["NAME", "CPU(cores)", "MEMORY(bytes)"],
        [pod.name, "0m", "0Mi"],
    ], "a workload image without a process uses nothing"
    code, out, err = await pod.kubectl("kubectl top pod -n kuberde -l app=other")
    assert (code, out) == (0, ""), err
    assert "No resources found in kuberde namespace." in err


async def test_port_forward_is_refused_with_the_reason(pod: Pod) -> None:
    code, _, err = await pod.kubectl(f"timeout 20 kubectl port-forward {pod.name} 0:8080")
    assert code != 0 and "SPDY/3.1" in err, err
