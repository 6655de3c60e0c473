"""An emulated Kubernetes API server: KMock's emulator plus what a real API server does itself.

KMock (`kmock.KubernetesEmulator`) stores objects and serves get, list, watch, create, patch
and delete over HTTP. `ApiServer` adds what a real API server does on its own and what the
operator relies on:

- uid, creationTimestamp, namespace, resourceVersion and generation on create and update
  (a client's own uid or creationTimestamp is replaced, as a real API server does), 201
  Created for a create; a deletion gets a resourceVersion of its own, which the DELETE's
  answer, the DELETED event and the stored final state all carry;
- the status subresource changes nothing but `status`, and a create or normal update of an
  RDEAgent leaves its `status` alone (a restored backup's status is dropped);
- the garbage collector: deleting an owner deletes its dependents, and an object created for
  an owner that no longer exists is collected at once;
- watches that resume from a resourceVersion (`kuberde.testing.watching`), with 410 Gone
  when it is too old, and BOOKMARK events on quiet watches for clients that allow them.

And what `kubectl` needs to believe it (the runbook's commands run against it verbatim):

- discovery with the core group's `groupVersion: v1`; lists that carry `kind`/`apiVersion`;
- label and field selectors on lists and watches (`kuberde.testing.selectors`);
- optimistic concurrency: a write carrying a stale `resourceVersion` gets 409 Conflict, a
  JSON patch whose `test` fails gets 422, as on a real API server (KMock applies both); the
  check and the write it admits are one step (`_write_lock`), so of concurrent writes that
  carry one version exactly one wins;
- server-side Table printing (`kuberde.testing.printing`) from the stored CRD's
  `additionalPrinterColumns`, and for the built-in kinds the runbook lists;
- strategic merge patches (`kubectl set image`, client-side apply), server-side apply, and
  replaces (PUT, `kubectl replace`), which KMock does not serve;
- pod logs (`PodLogs`) that a kubelet fixture writes, with follow, tail, since and previous,
  `kubectl exec` into its pods (`kuberde.testing.streaming`), and their metrics for
  `kubectl top pod` (`kuberde.testing.metrics`);
- protobuf request bodies for the kinds kubectl's typed creates send (`kuberde.testing.protobuf`):
  kubectl does not fall back to JSON on 415;
- RBAC (`kuberde.testing.rbac`) over the stored roles and bindings: (Self)SubjectAccessReviews
  (`kubectl auth can-i --as=…`), and 403 for an impersonated user's (`--as`) request its
  roles do not allow; the kubeconfig's own user is an admin (`system:masters`).

It also keeps its own request log (`calls`). KMock matches every request against its whole
request log, which makes a long run quadratic in its request count; here KMock sees only the
requests being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

import aiohttp.web
import attrs
import kmock
import yaml
from multidict import CIMultiDict

from kuberde.testing import metrics, printing, protobuf, rbac, streaming
from kuberde.testing.patching import merge_patch_between, strategic_merge
from kuberde.testing.selectors import (
    Selector,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)
from kuberde.testing.watching import HISTORY_SIZE, Change, Expired, WatchHistory

__all__ = [
    "BOOKMARK_INTERVAL",
    "CRDS",
    "RDEAGENTS",
    "WRITE_METHODS",
    "ApiCall",
    "ApiServer",
    "ContainerLog",
    "PodLogs",
    "emulator",
    "now_rfc3339",
    "running_pod",
    "write_kubeconfig",
]

RDEAGENTS = "kuberde.io/v1/rdeagents"
CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"
SECRETS = "v1/secrets"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Access reviews: answered from the stored RBAC objects (`kuberde.testing.rbac`), not stored.
REVIEWS = ("selfsubjectaccessreviews", "subjectaccessreviews")
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


class ContainerLog:
    """What one container instance wrote, line by line with the time the kubelet read it."""

    def __init__(self) -> None:
        self.lines: list[tuple[datetime, bytes]] = []
        self.closed = False
        self._changed = asyncio.Event()

    def write(self, line: bytes) -> None:
        self.lines.append((datetime.now(UTC), line if line.endswith(b"\n") else line + b"\n"))
        self._changed.set()

    def close(self) -> None:
        """The container exited: followers get the end of the stream."""
        self.closed = True
        self._changed.set()

    async def changed(self) -> None:
        await self._changed.wait()
        self._changed.clear()

    def select(self, *, since_seconds: float | None, tail: int | None) -> list[bytes]:
        """The lines `kubectl logs --since/--tail` asks for."""
        lines = self.lines
        if since_seconds is not None:
            cutoff = datetime.now(UTC).timestamp() - since_seconds
            lines = [(when, line) for when, line in lines if when.timestamp() >= cutoff]
        if tail is not None and tail >= 0:
            lines = lines[len(lines) - tail :] if tail else []
        return [line for _, line in lines]


class PodLogs:
    """The containers' logs a kubelet fixture records, by namespace, pod and container."""

    def __init__(self) -> None:
        self._current: dict[tuple[str, str, str], ContainerLog] = {}
        self._previous: dict[tuple[str, str, str], ContainerLog] = {}

    def start(self, namespace: str, pod: str, container: str) -> ContainerLog:
        """A new instance of `container` in `pod`; the one before becomes `--previous`."""
        key = (namespace, pod, container)
        if key in self._current:
            self._current[key].close()
            self._previous[key] = self._current[key]
        self._current[key] = ContainerLog()
        return self._current[key]

    def get(
        self, namespace: str, pod: str, container: str, *, previous: bool = False
    ) -> ContainerLog | None:
        return (self._previous if previous else self._current).get((namespace, pod, container))


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A `Status` object, as a watch's ERROR event carries it."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class PodRuntime(Protocol):
    """A kubelet as the API server reaches it for `kubectl exec` and `kubectl top`."""

    def exec_target(
        self, namespace: str, pod_name: str, container_name: str
    ) -> tuple[dict[str, str], Path] | None: ...

    def usage(self, namespace: str, pod_name: str) -> dict[str, metrics.Usage] | None: ...


