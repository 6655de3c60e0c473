"""ONLINE pushed by the gateway, and a reconnect that is not activity: the real operator,
a real gateway and real agents on the emulated API.

The monitor's periodic list runs once an hour here, far beyond every deadline: what the
operator learns in between, it learns from the gateway's watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from kuberde.auth import (
    LocalTokenVerifier,
    SigningKey,
    TokenIssuer,
    load_or_create_signing_key,
)
from kuberde.gateway.app import GatewaySettings, create_app
from kuberde.gateway.server import ListenAddress, bind_socket, start_site
from tests.integration.conftest import (
    GatewayFactory,
    RunningGateway,
    bearer,
    next_message,
    read_bytes,
)
from tests.integration.kube import (
    WAIT,
    Kube,
    eventually,
    eventually_async,
    fast_settings,
    free_port,
    key_file_of,
    kubelet_running,
    loops_after,
    operator_running,
    reconciles_after,
    status_in,
    workspace_spec,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:kmock")

OWNER = "testuser"
NAME = "ssh-server"
AGENT = f"user-{OWNER}-{NAME}"
BANNER = b"SSH-2.0-workspace\r\n"
#: Longer than any wait of these tests: only the watch can explain what they see.
NEVER = 3600.0


def connected(kube: Kube) -> str | None:
    conditions = kube.status(NAME).get("conditions") or []
    return next((c["status"] for c in conditions if c["type"] == "Connected"), None)


async def test_online_follows_the_agent_through_the_watch(
    kube: Kube, gateway: RunningGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kuberde")
    settings = fast_settings(
        kube,
        signing_key_file=key_file_of(gateway),
        server_api=gateway.url,
        monitor_interval=NEVER,
        watch_heartbeat=0.5,
    )
    async with (
        kubelet_running(kube, tmp_path, run_agents=True) as kubelet,
        operator_running(settings) as runner,
    ):
        await kube.create_agent(NAME, workspace_spec("0"))
        status = await eventually(partial(status_in, kube, NAME, "Running"), "ONLINE pushed")
        assert status["online"] is True
        assert status["pod"] == kubelet.pods[AGENT].name

        await kubelet.kill_agent(AGENT)
        status = await eventually(
            partial(status_in, kube, NAME, "Disconnected"), "ONLINE false once the agent died"
        )
        assert status["online"] is False
        assert connected(kube) == "False"
        assert status["pod"] == kubelet.pods[AGENT].name, "its pod still runs"
        assert (
            runner.metric("kuberde_operator_loop_duration_seconds_count", {"loop": "monitor"}) == 1
        ), "one list, at start: the rest came through the watch"
    assert "Server monitor checked" in caplog.text


async def test_a_gateway_that_goes_away_leaves_online_unknown_and_scales_nothing_down(
    kube: Kube, tmp_path: Path, workspace_port: int
) -> None:
    """Watch and list both fail past the staleness bound: ONLINE unknown, nothing scaled."""
    port = free_port()
    gateway_dir = tmp_path / "gateway"
    load_or_create_signing_key(gateway_dir)  # the key the gateway and operator share
    settings = fast_settings(
        kube,
        signing_key_file=gateway_dir / "signing-key.pem",
        server_api=f"http://127.0.0.1:{port}",
        monitor_interval=NEVER,
        watch_heartbeat=0.5,
        activity_max_age=2.0,
    )
    async with (
        kubelet_running(kube, tmp_path, run_agents=True, port_map={2222: workspace_port}),
        operator_running(settings) as runner,
    ):
        async with serving_gateway(gateway_dir, port):
            await kube.create_agent(NAME, workspace_spec("0"))
            await eventually(partial(status_in, kube, NAME, "Running"), "the agent Running")
        # The gateway is gone, and with it the watch; the agent is idle, with a 1s TTL.
        await kube.patch_agent(NAME, {"spec": {"ttl": "1s"}})
        await eventually(lambda: connected(kube) == "Unknown", "ONLINE unknown")
        await loops_after(runner, "ttl", 3)
        status = kube.status(NAME)
        assert status["online"] is False
        assert "no fresh activity data from the gateway: ONLINE unknown" in status["message"]
        assert kube.replicas(AGENT) == 1


async def test_a_session_opened_since_the_last_look_keeps_the_workspace_up(
    kube: Kube,
    start_gateway: GatewayFactory,
    tmp_path: Path,
    workspace_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No watch (the gateway refuses it) and one list, at start: the operator's snapshot says
    idle since creation while a user's session is open. The scale-down asks the gateway once
    more and keeps the workspace up. (Before, only a `connected` stamp hid this race.) The
    operator that lists is a second one, started once the agent is online: a list from
    before the agent's first connection holds any scale-down anyway (`hold_for_agent`)."""
    caplog.set_level(logging.INFO, logger="kuberde")
    gateway = await start_gateway(GatewaySettings(max_watches=0))
    settings = fast_settings(
        kube,
        signing_key_file=key_file_of(gateway),
        server_api=gateway.url,
        monitor_interval=NEVER,
        activity_max_age=NEVER,
    )
    checks = "kuberde_operator_loop_duration_seconds_count"
    async with kubelet_running(kube, tmp_path, run_agents=True, port_map={2222: workspace_port}):
        async with operator_running(settings):
            created = await kube.create_agent(NAME, workspace_spec("0"))
            await gateway.wait_agent(AGENT, lambda agent: agent["online"])
        async with operator_running(settings) as runner:
            await eventually(
                lambda: runner.metric(checks, {"loop": "monitor"}) >= 1, "its one list"
            )
            ws = await gateway.connect(NAME, gateway.user(OWNER), port=2222)
            assert await read_bytes(ws, len(BANNER)) == BANNER
            created_at = datetime.fromisoformat(created["metadata"]["creationTimestamp"])
            await eventually(
                lambda: datetime.now(UTC) > created_at + timedelta(seconds=2), "the TTL to pass"
            )
            await kube.patch_agent(NAME, {"spec": {"ttl": "1s"}})
            await eventually(
                lambda: f"Agent {NAME}: idle for" in caplog.text, "a verdict on the old snapshot"
            )
            await loops_after(runner, "ttl", 3)
            assert kube.replicas(AGENT) == 1
            assert not kube.events(NAME, "ScaledDown")
            assert f"Agent {NAME}: 1 open stream" in caplog.text, "the gateway's answer"
            await ws.close()


