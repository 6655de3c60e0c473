"""The emulated API server answers as a real one does where clients depend on it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import kmock
import pytest

from kuberde.testing.kube import ApiServer, emulator

AGENTS = "/apis/kuberde.io/v1/namespaces/kuberde/rdeagents"
PODS = "/api/v1/namespaces/kuberde/pods"


@pytest.fixture
def server() -> ApiServer:
    return emulator()


@pytest.fixture
async def api(server: ApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with server, kmock.Server(server) as http_server:
        url = str(http_server.url).rstrip("/")
        async with aiohttp.ClientSession(
            base_url=url, timeout=aiohttp.ClientTimeout(total=10)
        ) as http:
            yield http


async def _create(api: aiohttp.ClientSession, name: str) -> dict[str, object]:
    body = {
        "apiVersion": "kuberde.io/v1",
        "kind": "RDEAgent",
        "metadata": {"name": name},
        "spec": {"owner": "alice"},
        "status": {"phase": "Running"},
    }
    async with api.post(AGENTS, json=body) as response:
        assert response.status == 201, "a create is answered 201 Created"
        created: dict[str, object] = await response.json()
        return created


async def test_a_stale_resource_version_is_a_conflict(api: aiohttp.ClientSession) -> None:
    created = await _create(api, "a")
    assert "status" not in created, "a status subresource is not the creator's to set"
    version = created["metadata"]["resourceVersion"]  # type: ignore[index]
    merge = {"Content-Type": "application/merge-patch+json"}
    fresh = {"metadata": {"resourceVersion": version}, "spec": {"ttl": "5m"}}
    async with api.patch(f"{AGENTS}/a", data=json.dumps(fresh), headers=merge) as response:
        assert response.status == 200
    async with api.patch(f"{AGENTS}/a", data=json.dumps(fresh), headers=merge) as response:
        assert response.status == 409
        status = await response.json()
        assert status["reason"] == "Conflict" and "modified" in status["message"]
    async with api.get(f"{AGENTS}/a") as response:
        assert (await response.json())["spec"]["ttl"] == "5m", "the stale write changed nothing"


Write = tuple[str, str, object, int]


def _replace(stored: dict[str, Any], ttl: str) -> Write:
    """`kubectl replace`: the whole object, as read, with a change."""
    return "PUT", "application/json", {**stored, "spec": {**stored["spec"], "ttl": ttl}}, 409


def _merge_patch(stored: dict[str, Any], ttl: str) -> Write:
    version = stored["metadata"]["resourceVersion"]
    body = {"metadata": {"resourceVersion": version}, "spec": {"ttl": ttl}}
    return "PATCH", "application/merge-patch+json", body, 409


def _guarded_json_patch(stored: dict[str, Any], ttl: str) -> Write:
    """The write the operator's Lease election and guarded patches send."""
    body = [
        {
            "op": "test",
            "path": "/metadata/resourceVersion",
            "value": stored["metadata"]["resourceVersion"],
        },
        {"op": "add", "path": "/spec/ttl", "value": ttl},
    ]
    return "PATCH", "application/json-patch+json", body, 422


@pytest.mark.parametrize("write", [_replace, _merge_patch, _guarded_json_patch])
async def test_concurrent_writes_of_one_version_admit_exactly_one(
    server: ApiServer, api: aiohttp.ClientSession, write: Callable[[dict[str, Any], str], Write]
) -> None:
    """Writes that all carry the same resourceVersion and queue behind a held store (as
    behind an in-process writer) are checked one after another: one wins, the rest lose."""
    created = await _create(api, "a")
    count = 8
    writes = [write(created, f"{index}m") for index in range(count)]

    async def send(method: str, content_type: str, body: object) -> tuple[int, dict[str, object]]:
        data, headers = json.dumps(body), {"Content-Type": content_type}
        async with api.request(method, f"{AGENTS}/a", data=data, headers=headers) as response:
            return response.status, await response.json()

    before = len(server.calls)
    async with server._lock:
        sent = [asyncio.create_task(send(*write[:3])) for write in writes]
        deadline = time.monotonic() + 10
        while len(server.calls) < before + count:
            assert time.monotonic() < deadline, "the writes never reached the server"
            await asyncio.sleep(0.01)
    answers = await asyncio.wait_for(asyncio.gather(*sent), timeout=10)
    winners = [body for status, body in answers if status == 200]
    assert len(winners) == 1, [status for status, _ in answers]
    refused = writes[0][3]
    for status, body in answers:
        if status != 200:
            assert status == refused
            assert (body["kind"], body["apiVersion"], body["status"], body["code"]) == (
                "Status",
                "v1",
                "Failure",
                refused,
            )
            assert body["reason"] == ("Conflict" if refused == 409 else "Invalid")
    async with api.get(f"{AGENTS}/a") as response:
        stored = await response.json()
    assert stored["spec"]["ttl"] == winners[0]["spec"]["ttl"]  # type: ignore[index]
    assert stored["metadata"]["resourceVersion"] == winners[0]["metadata"]["resourceVersion"]  # type: ignore[index]