class _Recorder:
    """Stands for KMock's event bus of one resource: each event goes into the history."""

    def __init__(self, server: ApiServer, resource: kmock.resource) -> None:
        self._server = server
        self._resource = resource

    async def put(self, *events: dict[str, Any]) -> None:
        for event in events:
            self._server._record(self._resource, event)
        await self._server.history.notify()


class _Recorders(dict[kmock.resource, _Recorder]):
    def __init__(self, server: ApiServer) -> None:
        super().__init__()
        self._server = server

    def __missing__(self, resource: kmock.resource) -> _Recorder:
        self[resource] = _Recorder(self._server, resource)
        return self[resource]


def _status_error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(
        status=status, reason=reason, message=message, details={"causes": [{"message": message}]}
    )


#: The actions that change what is stored.
_WRITES = frozenset({kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE})

#: Namespaces themselves, which KMock's path parser takes for a namespace prefix.
_NAMESPACE_PATH = re.compile(r"/api/v1/namespaces(?:/([^/]+))?")


async def _namespace_request(raw: aiohttp.web.BaseRequest, name: str | None) -> kmock.Request:
    """The request for `/api/v1/namespaces[/NAME]`, parsed as KMock would parse any other."""
    body = await raw.read()
    text = body.decode(errors="replace")
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    method = raw.method.upper()
    action: kmock.action | None
    if method == "GET" and raw.query.get("watch") == "true":
        action = kmock.action.WATCH
    elif name is None:
        action = {"GET": kmock.action.LIST, "POST": kmock.action.CREATE}.get(method)
    else:
        action = {
            "GET": kmock.action.FETCH,
            "PATCH": kmock.action.UPDATE,
            "DELETE": kmock.action.DELETE,
        }.get(method)
    return kmock.Request(
        raw_request=raw,
        url=raw.url,
        method=raw.method,
        params=dict(raw.query),
        headers=dict(raw.headers),
        cookies=dict(raw.cookies),
        body=body,
        text=text,
        data=data,
        action=action,
        resource=kmock.resource("", "v1", "namespaces"),
        namespace=None,
        name=name,
    )


