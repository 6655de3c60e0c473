"""Our own Kubernetes calls (operator, gateway), as plain JSON dicts, over kubernetes-asyncio.

Kopf watches; everything else we read on purpose or write goes through `KubeApi`, so
there is one place with timeouts, one error type and one count of API writes. Objects stay
dicts end to end: typed models would drop fields and turn server defaults into noise.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import kopf
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from prometheus_client import Counter

__all__ = [
    "ApiError",
    "KubeApi",
    "Paths",
    "connection_info",
    "load_configuration",
]

log = logging.getLogger(__name__)

_IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
_JSON = "application/json"
_MERGE_PATCH = "application/merge-patch+json"
_JSON_PATCH = "application/json-patch+json"
_WRITE_VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}

Verb = Literal["GET", "POST", "PATCH"]


class ApiError(Exception):
    """A failed API call; `status` is 0 when the server could not be reached at all."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status


async def load_configuration(kubeconfig: Path | None = None) -> k8s_client.Configuration:
    """The standard rules: an explicit file, `$KUBECONFIG`, in-cluster, then ~/.kube/config.

    `$KUBECONFIG` is read here rather than at import time, and it wins over the in-cluster
    account so a developer (or a test) can point a process at another API server.
    """
    configuration = k8s_client.Configuration()
    if kubeconfig is not None and not kubeconfig.is_file():
        raise k8s_config.ConfigException(f"kubeconfig {kubeconfig} does not exist")
    explicit = str(kubeconfig) if kubeconfig else os.environ.get("KUBECONFIG")
    if explicit:
        await k8s_config.load_kube_config(
            config_file=explicit, client_configuration=configuration, persist_config=False
        )
        return configuration
    if os.environ.get("KUBERNETES_SERVICE_HOST") and _IN_CLUSTER_TOKEN.exists():
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return configuration
    default = Path.home() / ".kube" / "config"
    if not default.exists():
        raise k8s_config.ConfigException(
            "no Kubernetes configuration: not in a cluster, $KUBECONFIG is unset and "
            f"{default} does not exist"
        )
    await k8s_config.load_kube_config(
        config_file=str(default), client_configuration=configuration, persist_config=False
    )
    return configuration


async def connection_info(configuration: k8s_client.Configuration) -> kopf.ConnectionInfo:
    """The same credentials for Kopf's watches, so both clients talk to one API server."""
    header = await configuration.get_api_key_with_prefix("BearerToken")
    parts = header.split(" ", 1) if header else []
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
    if not configuration.host:
        raise k8s_config.ConfigException("the Kubernetes configuration names no API server")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


