"""Watches on the emulated API server resume from a resourceVersion, as on a real one."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest

from kuberde.testing.cluster import REPOSITORY, kubectl_path
from kuberde.testing.kube import ApiServer, emulator, write_kubeconfig

AGENTS = "/apis/kuberde.io/v1/namespaces/kuberde/rdeagents"
WAIT = 20.0
MERGE = {"Content-Type": "application/merge-patch+json"}


@dataclass
class Served:
    server: ApiServer
    http: aiohttp.ClientSession
    kubeconfig: Path


@pytest.fixture
async def served(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    server = emulator(history_size=getattr(request, "param", 10_000))
    async with server, kmock.Server(server) as http_server:
        url = str(http_server.url).rstrip("/")
        kubeconfig = tmp_path / "kubeconfig"
        write_kubeconfig(kubeconfig, url, "kuberde")
        timeout = aiohttp.ClientTimeout(total=WAIT)
        async with aiohttp.ClientSession(base_url=url, timeout=timeout) as http:
            yield Served(server, http, kubeconfig)


async def _create(http: aiohttp.ClientSession, name: str) -> dict[str, Any]:
    body = {"apiVersion": "kuberde.io/v1", "kind": "RDEAgent", "metadata": {"name": name}}
    async with http.post(AGENTS, json={**body, "spec": {"owner": "alice"}}) as response:
        assert response.status in (200, 201)
        created: dict[str, Any] = await response.json()
        return created


async def _patch(http: aiohttp.ClientSession, name: str, ttl: str) -> None:
    patch = json.dumps({"spec": {"ttl": ttl}})
    async with http.patch(f"{AGENTS}/{name}", data=patch, headers=MERGE) as response:
        assert response.status == 200


async def _version(http: aiohttp.ClientSession) -> str:
    async with http.get(AGENTS) as response:
        version: str = (await response.json())["metadata"]["resourceVersion"]
        return version


async def _watch(http: aiohttp.ClientSession, **params: str) -> list[dict[str, Any]]:
    """Every event of a watch the server ends itself (after `timeoutSeconds`)."""
    query = {"watch": "true", "timeoutSeconds": "1", **params}
    async with http.get(AGENTS, params=query) as response:
        assert response.status == 200
        return [json.loads(line) async for line in response.content if line.strip()]


def _seen(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(event["type"], event["object"]["metadata"]["name"]) for event in events]


async def test_a_watch_from_a_version_gets_only_later_changes(served: Served) -> None:
    await _create(served.http, "a")
    await _create(served.http, "b")
    listed = await _version(served.http)
    await _patch(served.http, "a", "1h")
    async with served.http.delete(f"{AGENTS}/b") as response:
        assert response.status == 200
    events = await _watch(served.http, resourceVersion=listed)
    assert _seen(events) == [("MODIFIED", "a"), ("DELETED", "b")]
    versions = [int(event["object"]["metadata"]["resourceVersion"]) for event in events]
    assert int(listed) < versions[0] < versions[1], "each change has its own, later version"
    after = await _watch(served.http, resourceVersion=str(versions[-1]))
    assert after == [], "a watch resumed at the last event sees nothing again"
    replay = await _watch(served.http)
    assert _seen(replay) == [("ADDED", "a")], "without a version: the current objects"


async def test_a_quiet_watch_gets_bookmarks_only_when_it_allows_them(served: Served) -> None:
    served.server.bookmark_interval = 0.1
    await _create(served.http, "a")
    listed = await _version(served.http)
    plain = await _watch(served.http, resourceVersion=listed)
    assert plain == []
    marked = await _watch(served.http, resourceVersion=listed, allowWatchBookmarks="true")
    assert marked and {event["type"] for event in marked} == {"BOOKMARK"}
    assert marked[0]["object"]["metadata"]["resourceVersion"] == listed


@pytest.mark.parametrize("served", [2], indirect=True)
async def test_a_version_older_than_the_history_is_gone(served: Served) -> None:
    first = await _create(served.http, "a")
    for name in ("b", "c", "d"):
        await _create(served.http, name)
    events = await _watch(served.http, resourceVersion=first["metadata"]["resourceVersion"])
    assert [event["type"] for event in events] == ["ERROR"]
    assert (events[0]["object"]["code"], events[0]["object"]["reason"]) == (410, "Expired")
    recent = await _watch(served.http, resourceVersion=await _version(served.http))
    assert recent == [], "a recent version still resumes"
    query = {"watch": "true", "resourceVersion": "yesterday"}
    async with served.http.get(AGENTS, params=query) as response:
        assert response.status == 400


async def test_kubectl_get_w_prints_one_row_per_change(served: Served) -> None:
    kubectl = kubectl_path()
    if kubectl is None:
        pytest.skip("kubectl is not installed (scripts/system-deps.sh --tests installs it)")
    env = {
        **os.environ,
        "KUBECONFIG": str(served.kubeconfig),
        "HOME": str(served.kubeconfig.parent),
    }
    crd = str(REPOSITORY / "deploy" / "crd.yaml")
    applied = await asyncio.create_subprocess_exec(kubectl, "apply", "-f", crd, env=env)
    assert await asyncio.wait_for(applied.wait(), WAIT) == 0
    await _create(served.http, "a")
    await _create(served.http, "b")
    watching = await asyncio.create_subprocess_exec(
        kubectl,
        "get",
        "rdeagent",
        "-w",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    assert watching.stdout is not None

    async def row() -> str:
        assert watching.stdout is not None
        line = await asyncio.wait_for(watching.stdout.readline(), WAIT)
        return line.decode().split()[0]

    try:
        assert [await row() for _ in range(3)] == ["NAME", "a", "b"]
        await _patch(served.http, "a", "1h")
        assert await row() == "a"
        await _create(served.http, "c")
        assert await row() == "c"
        async with served.http.delete(f"{AGENTS}/b") as response:
            assert response.status == 200
        assert await row() == "b"
        # The next row is the next change's, not a replay of an earlier one.
        await _patch(served.http, "c", "2h")
        assert await row() == "c"
    finally:
        watching.kill()
        await watching.wait()