async def test_a_replace_is_the_whole_object_with_the_servers_fields_kept(
    api: aiohttp.ClientSession,
) -> None:
    created = await _create(api, "a")
    body: dict[str, Any] = {
        "apiVersion": "kuberde.io/v1",
        "kind": "RDEAgent",
        "metadata": {"name": "a"},
    }
    async with api.put(f"{AGENTS}/a", json={**body, "spec": {"ttl": "1h"}}) as response:
        assert response.status == 200
        replaced = await response.json()
    assert replaced["spec"] == {"ttl": "1h"}, "what the body leaves out is gone"
    for field in ("uid", "creationTimestamp", "namespace"):
        assert replaced["metadata"][field] == created["metadata"][field]  # type: ignore[index]
    assert replaced["metadata"]["generation"] == 2
    stale = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}, "spec": {}}
    async with api.put(f"{AGENTS}/a", json=stale) as response:
        assert response.status == 409
    async with api.put(f"{AGENTS}/a", json=["not", "an", "object"]) as response:
        assert response.status == 400
    async with api.put(f"{AGENTS}/missing", json=body) as response:
        assert response.status == 404
    async with api.get(f"{AGENTS}/a") as response:
        assert (await response.json())["spec"] == {"ttl": "1h"}, (
            "the refused writes changed nothing"
        )


async def _events_since(
    api: aiohttp.ClientSession, path: str, version: str
) -> list[dict[str, Any]]:
    params = {"watch": "true", "resourceVersion": version, "timeoutSeconds": "1"}
    async with api.get(path, params=params) as response:
        return [json.loads(line) for line in (await response.text()).splitlines()]


async def test_a_deleted_objects_last_state_carries_the_deletes_version(
    server: ApiServer, api: aiohttp.ClientSession
) -> None:
    """The DELETE's answer, the DELETED event and the stored final state agree on the
    delete's own resourceVersion, for a delete asked for and one the garbage collector does."""
    owner = await _create(api, "owner")
    owner_metadata: dict[str, Any] = owner["metadata"]  # type: ignore[assignment]
    reference = {
        "apiVersion": "kuberde.io/v1",
        "kind": "RDEAgent",
        "name": "owner",
        "uid": owner_metadata["uid"],
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "dependent", "ownerReferences": [reference]},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
    }
    async with api.post(PODS, json=pod) as response:
        assert response.status == 201
        pod_version = (await response.json())["metadata"]["resourceVersion"]
    async with api.delete(f"{AGENTS}/owner") as response:
        assert response.status == 200
        deleted_version = (await response.json())["metadata"]["resourceVersion"]
    assert int(deleted_version) > int(pod_version)
    events = await _events_since(api, AGENTS, owner_metadata["resourceVersion"])
    assert [
        (event["type"], event["object"]["metadata"]["resourceVersion"]) for event in events
    ] == [("DELETED", deleted_version)]
    (collected,) = await _events_since(api, PODS, pod_version)
    assert collected["type"] == "DELETED"
    assert int(collected["object"]["metadata"]["resourceVersion"]) > int(deleted_version)
    for resource, name, event_version in [
        ("kuberde.io/v1/rdeagents", "owner", deleted_version),
        ("v1/pods", "dependent", collected["object"]["metadata"]["resourceVersion"]),
    ]:
        final = server.objects[resource, "kuberde", name]
        assert final.deleted
        assert final.last["metadata"]["resourceVersion"] == event_version


async def test_a_failed_json_patch_test_is_refused(api: aiohttp.ClientSession) -> None:
    await _create(api, "a")
    patch = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "0"},
        {"op": "add", "path": "/spec/ttl", "value": "1h"},
    ]
    headers = {"Content-Type": "application/json-patch+json"}
    async with api.patch(f"{AGENTS}/a", data=json.dumps(patch), headers=headers) as response:
        assert response.status == 422
    async with api.get(f"{AGENTS}/a") as response:
        assert "ttl" not in (await response.json())["spec"]


