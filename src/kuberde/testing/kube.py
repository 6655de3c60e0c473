"""An emulated Kubernetes API server: KMock's emulator plus what a real API server does itself.

KMock (`kmock.KubernetesEmulator`) stores objects and serves get, list, watch, create, patch
and delete over HTTP. `ApiServer` adds what a real API server does on its own and what the
operator relies on:

- uid, creationTimestamp, namespace, resourceVersion and generation on create and update
  (a client's own uid or creationTimestamp is replaced, as a real API server does);
- the status subresource changes nothing but `status`, and a create or normal update of an
  RDEAgent leaves its `status` alone (a restored backup's status is dropped);
- the garbage collector: deleting an owner deletes its dependents, and an object created for
  an owner that no longer exists is collected at once;
- BOOKMARK events on quiet watches, so a watch client does not take silence for a dead stream.

It also keeps its own request log (`calls`). KMock matches every request against its whole
request log, which makes a long run quadratic in its request count; here KMock sees only the
requests being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import aiohttp.web
import kmock

__all__ = [
    "BOOKMARK_INTERVAL",
    "RDEAGENTS",
    "WRITE_METHODS",
    "ApiCall",
    "ApiServer",
    "emulator",
    "now_rfc3339",
    "running_pod",
    "write_kubeconfig",
]

RDEAGENTS = "kuberde.io/v1/rdeagents"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Well inside Kopf's watch inactivity timeout (70 s), as a real API server's bookmarks are.
BOOKMARK_INTERVAL = 30.0


def now_rfc3339() -> str:
    """The current time as Kubernetes writes timestamps (whole seconds, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ApiCall:
    """One request as the API server saw it: what was asked, and by whom (User-Agent)."""

    method: str
    path: str
    user_agent: str

    @property
    def line(self) -> str:
        """`METHOD path`, as an access log shows it."""
        return f"{self.method} {self.path}"

    @property
    def is_write(self) -> bool:
        return self.method in WRITE_METHODS


class ApiServer(kmock.KubernetesEmulator):
    """KMock's emulator with the fields and behaviours a real API server adds by itself."""

    def __init__(self, *, bookmark_interval: float = BOOKMARK_INTERVAL) -> None:
        super().__init__()
        self.bookmark_interval = bookmark_interval
        #: Every request, in arrival order.
        self.calls: list[ApiCall] = []
        self._resource_version = 0
        self._serving: dict[int, kmock.Request] = {}

    def __iter__(self) -> Iterator[kmock.Request]:
        """Only the requests being served: what KMock matches a new request against."""
        return iter(list(self._serving.values()))

    # ---- reading the store ---------------------------------------------------------------------

    def find(
        self, resource: kmock.ResourceKey, namespace: str | None, name: str
    ) -> kmock.Object | None:
        """The stored object, or None if it was never created or is deleted."""
        key = (kmock.resource(resource), namespace, name)
        if key not in self.objects:
            return None
        stored = self.objects[key]
        return None if stored.deleted else stored

    def find_all(self, resource: kmock.ResourceKey, namespace: str | None) -> list[kmock.Object]:
        """Every stored, not deleted object of `resource` in `namespace`."""
        wanted = kmock.resource(resource)
        return [
            stored
            for (stored_resource, stored_namespace, _), stored in list(self.objects.items())
            if stored_resource == wanted and stored_namespace == namespace and not stored.deleted
        ]

    # ---- what the API server assigns itself ----------------------------------------------------

    def _next_resource_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def _assign_fields(self, request: kmock.Request) -> None:
        """Stamp the request's body with the fields the API server owns, before KMock stores it."""
        data = request.data
        if request.action == kmock.action.CREATE and isinstance(data, dict):
            metadata = data.setdefault("metadata", {})
            # Always the server's own, as a real one does: a document restored from a backup
            # (`kubectl get -o yaml`, then `apply`) is a new object with a new uid and age.
            metadata["uid"] = str(uuid.uuid4())
            metadata["creationTimestamp"] = now_rfc3339()
            metadata["resourceVersion"] = self._next_resource_version()
            metadata["generation"] = 1
            if request.resource == RDEAGENTS:
                data.pop("status", None)
            if request.namespace and not metadata.get("namespace"):
                metadata["namespace"] = request.namespace
            return
        if request.action != kmock.action.UPDATE or request.resource is None or not request.name:
            return
        stored = self.find(request.resource, request.namespace, request.name)
        if stored is None:
            return
        generation = int((stored.get("metadata") or {}).get("generation") or 1)
        version = self._next_resource_version()
        if isinstance(data, dict):
            if request.subresource == "status":
                for key in [key for key in data if key != "status"]:
                    del data[key]
            elif request.resource == RDEAGENTS:
                data.pop("status", None)
            if "spec" in data:
                generation += 1
            metadata = data.setdefault("metadata", {})
            metadata["resourceVersion"] = version
            metadata["generation"] = generation
        elif isinstance(data, list):
            if any(str(op.get("path", "")).startswith("/spec") for op in data):
                generation += 1
            data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
            data.append({"op": "add", "path": "/metadata/generation", "value": generation})

    # ---- the garbage collector -----------------------------------------------------------------

    def _owner_exists(self, reference: Mapping[str, Any], namespace: str | None) -> bool:
        """Whether the owner a reference names is stored, looked up by kind and name as the
        garbage collector does; a kind this server does not serve counts as existing."""
        group, _, version = str(reference.get("apiVersion", "")).rpartition("/")
        wanted = (group, version, reference.get("kind"))
        for resource in self.resources:
            info = self.resources[resource]
            if (resource.group, resource.version, info.kind) != wanted:
                continue
            scope = namespace if info.namespaced else None
            owner = self.find(resource, scope, str(reference.get("name", "")))
            uid = None if owner is None else (owner.get("metadata") or {}).get("uid")
            return bool(uid) and uid == reference.get("uid")
        return True

    def _owners_gone_after(self, request: kmock.Request) -> set[str]:
        """The uids whose dependents must be collected once `request` is served."""
        data = request.data
        if request.action == kmock.action.DELETE and request.resource is not None and request.name:
            stored = self.find(request.resource, request.namespace, request.name)
            uid = None if stored is None else (stored.get("metadata") or {}).get("uid")
            return {uid} if uid else set()
        if request.action == kmock.action.CREATE and isinstance(data, dict):
            metadata = data.get("metadata") or {}
            namespace = request.namespace or metadata.get("namespace")
            return {
                reference["uid"]
                for reference in metadata.get("ownerReferences") or []
                if reference.get("uid") and not self._owner_exists(reference, namespace)
            }
        return set()

    async def _collect_garbage(self, owner_uids: set[str]) -> None:
        """Delete the dependents of owners that are gone, and theirs in turn."""
        gone = set(owner_uids)
        async with self._lock:
            while gone:
                owner_uid = gone.pop()
                for (resource, _, _), stored in list(self.objects.items()):
                    if stored.deleted:
                        continue
                    metadata = stored.get("metadata") or {}
                    references = metadata.get("ownerReferences") or []
                    if not any(reference.get("uid") == owner_uid for reference in references):
                        continue
                    if metadata.get("uid"):
                        gone.add(metadata["uid"])
                    raw = stored.raw
                    stored.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})

    # ---- serving -------------------------------------------------------------------------------

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        """KMock's watch plus a BOOKMARK now and then, as a real API server sends them.

        Without them a quiet stream looks dead to Kopf after its inactivity timeout; it
        reconnects, and KMock, which cannot resume from a resourceVersion, replays every
        object: a reconcile of everything watched that a real cluster never causes.
        """
        events = cast(AsyncGenerator[kmock.Payload, None], super()._serve_watch(request))
        pending: asyncio.Future[kmock.Payload] | None = None
        try:
            while True:
                pending = pending or asyncio.ensure_future(anext(events))
                done, _ = await asyncio.wait({pending}, timeout=self.bookmark_interval)
                if not done:
                    version = str(self._resource_version)
                    yield {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": version}}}
                    continue
                event = pending.result()
                pending = None
                yield event
        except StopAsyncIteration:
            return
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await pending
            await events.aclose()

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        user_agent = str(request.headers.get("User-Agent", ""))
        self.calls.append(ApiCall(str(request.method.value).upper(), request.url.path, user_agent))
        self._serving[id(request)] = request
        owners_gone: set[str] = set()
        try:
            if request.resource is not None:
                self._assign_fields(request)
                owners_gone = self._owners_gone_after(request)
            response = await super()._handle(request)
        finally:
            del self._serving[id(request)]
        if owners_gone:
            await self._collect_garbage(owners_gone)
        return response


def emulator(*, bookmark_interval: float = BOOKMARK_INTERVAL) -> ApiServer:
    """An API server that serves the bundled Kubernetes resources and RDEAgents."""
    server = ApiServer(bookmark_interval=bookmark_interval)
    server.resources.load_bundled()
    server.resources[RDEAGENTS] = kmock.ResourceInfo(
        kind="RDEAgent",
        singular="rdeagent",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
        shortnames={"rde"},
        subresources={"status"},
    )
    return server


def write_kubeconfig(path: Path, url: str, namespace: str) -> None:
    """A kubeconfig for the API server at `url`, with `namespace` as the default namespace."""
    cluster = {"name": "emulator", "cluster": {"server": url}}
    user = {"name": "operator", "user": {"token": "emulator-token"}}
    context = {"cluster": "emulator", "user": "operator", "namespace": namespace}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [user],
        "contexts": [{"name": "emulator", "context": context}],
        "current-context": "emulator",
    }
    path.write_text(json.dumps(config))


def running_pod(deployment: Mapping[str, Any], name: str, namespace: str) -> dict[str, Any]:
    """A Running Pod from the Deployment's template, as the kubelet would report it."""
    template = deployment["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "labels": dict(template["metadata"]["labels"]),
            "creationTimestamp": now_rfc3339(),
        },
        "spec": template["spec"],
        "status": {"phase": "Running", "startTime": now_rfc3339()},
    }
