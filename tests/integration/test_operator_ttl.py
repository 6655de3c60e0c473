"""Scale to zero after the TTL, and wake: the operator, a real gateway and real agents.

The kubelet fixture runs the real agent for every replica, with the credential from the
operator's Secret; users connect through the gateway's /connect like `kuberde ssh` does. The
wake annotation is written by the test where the gateway's Kubernetes directory would write it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest

from kuberde.auth import LocalTokenVerifier, load_or_create_signing_key
from kuberde.gateway.app import create_app
from kuberde.gateway.server import ListenAddress, bind_socket, start_site
from tests.integration.conftest import RunningGateway, read_bytes
from tests.integration.kube import (
    Kube,
    eventually,
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
BANNER = b"SSH-2.0-workspace\r\n"
_LAST_ACTIVITY = re.compile(r"lastActivity: (\S+) \(([^)]+)\)")


def last_activity_of(message: str) -> tuple[datetime, str]:
    match = _LAST_ACTIVITY.search(message)
    assert match is not None, message
    return datetime.fromisoformat(match.group(1)), match.group(2)


async def test_idle_agent_is_scaled_to_zero_and_woken(
    kube: Kube,
    gateway: RunningGateway,
    tmp_path: Path,
    workspace_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kuberde")
    settings = fast_settings(kube, signing_key_file=key_file_of(gateway), server_api=gateway.url)
    async with (
        kubelet_running(
            kube, tmp_path, run_agents=True, port_map={2222: workspace_port}
        ) as kubelet,
        operator_running(settings),
    ):
        # The TTL is set once the user's first session is over: the test controls when.
        await kube.create_agent("ssh-server", workspace_spec("0"))
        status = await eventually(
            partial(status_in, kube, "ssh-server", "Running"),
            "the agent Running",
        )
        assert status["online"] is True
        assert status["pod"] == kubelet.pods["user-testuser-ssh-server"].name
        ws = await gateway.connect("ssh-server", gateway.user(OWNER), port=2222)
        assert await read_bytes(ws, len(BANNER)) == BANNER
        await ws.close()
        await kube.patch_agent("ssh-server", {"spec": {"ttl": "2s"}})

        status = await eventually(
            partial(status_in, kube, "ssh-server", "ScaledDown"),
            "the idle agent scaled down",
        )
        assert kube.replicas("user-testuser-ssh-server") == 0
        assert "pod" not in status and status["online"] is False
        assert "idleDeadline" not in status
        [event] = await eventually(lambda: kube.events("ssh-server", "ScaledDown"), "the Event")
        assert event["type"] == "Normal"
        assert "(ttl 2s)" in event["message"] and "idle for" in event["message"]
        _, source = last_activity_of(event["message"])
        assert source == "stream closed"
        assert "TTL enforcer: scaled agent ssh-server to zero" in caplog.text
        await eventually(lambda: not kubelet.pods, "the pod to go away")

        # Time enough to reconnect after the wake, even on a loaded machine.
        await kube.patch_agent("ssh-server", {"spec": {"ttl": "6s"}})
        woken_at = datetime.now(UTC)
        await kube.request_wake("ssh-server", woken_at)
        await eventually(lambda: kube.replicas("user-testuser-ssh-server") == 1, "replicas 1")
        assert kube.events("ssh-server", "Woken")
        status = await eventually(
            partial(status_in, kube, "ssh-server", "Running"),
            "the woken agent Running again",
        )
        ws = await gateway.connect("ssh-server", gateway.user(OWNER), port=2222)
        assert await read_bytes(ws, len(BANNER)) == BANNER
        await ws.close()

        # The idle clock restarted at the wake: the next scale-down counts from there.
        events = await eventually(
            lambda: (
                len(kube.events("ssh-server", "ScaledDown")) == 2
                and kube.events("ssh-server", "ScaledDown")
            ),
            "the second scale-down",
        )
        second = max(events, key=lambda e: e["metadata"]["name"])
        last, _ = last_activity_of(second["message"])
        assert last >= woken_at.replace(microsecond=0)
    assert kube.replicas("user-testuser-ssh-server") == 0


async def test_open_session_prevents_scale_down(
    kube: Kube,
    gateway: RunningGateway,
    tmp_path: Path,
    workspace_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kuberde")
    settings = fast_settings(kube, signing_key_file=key_file_of(gateway), server_api=gateway.url)
    async with (
        kubelet_running(kube, tmp_path, run_agents=True, port_map={2222: workspace_port}),
        operator_running(settings) as runner,
    ):
        await kube.create_agent("ssh-server", workspace_spec("0"))
        await eventually(partial(status_in, kube, "ssh-server", "Running"), "the agent Running")
        ws = await gateway.connect("ssh-server", gateway.user(OWNER), port=2222)
        assert await read_bytes(ws, len(BANNER)) == BANNER
        await kube.patch_agent("ssh-server", {"spec": {"ttl": "1s"}})
        opened = datetime.now(UTC)
        await eventually(
            lambda: "Agent ssh-server: 1 open stream" in caplog.text, "the TTL verdict"
        )
        await eventually(
            lambda: datetime.now(UTC) > opened + timedelta(seconds=3), "three TTLs to pass"
        )
        await loops_after(runner, "ttl", 3)
        assert kube.replicas("user-testuser-ssh-server") == 1
        assert status_in(kube, "ssh-server", "Running")
        assert not kube.events("ssh-server", "ScaledDown")

        await ws.close()
        await eventually(
            partial(status_in, kube, "ssh-server", "ScaledDown"), "scale-down once closed"
        )
        [event] = kube.events("ssh-server", "ScaledDown")
        assert last_activity_of(event["message"])[1] == "stream closed"


async def test_gateway_unreachable_never_scales_down(
    kube: Kube, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kuberde")
    key = load_or_create_signing_key(tmp_path / "gateway")
    port = free_port()
    settings = fast_settings(
        kube,
        signing_key_file=tmp_path / "gateway" / "signing-key.pem",
        server_api=f"http://127.0.0.1:{port}",
    )
    async with (
        kubelet_running(kube, tmp_path, run_agents=True),
        operator_running(settings) as runner,
    ):
        created = await kube.create_agent("ssh-server", workspace_spec("1s"))
        created_at = datetime.fromisoformat(created["metadata"]["creationTimestamp"])
        await eventually(
            lambda: "Agent ssh-server: no activity data from the gateway" in caplog.text,
            "the TTL verdict",
        )
        await eventually(
            lambda: datetime.now(UTC) > created_at + timedelta(seconds=3), "three TTLs to pass"
        )
        await loops_after(runner, "ttl", 3)
        assert kube.replicas("user-testuser-ssh-server") == 1
        status = kube.status("ssh-server")
        connected = next(c for c in status["conditions"] if c["type"] == "Connected")
        assert (connected["status"], connected["reason"]) == ("Unknown", "GatewayUnreachable")
        assert status["online"] is False
        assert "no fresh activity data from the gateway: ONLINE unknown" in status["message"]
        assert runner.metric("kuberde_operator_gateway_up") == 0

        # The same agent is scaled down as soon as the gateway answers and its agent has
        # connected (it is idle).
        app = create_app(LocalTokenVerifier.from_signing_key(key))
        site = await start_site(app, bind_socket(ListenAddress("127.0.0.1", port)), None)
        try:
            await eventually(
                lambda: kube.replicas("user-testuser-ssh-server") == 0, "scale-down with fresh data"
            )
        finally:
            await site.cleanup()


async def test_ttl_zero_or_empty_never_scales_down(
    kube: Kube, gateway: RunningGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kuberde")
    settings = fast_settings(kube, signing_key_file=key_file_of(gateway), server_api=gateway.url)
    async with (
        kubelet_running(kube, tmp_path, run_agents=True),
        operator_running(settings) as runner,
    ):
        await kube.create_agent("zero", workspace_spec("0"))
        await kube.create_agent("empty", workspace_spec(""))
        await kube.create_agent("control", workspace_spec("1s"))
        await eventually(
            lambda: kube.replicas("user-testuser-control") == 0, "the control agent scaled down"
        )
        await loops_after(runner, "ttl", 3)
        assert kube.replicas("user-testuser-zero") == 1
        assert kube.replicas("user-testuser-empty") == 1
        assert "Agent zero: TTL disabled" in caplog.text
        assert "Agent empty: TTL disabled" in caplog.text
        assert "idleDeadline" not in kube.status("zero")


async def test_stale_wake_request_does_not_undo_a_scale_down(
    kube: Kube, gateway: RunningGateway, tmp_path: Path
) -> None:
    settings = partial(
        fast_settings, kube, signing_key_file=key_file_of(gateway), server_api=gateway.url
    )
    long_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    async with (
        kubelet_running(kube, tmp_path, run_agents=True),
        operator_running(settings()) as runner,
    ):
        await kube.create_agent(
            "ssh-server",
            workspace_spec("1s"),
            annotations={"kuberde.io/wake-requested-at": long_ago},
        )
        await eventually(partial(status_in, kube, "ssh-server", "ScaledDown"), "the scale-down")
        await reconciles_after(runner, 3)
        assert kube.replicas("user-testuser-ssh-server") == 0
    async with operator_running(settings()) as restarted:
        await reconciles_after(restarted, 3)
        await loops_after(restarted, "ttl", 3)
        assert kube.replicas("user-testuser-ssh-server") == 0
        assert status_in(kube, "ssh-server", "ScaledDown")
        assert len(kube.events("ssh-server", "ScaledDown")) == 1
        assert not kube.events("ssh-server", "Woken")
    await asyncio.sleep(0)


async def test_a_deadline_is_kept_between_sweeps(
    kube: Kube,
    gateway: RunningGateway,
    tmp_path: Path,
    workspace_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With the logged sweep an hour apart, an idle workspace still stops at its deadline:
    the enforcer schedules each agent's own deadline instead of waiting for a sweep."""
    caplog.set_level(logging.INFO, logger="kuberde")
    settings = fast_settings(
        kube, signing_key_file=key_file_of(gateway), server_api=gateway.url, ttl_interval=3600.0
    )
    async with (
        kubelet_running(kube, tmp_path, run_agents=True, port_map={2222: workspace_port}),
        operator_running(settings),
    ):
        await kube.create_agent("ssh-server", workspace_spec("0"))
        await eventually(partial(status_in, kube, "ssh-server", "Running"), "the agent Running")
        await kube.patch_agent("ssh-server", {"spec": {"ttl": "2s"}})
        await eventually(
            partial(status_in, kube, "ssh-server", "ScaledDown"), "the scale-down at the deadline"
        )
    assert caplog.text.count("TTL enforcer: checking") == 1, "one logged sweep, at start"


