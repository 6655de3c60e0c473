"""Reading a cluster for `kuberde.diagnosis`: what `kuberde doctor` looks at.

GETs through the API server the kubeconfig names, with its credentials (as kubectl does):
the operator's pods and log, the RDEAgents and their pods, the workspace Deployments
sampled over a window, the agents' logs; and, if asked, the gateway's `/healthz`.
"""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from kuberde.diagnosis import Observation

__all__ = ["observe"]

_TIMEOUT = 15.0
_LOG_LINES = 2000


class _Cluster:
    """GETs against the API server the kubeconfig names, with its credentials."""

    def __init__(self, base: str, headers: dict[str, str], context: ssl.SSLContext | bool) -> None:
        self._base = base.rstrip("/")
        self._headers = headers
        self._ssl = context
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_TIMEOUT))

    @classmethod
    async def connect(cls, kubeconfig: Path | None) -> _Cluster:
        from kuberde.kube import load_configuration

        configuration = await load_configuration(kubeconfig)
        headers = {}
        for setting in (await configuration.auth_settings()).values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[str(setting["key"])] = str(setting["value"])
        host = str(configuration.host or "")
        context: ssl.SSLContext | bool = False
        if host.startswith("https://"):
            context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
            if configuration.cert_file:
                context.load_cert_chain(configuration.cert_file, configuration.key_file)
            if not configuration.verify_ssl:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        return cls(host, headers, context)

    async def close(self) -> None:
        await self._http.close()

    async def _get(self, path: str, params: dict[str, str]) -> aiohttp.ClientResponse:
        response = await self._http.get(
            self._base + path, params=params, headers=self._headers, ssl=self._ssl
        )
        if response.status >= 400:
            text = await response.text()
            response.release()
            raise RuntimeError(f"GET {path}: {response.status} {text[:200]}")
        return response

    async def items(self, path: str, **params: str) -> list[dict[str, Any]]:
        response = await self._get(path, params)
        document = await response.json()
        return list(document.get("items") or [])

    async def text(self, path: str, **params: str) -> str:
        response = await self._get(path, params)
        return await response.text()


async def _gateway(url: str) -> tuple[bool, str]:
    target = url.rstrip("/") + "/healthz"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_TIMEOUT)) as http,
            http.get(target) as response,
        ):
            return response.status == 200, f"GET {target}: {response.status}"
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return False, f"GET {target}: {type(exc).__name__}: {exc}"


async def _logs(
    cluster: _Cluster, namespace: str, pods: list[dict[str, Any]], **params: str
) -> dict[str, str]:
    logs = {}
    for pod in pods:
        name = pod["metadata"]["name"]
        try:
            logs[name] = await cluster.text(
                f"/api/v1/namespaces/{namespace}/pods/{name}/log", **params
            )
        except RuntimeError as exc:
            logs[name] = f"(no log: {exc})"
    return logs


async def observe(
    kubeconfig: Path | None,
    namespace: str,
    *,
    gateway: str | None,
    window: float,
    samples: int,
    ttl_interval: float,
) -> Observation:
    """Everything `diagnose` needs, read from the cluster."""
    cluster = await _Cluster.connect(kubeconfig)
    pods_path = f"/api/v1/namespaces/{namespace}/pods"
    deployments_path = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    managed = "app.kubernetes.io/managed-by=kuberde-operator"
    try:
        deployments = [await cluster.items(deployments_path, labelSelector=managed)]
        for _ in range(max(samples, 2) - 1 if window > 0 else 0):
            await asyncio.sleep(window / (max(samples, 2) - 1))
            deployments.append(await cluster.items(deployments_path, labelSelector=managed))
        operator_pods = await cluster.items(pods_path, labelSelector="app=kuberde-operator")
        agent_pods = await cluster.items(pods_path, labelSelector="app=frp-agent")
        agents = await cluster.items(f"/apis/kuberde.io/v1/namespaces/{namespace}/rdeagents")
        operator_logs = await _logs(cluster, namespace, operator_pods, tailLines=str(_LOG_LINES))
        agent_logs = await _logs(cluster, namespace, agent_pods, tailLines="200", container="agent")
    finally:
        await cluster.close()
    return Observation(
        now=datetime.now(UTC),
        operator_pods=operator_pods,
        agents=agents,
        agent_pods=agent_pods,
        deployments=deployments,
        operator_log="\n".join(operator_logs.values()),
        agent_logs=agent_logs,
        gateway=await _gateway(gateway) if gateway else None,
        ttl_interval=ttl_interval,
    )
