"""`kuberde doctor`: the runbook's daily health checks against a cluster, automated.

Reads the cluster through the API server (kubeconfig and namespace, as kubectl does): the
operator's pods and log, the RDEAgents and their pods, the workspace Deployments sampled
over a window, the agents' logs; optionally asks the gateway's `/healthz`. The verdicts
are `kuberde.diagnosis`'s; this module only reads and prints. Any ❌ exits 1.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import typer

from kuberde import aio
from kuberde.diagnosis import Finding, Observation, diagnose

__all__ = ["doctor"]

EXIT_UNHEALTHY = 1
EXIT_UNREACHABLE = 2
_TIMEOUT = 15.0
_LOG_LINES = 2000


class Output(StrEnum):
    TEXT = "text"
    JSON = "json"


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


def render(findings: list[Finding]) -> str:
    lines = []
    for finding in findings:
        lines.append(f"{'✅' if finding.ok else '❌'} {finding.check}: {finding.measured}")
        if not finding.ok and finding.fix:
            lines.append(f"   fix: {finding.fix}")
    failed = sum(1 for finding in findings if not finding.ok)
    lines.append(f"{len(findings)} checks, {failed} failed")
    return "\n".join(lines)


def doctor(
    kubeconfig: Annotated[
        Path | None,
        typer.Option(help="kubeconfig (default: $KUBECONFIG, in-cluster, ~/.kube/config)"),
    ] = None,
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", envvar="KUBERDE_NAMESPACE", help="Namespace")
    ] = "kuberde",
    gateway: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Gateway base URL to probe (/healthz); default: judge from the operator's log",
        ),
    ] = None,
    window: Annotated[
        float,
        typer.Option(metavar="SECONDS", help="Watch Deployments this long for flapping (0: skip)"),
    ] = 60.0,
    samples: Annotated[int, typer.Option(help="Deployment samples over the window")] = 3,
    ttl_interval: Annotated[
        float, typer.Option(metavar="SECONDS", help="The operator's TTL sweep interval")
    ] = 60.0,
    output: Annotated[Output, typer.Option("--output", "-o", help="text or json")] = Output.TEXT,
) -> None:
    """Run the runbook's daily checks: operator pod, gateway, agents, stability, TTL, timings.

    Examples:

    \b
      kuberde doctor
      kuberde doctor -n kuberde --window 90 -o json
    """
    try:
        observation = aio.run(
            observe(
                kubeconfig,
                namespace,
                gateway=gateway,
                window=window,
                samples=samples,
                ttl_interval=ttl_interval,
            )
        )
    except Exception as exc:  # the cluster could not be read at all: say so, exit 2
        typer.echo(f"error: cannot read the cluster: {exc}", err=True)
        raise typer.Exit(EXIT_UNREACHABLE) from None
    findings = diagnose(observation)
    if output is Output.JSON:
        ok = all(finding.ok for finding in findings)
        document = {"ok": ok, "findings": [finding.as_dict() for finding in findings]}
        typer.echo(json.dumps(document, indent=2))
    else:
        typer.echo(render(findings))
    if not all(finding.ok for finding in findings):
        raise typer.Exit(EXIT_UNHEALTHY)