async def test_no_scale_down_before_the_agent_first_connects(
    kube: Kube, gateway: RunningGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pod slower to start than its TTL is not idle: while its agent has not connected since
    the pod started, the TTL does not scale it down (however long that is), and the status
    says why. Once it has connected, the TTL counts from the last activity (here: creation),
    so it goes at once."""
    caplog.set_level(logging.INFO, logger="kuberde")
    settings = fast_settings(kube, signing_key_file=key_file_of(gateway), server_api=gateway.url)
    async with (
        kubelet_running(kube, tmp_path) as kubelet,
        operator_running(settings) as runner,
    ):
        created = await kube.create_agent("ssh-server", workspace_spec("1s"))
        created_at = datetime.fromisoformat(created["metadata"]["creationTimestamp"])
        status = await eventually(
            partial(status_in, kube, "ssh-server", "Starting"), "the pod running, no agent yet"
        )
        await eventually(
            lambda: datetime.now(UTC) > created_at + timedelta(seconds=4), "several TTLs to pass"
        )
        await loops_after(runner, "ttl", 3)
        await loops_after(runner, "status", 2)
        assert kube.replicas("user-testuser-ssh-server") == 1
        assert not kube.events("ssh-server", "ScaledDown")
        assert "Agent ssh-server: its agent has not connected since it started" in caplog.text
        status = kube.status("ssh-server")
        assert status["phase"] == "Starting"
        assert status["message"] == (
            "waiting for the agent to connect to the gateway; "
            "the TTL does not scale it down before its agent has connected"
        )
        assert "idleDeadline" not in status

        kubelet.start_agent("user-testuser-ssh-server")
        [event] = await eventually(
            lambda: kube.events("ssh-server", "ScaledDown"), "the scale-down once connected"
        )
        assert "(ttl 1s)" in event["message"]
        assert last_activity_of(event["message"]) == (created_at, "created")
        await eventually(partial(status_in, kube, "ssh-server", "ScaledDown"), "ScaledDown")
