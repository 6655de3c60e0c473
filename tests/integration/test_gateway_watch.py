"""`GET /mgmt/agents?watch=1` over real sockets: the gateway pushes each agent's change."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from kuberde.auth import LocalTokenVerifier
from kuberde.gateway.app import GatewaySettings, create_app
from kuberde.gateway.server import ListenAddress, bind_socket, socket_url, start_site
from tests.integration.conftest import (
    WAIT,
    GatewayFactory,
    RunningGateway,
    bearer,
    exchange,
)

pytestmark = pytest.mark.timeout(60)

AGENT = "user-alice-dev"


@contextlib.asynccontextmanager
async def watching(
    http: aiohttp.ClientSession, url: str, token: str, heartbeat: float = 0.2
) -> AsyncIterator[aiohttp.ClientResponse]:
    async with http.get(
        f"{url}/mgmt/agents?watch=1&heartbeat={heartbeat}", headers=bearer(token)
    ) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/x-ndjson"
        yield response


async def next_event(response: aiohttp.ClientResponse, *, heartbeats: bool = False) -> Any:
    """The next line; heartbeats are skipped unless asked for."""
    async with asyncio.timeout(WAIT):
        while True:
            line = await response.content.readline()
            assert line, "the watch ended"
            event = json.loads(line)
            if heartbeats or event["type"] != "heartbeat":
                return event


async def agent_event(response: aiohttp.ClientResponse) -> dict[str, Any]:
    event = await next_event(response)
    assert event["type"] == "agent", event
    assert event["agent"]["id"] == AGENT
    agent: dict[str, Any] = event["agent"]
    return agent


async def test_watch_pushes_connects_sessions_and_disconnects(gateway: RunningGateway) -> None:
    async with watching(gateway.http, gateway.url, gateway.issuer.mint_management()) as watch:
        first = await next_event(watch)
        assert (first["type"], first["agents"]) == ("list", [])
        assert (await next_event(watch, heartbeats=True))["type"] == "heartbeat"

        peer = await gateway.peer("alice", "dev")
        connected = await agent_event(watch)
        assert (connected["online"], connected["owner"], connected["sessions"]) == (
            True,
            "alice",
            0,
        )
        assert connected["last_activity"] is None, "connecting is not activity"

        user = await gateway.connect("dev", gateway.user("alice"))
        held = await agent_event(watch)
        assert held["sessions"] == 1
        assert held["last_activity_source"] == "stream opened"
        assert (await exchange(user, b"ping")).data == b"ping"
        released = await agent_event(watch)
        assert (released["sessions"], released["last_activity_source"]) == (0, "stream closed")

        peer.abort()
        gone = await agent_event(watch)
        assert gone["online"] is False
        assert gone["last_activity_source"] == "stream closed", "its activity is kept"


async def test_a_watch_starts_with_every_agent(gateway: RunningGateway) -> None:
    await gateway.peer("alice", "dev")
    async with watching(gateway.http, gateway.url, gateway.issuer.mint_management()) as watch:
        first = await next_event(watch)
        assert first["type"] == "list"
        assert [(a["id"], a["online"]) for a in first["agents"]] == [(AGENT, True)]
        assert datetime.fromisoformat(first["generated_at"]).tzinfo is not None


async def test_watch_requires_a_management_token(gateway: RunningGateway) -> None:
    for headers in ({}, bearer(gateway.user("alice", admin=True))):
        status, body = await gateway.refused("/mgmt/agents?watch=1", headers)
        assert status == 401, body


@pytest.mark.parametrize("heartbeat", ["0", "soon", "3600"])
async def test_a_bad_heartbeat_is_refused(gateway: RunningGateway, heartbeat: str) -> None:
    status, body = await gateway.refused(
        f"/mgmt/agents?watch=1&heartbeat={heartbeat}", bearer(gateway.issuer.mint_management())
    )
    assert status == 400
    assert json.loads(body)["reason"] == "bad_heartbeat"
    assert "from 0.1 to 60" in json.loads(body)["error"]


async def test_watches_are_limited(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(GatewaySettings(max_watches=1))
    token = gateway.issuer.mint_management()
    async with watching(gateway.http, gateway.url, token) as first:
        assert (await next_event(first))["type"] == "list"
        assert "kuberde_mgmt_watches 1.0" in await gateway.metrics()
        async with gateway.http.get(
            f"{gateway.url}/mgmt/agents?watch=1", headers=bearer(token)
        ) as refused:
            assert refused.status == 429
            assert json.loads(await refused.text())["reason"] == "limited"
            assert refused.headers["Retry-After"]
        # Everyone else is still served while the watch is full.
        assert (await gateway.mgmt())["agents"] == []

    async def admitted() -> None:
        while True:
            async with gateway.http.get(
                f"{gateway.url}/mgmt/agents?watch=1&heartbeat=0.2", headers=bearer(token)
            ) as response:
                if response.status == 200:
                    assert json.loads(await response.content.readline())["type"] == "list"
                    return
                assert response.status == 429
            await asyncio.sleep(0.05)

    await asyncio.wait_for(admitted(), WAIT)

    async def none_open() -> None:
        # A watcher that left is noticed at the next write: a heartbeat at the latest.
        while True:
            if "kuberde_mgmt_watches 0.0" in await gateway.metrics():
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(none_open(), WAIT)


async def test_gateway_shutdown_ends_the_watch(gateway: RunningGateway) -> None:
    app = create_app(LocalTokenVerifier.from_signing_key(gateway.key))
    sock = bind_socket(ListenAddress("127.0.0.1", 0))
    runner = await start_site(app, sock, None)
    try:
        async with watching(
            gateway.http, socket_url(sock, tls=False), gateway.issuer.mint_management(), 60
        ) as watch:
            assert (await next_event(watch))["type"] == "list"
            cleanup = asyncio.ensure_future(runner.cleanup())
            async with asyncio.timeout(WAIT):
                assert await watch.content.read() == b"", "the stream ends, nothing more"
            await asyncio.wait_for(cleanup, WAIT)
    finally:
        await runner.cleanup()