@contextlib.asynccontextmanager
async def serving_gateway(state_dir: Path, port: int) -> AsyncIterator[SigningKey]:
    """A gateway on a fixed port, to be stopped and started again (its key on disk)."""
    key = load_or_create_signing_key(state_dir)
    app = create_app(LocalTokenVerifier.from_signing_key(key))
    runner = await start_site(app, bind_socket(ListenAddress("127.0.0.1", port)), None)
    try:
        yield key
    finally:
        await runner.cleanup()


async def test_a_gateway_restart_does_not_reset_the_idle_clock(
    kube: Kube, tmp_path: Path, workspace_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The gateway and the operator restart; every agent reconnects. Last activity and its
    source stay what the user did, and the scale-down counts from there."""
    caplog.set_level(logging.INFO, logger="kuberde")
    port = free_port()
    gateway_dir = tmp_path / "gateway"
    url = f"http://127.0.0.1:{port}"
    settings = partial(
        fast_settings, kube, signing_key_file=gateway_dir / "signing-key.pem", server_api=url
    )
    async with kubelet_running(kube, tmp_path, run_agents=True, port_map={2222: workspace_port}):
        async with serving_gateway(gateway_dir, port) as key, operator_running(settings()):
            await kube.create_agent(NAME, workspace_spec("1h"))
            await eventually(partial(status_in, kube, NAME, "Running"), "the agent Running")
            ws = await connect(kube, url, key)
            assert await read_bytes(ws, len(BANNER)) == BANNER
            await ws.close()
            used = await eventually(
                lambda: (
                    kube.status(NAME).get("lastActivitySource") == "stream closed"
                    and kube.status(NAME)
                ),
                "the session's end recorded",
            )

        # Both restarted; the agent reconnects to the new gateway before the operator starts,
        # so the operator's first look already sees the reconnect.
        async with serving_gateway(gateway_dir, port) as key:
            issuer = TokenIssuer(key)

            async def online_again() -> bool:
                async with kube.http.get(
                    f"{url}/mgmt/agents/{AGENT}", headers=bearer(issuer.mint_management())
                ) as response:
                    return response.status == 200 and (await response.json())["online"] is True

            await eventually_async(online_again, "the agent reconnected")
            async with operator_running(settings()) as runner:
                await reconciles_after(runner, 1)
                await loops_after(runner, "status", 2)
                status = kube.status(NAME)
                assert (status["lastActivity"], status["lastActivitySource"]) == (
                    used["lastActivity"],
                    "stream closed",
                ), "a reconnect is not activity"
                assert status_in(kube, NAME, "Running")

                # Its original deadline (last use + 2s) is long past: it goes at once.
                await kube.patch_agent(NAME, {"spec": {"ttl": "2s"}})
                await eventually(partial(status_in, kube, NAME, "ScaledDown"), "the scale-down")
                [event] = kube.events(NAME, "ScaledDown")
                assert f"lastActivity: {used['lastActivity']} (stream closed)" in event["message"]


async def connect(kube: Kube, url: str, key: SigningKey) -> Any:
    """A user's /connect to the workspace, as `kuberde ssh` opens it, once connected."""
    token = TokenIssuer(key).mint_user(OWNER)
    ws = await asyncio.wait_for(
        kube.http.ws_connect(
            f"ws{url.removeprefix('http')}/connect/{NAME}?port=2222", headers=bearer(token)
        ),
        WAIT,
    )
    assert await next_message(ws) == {"event": "connected"}
    return ws