async def _as_json(raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.BaseRequest:
    """A protobuf request as the same request in JSON (415 for a kind this server cannot read)."""
    headers = CIMultiDict(raw_request.headers)
    headers["Content-Type"] = "application/json"
    headers.pop("Content-Length", None)
    request = raw_request.clone(headers=headers)
    try:
        data = protobuf.decode(await request.read())
    except protobuf.ProtobufError as exc:
        raise _status_error(415, "UnsupportedMediaType", str(exc)) from None
    # The body is read: the JSON takes its place, as if the client had sent it.
    request._read_bytes = json.dumps(data).encode()
    return request


def _user(request: kmock.Request) -> rbac.User:
    """Who is asking: the impersonated user (`kubectl --as`), else the kubeconfig's admin."""
    raw = request._raw_request
    impersonated = raw.headers.get("Impersonate-User") if raw is not None else None
    if not impersonated or raw is None:
        return rbac.User("emulator-admin", (rbac.SUPERUSERS, "system:authenticated"))
    return rbac.service_account(impersonated, raw.headers.getall("Impersonate-Group", []))


def _wants_table(request: kmock.Request) -> bool:
    return "as=Table" in str(request.headers.get("Accept", ""))


def _selector(request: kmock.Request) -> Selector:
    """The request's label and field selectors as one `Selector` (400 if malformed)."""
    try:
        labels = parse_label_selector(str(request.params.get("labelSelector", "")))
        fields = parse_field_selector(str(request.params.get("fieldSelector", "")))
    except SelectorError as exc:
        raise _status_error(400, "BadRequest", str(exc)) from None
    return Selector(labels.requirements + fields.requirements)


class ApiServer(kmock.KubernetesEmulator):
    """KMock's emulator with the fields and behaviours a real API server adds by itself."""

    def __init__(
        self, *, bookmark_interval: float = BOOKMARK_INTERVAL, history_size: int = HISTORY_SIZE
    ) -> None:
        super().__init__()
        self.bookmark_interval = bookmark_interval
        #: Every request, in arrival order.
        self.calls: list[ApiCall] = []
        #: Container logs, written by a kubelet fixture, served at `pods/NAME/log`.
        self.logs = PodLogs()
        #: The kubelets that run pods, for `pods/NAME/exec`: they add themselves.
        self.runtimes: list[PodRuntime] = []
        self._resource_version = 0
        #: Every change, for watches to resume from.
        self.history = WatchHistory(history_size)
        self._buses = cast(Any, _Recorders(self))
        self._serving: dict[int, kmock.Request] = {}
        #: Held by every write from its preconditions to its stored change, so that a check
        #: against the stored resourceVersion and the write it admits are one step, and
        #: versions are stored in the order they are handed out.
        self._write_lock = asyncio.Lock()
        # kubectl's client-side validation (`--dry-run=client`) reads OpenAPI v2 as protobuf:
        # an empty message is a document without schemas, which validates nothing away.
        self.fallback["get /openapi/v2"] << b""
        self.fallback["get /openapi/v3"] << self._serve_openapi_root
        self.fallback["get", re.compile(r"/openapi/v3/apis?/.+")] << self._serve_openapi_group

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

    # ---- writes by in-process controllers (a kubelet fixture) ---------------------------------

    async def store(
        self, resource: kmock.ResourceKey, namespace: str | None, body: dict[str, Any]
    ) -> None:
        """Create an object as a controller inside the server would, with a watch event."""
        key = kmock.resource(resource)
        metadata = body.setdefault("metadata", {})
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", now_rfc3339())
        async with self._write_lock, self._lock:
            metadata["resourceVersion"] = self._next_resource_version()
            self.objects[key, namespace, metadata["name"]] = body
            raw = self.objects[key, namespace, metadata["name"]].raw
            await self._buses[key].put({"type": "ADDED", "object": raw})

    async def patch_stored(
        self, resource: kmock.ResourceKey, namespace: str, name: str, patch: dict[str, Any]
    ) -> None:
        """Merge `patch` into a stored object (e.g. its status), with a watch event."""
        key = kmock.resource(resource)
        async with self._write_lock, self._lock:
            stored = self.find(key, namespace, name)
            if stored is None:
                return
            version = self._next_resource_version()
            stored.patch(
                {**patch, "metadata": {**patch.get("metadata", {}), "resourceVersion": version}}
            )
            await self._buses[key].put({"type": "MODIFIED", "object": stored.raw})

    async def remove(self, resource: kmock.ResourceKey, namespace: str, name: str) -> None:
        """Delete a stored object if it is there, with a watch event."""
        key = kmock.resource(resource)
        async with self._write_lock, self._lock:
            stored = self.find(key, namespace, name)
            if stored is None:
                return
            raw = stored.raw
            stored.delete()
            await self._buses[key].put({"type": "DELETED", "object": raw})

    # ---- what the API server assigns itself ----------------------------------------------------

    def _next_resource_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def _assign_fields(self, request: kmock.Request) -> None:
        """Stamp the request's body with the fields the API server owns, before KMock stores it."""
        data = request.data
        if request.action == kmock.action.CREATE and isinstance(data, dict):
            # The server's own fields, whatever the body says (a restored backup carries old
            # ones); with a status subresource, the status is not the creator's to set.
            metadata = data.setdefault("metadata", {})
            metadata["uid"] = str(uuid.uuid4())
            metadata["creationTimestamp"] = now_rfc3339()
            metadata["resourceVersion"] = self._next_resource_version()
            metadata["generation"] = 1
            info = self.resources.get(request.resource, None) if request.resource else None
            if "status" in getattr(info, "subresources", ()):
                data.pop("status", None)
            if request.namespace and not metadata.get("namespace"):
                metadata["namespace"] = request.namespace
            if request.resource == SECRETS:
                data.setdefault("type", "Opaque")
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

    # ---- what kubectl needs -------------------------------------------------------------------

    def _api_version(self, resource: kmock.ResourceKey) -> str:
        key = kmock.resource(resource)
        return f"{key.group}/{key.version}" if key.group else str(key.version)

    def _kind(self, resource: kmock.ResourceKey) -> str:
        key = kmock.resource(resource)
        kind = getattr(self.resources.get(key, None), "kind", None)
        return str(kind) if kind else str(key.plural).capitalize()

    def _columns(self, resource: kmock.ResourceKey) -> list[printing.Column]:
        """The stored CRD's printer columns for a custom resource, else the built-in ones."""
        key = kmock.resource(resource)
        for crd in self.find_all(CRDS, None):
            spec = crd.get("spec") or {}
            if spec.get("group") != key.group or spec.get("names", {}).get("plural") != key.plural:
                continue
            for version in spec.get("versions") or []:
                if version.get("name") == key.version:
                    columns = version.get("additionalPrinterColumns")
                    return (
                        printing.crd_columns(columns) if columns else [printing.NAME, printing.AGE]
                    )
        return printing.BUILT_IN.get(self._kind(resource), printing.DEFAULT)

    def _as_table(self, request: kmock.Request, objects: list[dict[str, Any]]) -> dict[str, Any]:
        assert request.resource is not None
        return printing.table(
            objects,
            self._columns(request.resource),
            now=datetime.now(UTC),
            resource_version=str(self.history.latest),
            include_object=str(request.params.get("includeObject", "Metadata")),
        )

    def _selected(self, request: kmock.Request) -> list[dict[str, Any]]:
        assert request.resource is not None
        selector = _selector(request)
        found = [
            stored.raw
            for (resource, namespace, _), stored in list(self.objects.items())
            if resource == request.resource
            and not stored.deleted
            and (request.namespace is None or namespace == request.namespace)
        ]
        return sorted(
            (obj for obj in found if selector.matches(obj)),
            key=lambda obj: (obj["metadata"].get("namespace") or "", obj["metadata"]["name"]),
        )

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        if request.resource is None or request.resource not in self._get_resources():
            raise kmock.KubernetesResourceNotFoundError()
        objects = self._selected(request)
        if _wants_table(request):
            return self._as_table(request, objects)
        metadata: dict[str, Any] = {"resourceVersion": str(self.history.latest)}
        # Chunking as a real server does it: `limit` items a page, `continue` for the rest.
        start = int(str(request.params.get("continue") or "0"))
        limit = int(str(request.params.get("limit") or "0"))
        if limit > 0:
            if start + limit < len(objects):
                metadata["continue"] = str(start + limit)
            objects = objects[start : start + limit]
        return {
            "apiVersion": self._api_version(request.resource),
            "kind": f"{self._kind(request.resource)}List",
            "metadata": metadata,
            "items": objects,
        }

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        assert request.resource is not None
        stored = self.find(request.resource, request.namespace, request.name or "")
        if stored is None:
            kind = kmock.resource(request.resource).plural
            raise _status_error(404, "NotFound", f'{kind} "{request.name}" not found')
        if _wants_table(request):
            return self._as_table(request, [stored.raw])
        return stored.raw

    async def _serve_version(self, request: kmock.Request) -> kmock.Payload:
        """KMock's resource list, with the core group's `groupVersion: v1` (not `/v1`)."""
        served = await super()._serve_version(request)
        assert isinstance(served, dict) and request.resource is not None
        if request.resource.group == "":
            served["groupVersion"] = str(request.resource.version)
        for entry in served.get("resources", []):
            if "/" in entry["name"]:
                entry.update(shortNames=[], categories=[], verbs=["get", "patch", "update"])
        return served

    def _group_versions(self) -> dict[str, list[kmock.resource]]:
        served: dict[str, list[kmock.resource]] = {}
        for resource in self._get_resources():
            key = (
                f"api/{resource.version}"
                if not resource.group
                else (f"apis/{resource.group}/{resource.version}")
            )
            served.setdefault(key, []).append(resource)
        return served

    async def _serve_openapi_root(self, request: kmock.Request) -> kmock.Payload:
        """The OpenAPI v3 index, so kubectl validates on the server (`fieldValidation`)."""
        return {
            "paths": {
                path: {"serverRelativeURL": f"/openapi/v3/{path}"}
                for path in self._group_versions()
            }
        }

    async def _serve_openapi_group(self, request: kmock.Request) -> kmock.Payload:
        """One group version's OpenAPI document: only what says PATCH takes
        `fieldValidation` (schemas are the server's to check, as with `--validate=strict`)."""
        path = request.url.path.removeprefix("/openapi/v3/")
        resources = self._group_versions().get(path)
        if resources is None:
            raise kmock.KubernetesNotFoundError()
        paths: dict[str, Any] = {}
        for resource in resources:
            info = self.resources.get(resource, None)
            scope = "namespaces/{namespace}/" if getattr(info, "namespaced", True) else ""
            gvk = {
                "group": resource.group,
                "version": resource.version,
                "kind": self._kind(resource),
            }
            paths[f"/{path}/{scope}{resource.plural}/{{name}}"] = {
                "patch": {
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": gvk,
                    "parameters": [
                        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                        {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
                    ],
                }
            }
        return {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": "v1.32"},
            "paths": paths,
        }

    def _check_preconditions(self, request: kmock.Request) -> None:
        """409 for a stale resourceVersion, 422 for a failed JSON patch test, as served."""
        if request.action != kmock.action.UPDATE or request.resource is None or not request.name:
            return
        stored = self.find(request.resource, request.namespace, request.name)
        if stored is None:
            return
        current = str((stored.get("metadata") or {}).get("resourceVersion") or "")
        data = request.data
        if isinstance(data, dict):
            sent = (data.get("metadata") or {}).get("resourceVersion")
            if sent and str(sent) != current:
                kind = kmock.resource(request.resource).plural
                raise _status_error(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {kind} "{request.name}": the object has '
                    "been modified; please apply your changes to the latest version and try again",
                )
        elif isinstance(data, list):
            for op in data:
                if op.get("op") != "test":
                    continue
                path = str(op.get("path", ""))
                actual = printing.jsonpath_value(stored.raw, path.replace("/", "."))
                if actual != op.get("value"):
                    raise _status_error(
                        422, "Invalid", f"the test of {path} failed: it is {actual!r}"
                    )

    def _rewrite_patch(self, request: kmock.Request) -> bool:
        """Turn a strategic merge or apply patch, or a replace (PUT), into the merge patch
        KMock applies; a replace keeps the fields the server owns.

        Returns True when the request is a server-side apply of an object not stored yet
        (which creates it).
        """
        content_type = str(request.headers.get("Content-Type", ""))
        if request.action != kmock.action.UPDATE or request.resource is None or not request.name:
            return False
        replace = request.method == kmock.method.PUT
        if not replace and not (
            "strategic-merge-patch" in content_type or "apply-patch" in content_type
        ):
            return False
        patch = request.data
        if "apply-patch" in content_type and not isinstance(patch, dict):
            patch = yaml.safe_load(request.text)
        if not isinstance(patch, dict):
            raise _status_error(400, "BadRequest", "the patch is not an object")
        stored = self.find(request.resource, request.namespace, request.name)
        if stored is None:
            if "apply-patch" in content_type:
                return True
            raise kmock.KubernetesObjectNotFoundError()
        patch.get("metadata", {}).pop(
            "resourceVersion", None
        ) if "apply-patch" in content_type else None
        if replace:
            owned = ("uid", "creationTimestamp", "namespace", "generation", "resourceVersion")
            metadata = stored.get("metadata") or {}
            kept = {key: metadata[key] for key in owned if key in metadata}
            wanted = {**patch, "metadata": {**(patch.get("metadata") or {}), **kept}}
        else:
            wanted = strategic_merge(stored.raw, patch)
        change = merge_patch_between(stored.raw, wanted)
        object.__setattr__(request, "data", change)
        return False

    async def _apply_create(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """Server-side apply of an object that does not exist yet: create it."""
        assert request.resource is not None and request.name
        body = yaml.safe_load(request.text)
        metadata = body.setdefault("metadata", {})
        metadata.update(
            name=request.name,
            uid=str(uuid.uuid4()),
            creationTimestamp=now_rfc3339(),
            resourceVersion=self._next_resource_version(),
            generation=1,
        )
        if request.namespace:
            metadata["namespace"] = request.namespace
        async with self._lock:
            self.objects[request.resource, request.namespace, request.name] = body
            raw = self.objects[request.resource, request.namespace, request.name].raw
            await self._buses[kmock.resource(request.resource)].put(
                {"type": "ADDED", "object": raw}
            )
        return aiohttp.web.json_response(raw, status=201)

    def _everywhere(self, resource: str) -> list[dict[str, Any]]:
        wanted = kmock.resource(resource)
        return [
            stored.raw
            for (stored_resource, _, _), stored in list(self.objects.items())
            if stored_resource == wanted and not stored.deleted
        ]

    def _policy(self) -> rbac.Policy:
        """The stored RBAC objects, and the bootstrap policy every cluster has."""
        base = rbac.BASIC_USER
        return rbac.Policy(
            roles=self._everywhere("rbac.authorization.k8s.io/v1/roles"),
            cluster_roles=[
                *base.cluster_roles,
                *self._everywhere("rbac.authorization.k8s.io/v1/clusterroles"),
            ],
            role_bindings=self._everywhere("rbac.authorization.k8s.io/v1/rolebindings"),
            cluster_role_bindings=[
                *base.cluster_role_bindings,
                *self._everywhere("rbac.authorization.k8s.io/v1/clusterrolebindings"),
            ],
        )

    def _authorize(self, request: kmock.Request) -> None:
        """403 for what the requesting user's RBAC does not allow (only impersonated users,
        `kubectl --as=…`, are anyone but the admin)."""
        user = _user(request)
        if request.resource is None or rbac.SUPERUSERS in user.groups:
            return
        namespace = request.namespace or ""
        if not namespace and request.action == kmock.action.CREATE:
            namespace = str(((request.data or {}).get("metadata") or {}).get("namespace") or "")
        asked = rbac.Attributes(
            verb=rbac.request_verb(
                str(request.method.value).upper(),
                watch=request.action == kmock.action.WATCH,
                named=bool(request.name),
                subresource=request.subresource or "",
            ),
            resource=str(request.resource.plural or ""),
            group=str(request.resource.group or ""),
            subresource=request.subresource or "",
            namespace=namespace,
            name=request.name or "",
        )
        if not rbac.decide(self._policy(), user, asked).allowed:
            raise _status_error(403, "Forbidden", rbac.forbidden(user, asked))

    def _review(self, request: kmock.Request) -> dict[str, Any]:
        """A (Self)SubjectAccessReview answered by RBAC over the stored roles and bindings."""
        review = request.data if isinstance(request.data, dict) else {}
        spec = review.get("spec") or {}
        if not isinstance(spec, dict) or not (
            spec.get("resourceAttributes") or spec.get("nonResourceAttributes")
        ):
            raise _status_error(
                400, "BadRequest", "spec.resourceAttributes or nonResourceAttributes is required"
            )
        assert request.resource is not None
        if request.resource.plural == "subjectaccessreviews":
            user = rbac.service_account(str(spec.get("user", "")), spec.get("groups") or [])
        else:
            user = _user(request)
        decision = rbac.decide(self._policy(), user, rbac.Attributes.from_review(spec))
        status: dict[str, Any] = {"allowed": decision.allowed}
        if decision.reason:
            status["reason"] = decision.reason
        return {**review, "metadata": {"creationTimestamp": None}, "status": status}

    def _pod_metrics(self, request: kmock.Request) -> dict[str, Any]:
        """PodMetrics of the pods a kubelet runs (`kuberde.testing.metrics`), as a
        metrics-server serves them: listed with the pods' selectors, or one by name."""
        found = [
            metrics.pod_metrics(pod, usage)
            for pod in self._selected(attrs.evolve(request, resource=kmock.resource("v1/pods")))
            if (not request.name or pod["metadata"]["name"] == request.name)
            for usage in [self._usage(pod)]
            if usage is not None
        ]
        if request.name:
            if not found:
                raise _status_error(404, "NotFound", f'podmetrics "{request.name}" not found')
            return found[0]
        return {
            "kind": "PodMetricsList",
            "apiVersion": "metrics.k8s.io/v1beta1",
            "metadata": {},
            "items": found,
        }

    def _usage(self, pod: Mapping[str, Any]) -> dict[str, metrics.Usage] | None:
        metadata = pod["metadata"]
        for runtime in self.runtimes:
            usage = runtime.usage(str(metadata.get("namespace") or ""), metadata["name"])
            if usage is not None:
                return usage
        return None

    async def _serve_exec(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """`pods/NAME/exec`: the command runs in the pod's container (`streaming`)."""
        namespace, name = request.namespace or "", request.name or ""
        pod = self.find("v1/pods", namespace, name)
        if pod is None:
            raise _status_error(404, "NotFound", f'pods "{name}" not found')
        raw_request = request._raw_request
        assert raw_request is not None
        containers = [str(item["name"]) for item in pod.raw["spec"].get("containers") or []]
        container = str(request.params.get("container") or (containers[0] if containers else ""))
        command = raw_request.query.getall("command", [])
        if not command:
            raise _status_error(400, "BadRequest", "you must specify at least 1 command")
        if container not in containers:
            raise _status_error(
                400, "BadRequest", f"container {container} is not valid for pod {name}"
            )
        if raw_request.headers.get("Upgrade", "").lower() != "websocket":
            raise _status_error(
                400,
                "BadRequest",
                "exec is served over WebSocket (v5.channel.k8s.io, kubectl 1.30 and later); "
                "an SPDY/3.1 upgrade (older kubectl) is not",
            )
        for runtime in self.runtimes:
            target = runtime.exec_target(namespace, name, container)
            if target is not None:
                env, cwd = target
                return await streaming.serve_exec(raw_request, command, env, cwd)
        raise _status_error(
            400, "BadRequest", f"container {container} in pod {name} is not running"
        )

    async def _serve_log(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """`GET pods/NAME/log`: what the kubelet fixture recorded for the pod's container."""
        namespace, name = request.namespace or "", request.name or ""
        pod = self.find("v1/pods", namespace, name)
        if pod is None:
            raise _status_error(404, "NotFound", f'pods "{name}" not found')
        params = request.params
        containers = [str(item["name"]) for item in pod.raw["spec"].get("containers") or []]
        container = str(params.get("container") or (containers[0] if containers else ""))
        if container not in containers:
            raise _status_error(
                400, "BadRequest", f"container {container} is not valid for pod {name}"
            )
        previous = params.get("previous") == "true"
        log = self.logs.get(namespace, name, container, previous=previous)
        if log is None and previous:
            raise _status_error(
                400, "BadRequest", f'previous terminated container in pod "{name}" not found'
            )
        since = float(params["sinceSeconds"]) if "sinceSeconds" in params else None
        tail = int(params["tailLines"]) if "tailLines" in params else None
        raw_request = request._raw_request
        assert raw_request is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(raw_request)
        lines = [] if log is None else log.select(since_seconds=since, tail=tail)
        for line in lines:
            await response.write(line)
        sent = 0 if log is None else len(log.lines)
        while log is not None and params.get("follow") == "true" and not log.closed:
            await log.changed()
            for _, line in log.lines[sent:]:
                await response.write(line)
            sent = len(log.lines)
        await response.write_eof()
        return response

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
        async with self._write_lock, self._lock:
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

    async def _serve_watch_stream(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """A watch's events as JSON lines (`application/json`, which kubectl decodes)."""
        events = self._watch_events(request)
        raw_request = request._raw_request
        assert raw_request is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw_request)
        with contextlib.suppress(ConnectionError):
            async for event in events:
                await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
        return response

    def _watch_events(self, request: kmock.Request) -> AsyncIterator[dict[str, Any]]:
        """A watch as a real API server serves it, from the change history (`watching`).

        Without `resourceVersion` (or with "0") it starts with the current objects as ADDED
        events; from `resourceVersion=N` it sends exactly the changes after N (an ERROR
        `410 Expired` when they are no longer kept). BOOKMARKs on a quiet stream and the end
        of `sendInitialEvents` when the client allows them; it ends after `timeoutSeconds`.
        A malformed request is refused here, before the stream starts.
        """
        asked = str(request.params.get("resourceVersion") or "0")
        if not asked.isdigit():
            raise _status_error(400, "BadRequest", f"invalid resourceVersion: {asked}")
        timeout = request.params.get("timeoutSeconds")
        try:
            deadline = None if timeout is None else time.monotonic() + float(str(timeout))
        except ValueError:
            raise _status_error(400, "BadRequest", f"invalid timeoutSeconds: {timeout}") from None
        return self._changes(request, _selector(request), int(asked), deadline)

    async def _changes(
        self, request: kmock.Request, selector: Selector, version: int, deadline: float | None
    ) -> AsyncIterator[dict[str, Any]]:
        resource = request.resource
        assert resource is not None
        params = request.params
        bookmarks = params.get("allowWatchBookmarks") == "true"
        initial = params.get("sendInitialEvents") == "true"
        table = _wants_table(request)
        kind = {"apiVersion": self._api_version(resource), "kind": self._kind(resource)}

        def shown(event: dict[str, Any]) -> dict[str, Any]:
            return (
                {**event, "object": self._as_table(request, [event["object"]])} if table else event
            )

        def wanted(change: Change) -> bool:
            metadata = change.event["object"].get("metadata") or {}
            return (
                change.resource == resource
                and (request.namespace is None or change.namespace == request.namespace)
                and (not request.name or metadata.get("name") == request.name)
                and selector.matches(change.event["object"])
            )

        def bookmark(at: int, **annotations: str) -> dict[str, Any]:
            metadata: dict[str, Any] = {"resourceVersion": str(at)}
            if annotations:
                metadata["annotations"] = annotations
            return {"type": "BOOKMARK", "object": {**kind, "metadata": metadata}}

        if version == 0 or initial:
            version = self.history.latest
            for obj in self._selected(request):
                yield shown({"type": "ADDED", "object": obj})
            if initial and bookmarks:
                yield bookmark(version, **{"k8s.io/initial-events-end": "true"})
        while deadline is None or time.monotonic() < deadline:
            try:
                changes = self.history.since(version)
            except Expired as exc:
                yield {"type": "ERROR", "object": _status(410, "Expired", str(exc))}
                return
            for change in changes:
                if wanted(change):
                    yield shown(change.event)
            version = changes[-1].version if changes else version
            waits = [self.bookmark_interval] if bookmarks else []
            if deadline is not None:
                waits.append(max(0.0, deadline - time.monotonic()))
            quiet = not await self.history.wait(version, min(waits) if waits else None)
            if quiet and bookmarks and (deadline is None or time.monotonic() < deadline):
                yield bookmark(version)

    def _record(self, resource: kmock.resource, event: dict[str, Any]) -> None:
        """Keep a change in the history at its object's resourceVersion, or at a new one where
        the change carries none of its own (a deletion, or KMock marking one), as a real API
        server does; the stored object's last state then carries that version too, so that
        the DELETE's answer, the event and any later read of the object agree."""
        obj = event["object"]
        metadata = obj.get("metadata") or {}
        version = int(str(metadata.get("resourceVersion") or 0))
        if version <= self.history.latest:
            version = int(self._next_resource_version())
            metadata = {**metadata, "resourceVersion": str(version)}
            obj = {**obj, "metadata": metadata}
            key = (resource, metadata.get("namespace") or None, str(metadata.get("name")))
            if key in self.objects:
                self.objects[key].last["metadata"] = dict(metadata)
        self.history.record(resource, {**event, "object": obj}, version)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        namespace_path = _NAMESPACE_PATH.fullmatch(raw_request.path)
        protobuf = "protobuf" in raw_request.headers.get("Content-Type", "")
        if namespace_path is None and not protobuf:
            return await super().__call__(raw_request)
        try:
            if protobuf:
                raw_request = await _as_json(raw_request)
            if namespace_path is not None:
                request = await _namespace_request(raw_request, namespace_path.group(1))
            else:
                request = await kmock.Request._parse(raw_request)
            return await self._handle(request)
        except Exception as exc:
            return await self._render_error(exc)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        user_agent = str(request.headers.get("User-Agent", ""))
        self.calls.append(ApiCall(str(request.method.value).upper(), request.url.path, user_agent))
        if request.method == kmock.method.PUT and request.resource is not None and request.name:
            # A replace, which KMock does not serve: an update (`_rewrite_patch`).
            if not isinstance(request.data, dict):
                raise _status_error(
                    400, "BadRequest", "the object to replace with is not an object"
                )
            request = attrs.evolve(request, action=kmock.action.UPDATE)
        self._serving[id(request)] = request
        owners_gone: set[str] = set()
        try:
            self._authorize(request)
            if request.resource is not None and request.subresource == "log":
                return await self._serve_log(request)
            if request.resource == metrics.PODS and request.action in (
                kmock.action.LIST,
                kmock.action.FETCH,
            ):
                return aiohttp.web.json_response(self._pod_metrics(request))
            if request.resource is not None and request.subresource == "exec":
                return await self._serve_exec(request)
            if request.resource is not None and request.subresource in ("portforward", "attach"):
                raise _status_error(
                    400,
                    "BadRequest",
                    f"pods/{request.subresource} is not served here: kubectl speaks SPDY/3.1 "
                    "for it (over WebSocket or by upgrade), which the emulated kubelet does not",
                )
            if request.resource is not None and request.action == kmock.action.WATCH:
                return await self._serve_watch_stream(request)
            if (
                request.resource is not None
                and request.resource.group == "authorization.k8s.io"
                and request.resource.plural in REVIEWS
                and request.action == kmock.action.CREATE
            ):
                return aiohttp.web.json_response(self._review(request), status=201)
            writing = request.resource is not None and request.action in _WRITES
            async with self._write_lock if writing else contextlib.nullcontext():
                if writing:
                    self._check_preconditions(request)
                    if self._rewrite_patch(request):
                        return await self._apply_create(request)
                    self._assign_fields(request)
                    owners_gone = self._owners_gone_after(request)
                response = await super()._handle(request)
            if (
                request.action == kmock.action.CREATE
                and response.status == 200
                and not response.prepared
            ):
                # Created, as a real API server answers a create (KMock answers 200).
                response.set_status(201)
        finally:
            del self._serving[id(request)]
        if owners_gone:
            await self._collect_garbage(owners_gone)
        return response


def emulator(
    *, bookmark_interval: float = BOOKMARK_INTERVAL, history_size: int = HISTORY_SIZE
) -> ApiServer:
    """An API server that serves the bundled Kubernetes resources and RDEAgents."""
    server = ApiServer(bookmark_interval=bookmark_interval, history_size=history_size)
    server.resources.load_bundled()
    server.resources[RDEAGENTS] = kmock.ResourceInfo(
        kind="RDEAgent",
        singular="rdeagent",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
        shortnames={"rde"},
        subresources={"status"},
    )
    server.resources[metrics.PODS] = kmock.ResourceInfo(
        kind="PodMetrics", singular="", namespaced=True, verbs={"get", "list"}
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