async def test_server_side_apply_creates_then_merges(api: aiohttp.ClientSession) -> None:
    headers = {"Content-Type": "application/apply-patch+yaml"}
    document = (
        "apiVersion: kuberde.io/v1\nkind: RDEAgent\nmetadata: {name: b}\nspec: {owner: bob}\n"
    )
    async with api.patch(f"{AGENTS}/b?fieldManager=t", data=document, headers=headers) as response:
        assert response.status == 201
    again = document.replace("owner: bob}", "owner: bob, ttl: 1h}")
    async with api.patch(f"{AGENTS}/b?fieldManager=t", data=again, headers=headers) as response:
        assert response.status == 200
        assert (await response.json())["spec"] == {"owner": "bob", "ttl": "1h"}


async def test_lists_carry_their_kind_and_honour_selectors(api: aiohttp.ClientSession) -> None:
    await _create(api, "a")
    await _create(api, "b")
    async with api.get(AGENTS, params={"fieldSelector": "metadata.name=b"}) as response:
        listed = await response.json()
    assert (listed["kind"], listed["apiVersion"]) == ("RDEAgentList", "kuberde.io/v1")
    assert [item["metadata"]["name"] for item in listed["items"]] == ["b"]
    async with api.get(PODS, params={"labelSelector": "app in (x"}) as response:
        assert response.status == 400, "a malformed selector is the client's error"
    async with api.get("/api/v1") as response:
        assert (await response.json())["groupVersion"] == "v1"
    async with api.get(f"{PODS}/missing/log") as response:
        assert response.status == 404


def _field(number: int, value: bytes) -> bytes:
    """One length-delimited protobuf field (lengths under 128 here)."""
    return bytes([number << 3 | 2, len(value)]) + value


def _envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    type_meta = _field(1, api_version.encode()) + _field(2, kind.encode())
    return b"k8s\x00" + _field(1, type_meta) + _field(2, raw)


async def test_protobuf_is_read_for_the_kinds_kubectl_creates(api: aiohttp.ClientSession) -> None:
    headers = {"Content-Type": "application/vnd.kubernetes.protobuf"}
    metadata = _field(1, b"key") + _field(11, _field(1, b"app") + _field(2, b"x"))
    secret = _field(1, metadata) + _field(2, _field(1, b"pem") + _field(2, b"\x00\x01"))
    body = _envelope("v1", "Secret", secret)
    async with api.post("/api/v1/namespaces/kuberde/secrets", data=body, headers=headers) as r:
        assert r.status == 201, await r.text()
    async with api.get("/api/v1/namespaces/kuberde/secrets/key") as response:
        stored = await response.json()
    assert stored["data"] == {"pem": "AAE="} and stored["metadata"]["labels"] == {"app": "x"}
    assert stored["type"] == "Opaque", "defaulted, as a real API server does"
    pod = _envelope("v1", "Pod", _field(1, _field(1, b"p")))
    async with api.post(PODS, data=pod, headers=headers) as response:
        assert response.status == 415
        assert "no protobuf for Pod" in (await response.json())["message"]
    async with api.post(PODS, data=b"k8s\x00\n\x0c", headers=headers) as response:
        assert response.status == 415, "a truncated body"
    async with api.get(PODS) as response:
        assert response.status == 200, "the server keeps serving"


async def test_an_impersonated_user_gets_only_what_its_roles_allow(
    api: aiohttp.ClientSession,
) -> None:
    rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/kuberde"
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "reader", "namespace": "kuberde"},
        "rules": [{"apiGroups": ["kuberde.io"], "resources": ["rdeagents"], "verbs": ["list"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "reader", "namespace": "kuberde"},
        "roleRef": {"kind": "Role", "name": "reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "kuberde"}],
    }
    for path, body in ((f"{rbac}/roles", role), (f"{rbac}/rolebindings", binding)):
        async with api.post(path, json=body) as response:
            assert response.status == 201
    reader = {"Impersonate-User": "system:serviceaccount:kuberde:reader"}
    async with api.get(AGENTS, headers=reader) as response:
        assert response.status == 200
    async with api.post(AGENTS, json={"metadata": {"name": "x"}}, headers=reader) as response:
        assert response.status == 403
        assert (await response.json())["message"] == (
            'rdeagents is forbidden: User "system:serviceaccount:kuberde:reader" cannot create '
            'resource "rdeagents" in API group "kuberde.io" in the namespace "kuberde"'
        )
    async with api.get(AGENTS) as response:
        assert (await response.json())["items"] == [], "nothing was created"
    review = {"spec": {"resourceAttributes": {"verb": "list", "resource": "pods"}}}
    path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    async with api.post(path, json=review, headers=reader) as response:
        assert response.status == 201, "anyone may review their own access"
        assert (await response.json())["status"] == {"allowed": False}