class Paths:
    """URL paths of the objects the operator touches, all in one namespace."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        ns = quote(namespace, safe="")
        self.agents = f"/apis/kuberde.io/v1/namespaces/{ns}/rdeagents"
        self.deployments = f"/apis/apps/v1/namespaces/{ns}/deployments"
        self.secrets = f"/api/v1/namespaces/{ns}/secrets"
        self.pvcs = f"/api/v1/namespaces/{ns}/persistentvolumeclaims"
        self.pods = f"/api/v1/namespaces/{ns}/pods"
        self.events = f"/api/v1/namespaces/{ns}/events"
        self.leases = f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"

    @staticmethod
    def item(collection: str, name: str) -> str:
        return f"{collection}/{quote(name, safe='')}"

    def agent(self, name: str) -> str:
        return self.item(self.agents, name)

    def agent_status(self, name: str) -> str:
        return self.item(self.agents, name) + "/status"


def _resource_of(path: str) -> str:
    """`deployments` from `/apis/apps/v1/namespaces/ns/deployments/x`, for the write metric."""
    parts = [part for part in path.split("/") if part]
    if "namespaces" in parts:
        rest = parts[parts.index("namespaces") + 2 :]
    else:
        rest = parts[2:] if parts and parts[0] == "api" else parts[3:]
    if not rest:
        return "unknown"
    return rest[0] + ("/" + rest[2] if len(rest) > 2 else "")


def _error_message(body: object, fallback: str) -> str:
    if isinstance(body, bytes | str):
        try:
            document = json.loads(body)
        except ValueError:
            return fallback
        if isinstance(document, dict) and isinstance(document.get("message"), str):
            return str(document["message"])
    return fallback


#: Items per LIST request; longer collections are read page by page with `continue`.
LIST_PAGE_SIZE = 500


class KubeApi:
    """JSON in, JSON out; every call has a deadline and raises `ApiError` on failure."""

    def __init__(
        self,
        api_client: k8s_client.ApiClient,
        *,
        timeout: float,
        api_writes: Counter | None = None,
    ) -> None:
        self._client = api_client
        self._timeout = timeout
        self._api_writes = api_writes

    @classmethod
    def connect(
        cls,
        configuration: k8s_client.Configuration,
        *,
        timeout: float,
        api_writes: Counter | None = None,
        user_agent: str,
    ) -> KubeApi:
        api_client = k8s_client.ApiClient(configuration)
        api_client.user_agent = user_agent
        return cls(api_client, timeout=timeout, api_writes=api_writes)

    async def close(self) -> None:
        await self._client.close()

    async def _call(
        self,
        verb: Verb,
        path: str,
        *,
        body: object = None,
        content_type: str = _JSON,
        query: Sequence[tuple[str, str]] = (),
    ) -> Any:
        headers = {"Accept": _JSON, "Content-Type": content_type}
        try:
            async with asyncio.timeout(self._timeout):
                result = await self._client.call_api(
                    path,
                    verb,
                    query_params=list(query),
                    header_params=headers,
                    body=body,
                    response_types_map={200: "object", 201: "object"},
                    auth_settings=["BearerToken"],
                    _return_http_data_only=True,
                    _request_timeout=self._timeout,
                )
        except k8s_client.ApiException as exc:
            raise ApiError(exc.status, _error_message(exc.body, str(exc.reason))) from None
        except TimeoutError:
            raise ApiError(0, f"{verb} {path} timed out after {self._timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ApiError(0, f"{verb} {path} failed: {exc}") from None
        finally:
            if verb in _WRITE_VERBS and self._api_writes is not None:
                self._api_writes.labels(resource=_resource_of(path), verb=_WRITE_VERBS[verb]).inc()
        if not isinstance(result, dict):
            raise ApiError(0, f"{verb} {path} returned no JSON object")
        return result

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        try:
            result: dict[str, Any] = await self._call("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    async def list(
        self,
        path: str,
        *,
        labels: Mapping[str, str] | None = None,
        limit: int | None = None,
        page_size: int = LIST_PAGE_SIZE,
    ) -> list[Any]:
        """Items of a collection, following `continue` across pages (at most `limit`).

        `labels` are matched here too, for servers that ignore the selector.
        """
        base: list[tuple[str, str]] = []
        if labels:
            base.append(("labelSelector", ",".join(f"{k}={v}" for k, v in labels.items())))
        items: list[Any] = []
        token: str | None = None
        while True:
            wanted = page_size if limit is None else min(page_size, limit - len(items))
            query = [*base, ("limit", str(wanted))]
            if token:
                query.append(("continue", token))
            result = await self._call("GET", path, query=query)
            page = result.get("items") or []
            items.extend(
                item
                for item in page
                if not labels
                or all(
                    ((item.get("metadata") or {}).get("labels") or {}).get(key) == value
                    for key, value in labels.items()
                )
            )
            token = (result.get("metadata") or {}).get("continue") or None
            if token is None or not page or (limit is not None and len(items) >= limit):
                return items if limit is None else items[:limit]

    async def create(self, collection: str, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", collection, body=dict(body))
        return result

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """RFC 7386: nested maps merge, lists are replaced, None deletes a key."""
        result: dict[str, Any] = await self._call(
            "PATCH", path, body=dict(patch), content_type=_MERGE_PATCH
        )
        return result

    async def json_patch(
        self, path: str, operations: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        """RFC 6902; a failed `test` operation fails the whole patch (used for optimistic locks)."""
        result: dict[str, Any] = await self._call(
            "PATCH", path, body=[dict(op) for op in operations], content_type=_JSON_PATCH
        )
        return result
