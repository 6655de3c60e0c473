"""The gateway in Kubernetes mode: RDEAgents authorize users and wake offline agents.

The directory tests talk HTTP to the emulated API server. The end-to-end tests run
`kuberde server --kubernetes` and `kuberde connect` as real processes next to the real
operator, with the kubelet fixture running the real agent for every replica: nothing but the
API server is emulated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
from aiohttp import web

from kuberde.auth import SIGNING_KEY_FILE, load_or_create_signing_key
from kuberde.gateway.directory import AgentRecord, WakeError
from kuberde.gateway.kubernetes import KubernetesDirectory
from kuberde.kube import KubeApi, load_configuration
from kuberde.operator.annotations import (
    EXTEND_ANNOTATION,
    SCALED_DOWN_ANNOTATION,
    STOP_ANNOTATION,
    WAKE_ANNOTATION,
)
from kuberde.testing.processes import reap
from tests.integration.kube import (
    NAMESPACE,
    WAIT,
    Kube,
    eventually,
    eventually_async,
    fast_settings,
    free_port,
    kubelet_running,
    operator_running,
    status_in,
    workspace_spec,
)
from tests.oidc_provider.harness import Browser, Page, device_login, forms_of, running_provider

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:kmock")

OWNER = "testuser"
BANNER = b"SSH-2.0-workspace\r\n"
PAYLOAD = os.urandom(64 * 1024)
KUBERDE = [sys.executable, "-m", "kuberde"]
#: Longest a CLI command may take, a wake included; a healthy run needs a few seconds.
CLI_WAIT = 60.0
GATEWAY_AGENT = "kuberde-gateway/"
_LISTENING = re.compile(r"KubeRDE gateway listening on (\S+)")
#: An RFC 3339 time with a fractional second, so two requests in one second stay ordered.
_SUBSECOND = re.compile(r"T\d{2}:\d{2}:\d{2}\.\d+(Z|[+-]\d{2}:\d{2})$")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of our subprocesses: none of the developer's KubeRDE or kube settings."""
    values = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("KUBERDE_") and key != "KUBECONFIG"
    }
    values["KUBERDE_CONFIG"] = str(tmp_path / "cli-config.json")
    return values


async def set_status(kube: Kube, name: str, status: dict[str, Any]) -> None:
    """Write an RDEAgent's status subresource, as the operator does."""
    async with (
        asyncio.timeout(WAIT),
        kube.http.patch(
            f"/apis/kuberde.io/v1/namespaces/{NAMESPACE}/rdeagents/{name}/status",
            data=json.dumps({"status": status}),
            headers={"Content-Type": "application/merge-patch+json"},
        ) as response,
    ):
        assert response.status == 200, await response.text()


def agent_annotations(kube: Kube, name: str) -> dict[str, str]:
    agent = kube.agent(name)
    assert agent is not None, f"no RDEAgent {name}"
    return dict(agent["metadata"].get("annotations") or {})


def gateway_writes(kube: Kube, since: int) -> list[str]:
    """`METHOD path` of the writes the gateway process sent to the API after `since`."""
    return [
        call.line
        for call in kube.requests()[since:]
        if call.user_agent.startswith(GATEWAY_AGENT) and call.method != "GET"
    ]


@contextlib.asynccontextmanager
async def directory_for(
    kubeconfig: Path, *, refresh_interval: float = 5.0
) -> AsyncIterator[KubernetesDirectory]:
    api = KubeApi.connect(
        await load_configuration(kubeconfig), timeout=5.0, user_agent=f"{GATEWAY_AGENT}test"
    )
    try:
        yield KubernetesDirectory(api, NAMESPACE, refresh_interval=refresh_interval)
    finally:
        await api.close()


@contextlib.asynccontextmanager
async def watching(directory: KubernetesDirectory) -> AsyncIterator[asyncio.Task[None]]:
    """`directory.run()` in the background, as the gateway runs it."""
    task = asyncio.create_task(directory.run(), name="kubernetes-directory")
    try:
        yield task
        if task.done():
            task.result()
            raise AssertionError("the directory stopped watching by itself")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# ---- the directory, over HTTP to the emulated API server -------------------------------------


async def test_refresh_builds_a_record_per_rdeagent(kube: Kube) -> None:
    created = await kube.create_agent("ssh-server", workspace_spec("5m"))
    broken = await kube.create_agent("broken", workspace_spec("5m"))
    await set_status(kube, "broken", {"phase": "Error", "message": "invalid RDEAgent: ttl"})
    await kube.create_agent("silent", workspace_spec("5m"))
    await set_status(kube, "silent", {"phase": "Error"})
    await kube.create_agent("running", workspace_spec("5m"))
    await set_status(kube, "running", {"phase": "Running", "message": "ready"})
    await kube.create_agent("upper", {**workspace_spec("5m"), "owner": "Not_A_Name"})
    await kube.create_agent("ownerless", {"ttl": "5m"})
    async with directory_for(kube.kubeconfig) as directory:
        assert not directory.synced.is_set()
        await asyncio.wait_for(directory.refresh(), WAIT)
        assert directory.synced.is_set()

        assert directory.lookup("user-testuser-ssh-server") == AgentRecord(
            agent_id="user-testuser-ssh-server",
            owner=OWNER,
            name="ssh-server",
            uid=created["metadata"]["uid"],
            error=None,
            ports=(2222,),
        )
        record = directory.lookup("user-testuser-broken")
        assert record is not None
        assert record.uid == broken["metadata"]["uid"]
        assert record.error == "invalid RDEAgent: ttl"
        silent = directory.lookup("user-testuser-silent")
        assert silent is not None and silent.error == "the RDEAgent is in phase Error"
        running = directory.lookup("user-testuser-running")
        assert running is not None and running.error is None
        assert sorted(r.agent_id for r in directory.records()) == [
            "user-testuser-broken",
            "user-testuser-running",
            "user-testuser-silent",
            "user-testuser-ssh-server",
        ]

        # A deleted RDEAgent leaves the directory at the next refresh.
        await kube.delete_agent("ssh-server")
        await asyncio.wait_for(directory.refresh(), WAIT)
        assert directory.lookup("user-testuser-ssh-server") is None
        assert len(directory.records()) == 3


async def test_an_agent_in_error_loses_its_agent_id_to_the_healthy_one(kube: Kube) -> None:
    # Both orders of the list: the RDEAgent in Error first, then the healthy one first.
    await kube.create_agent("dev", {**workspace_spec("5m"), "owner": "alice-smith"})
    await set_status(kube, "dev", {"phase": "Error", "message": "agent ID taken"})
    first = await kube.create_agent("smith-dev", {**workspace_spec("5m"), "owner": "alice"})
    second = await kube.create_agent("lab", {**workspace_spec("5m"), "owner": "bob-x"})
    await kube.create_agent("x-lab", {**workspace_spec("5m"), "owner": "bob"})
    await set_status(kube, "x-lab", {"phase": "Error", "message": "agent ID taken"})
    async with directory_for(kube.kubeconfig) as directory:
        await asyncio.wait_for(directory.refresh(), WAIT)
        assert directory.lookup("user-alice-smith-dev") == AgentRecord(
            "user-alice-smith-dev", "alice", "smith-dev", first["metadata"]["uid"], ports=(2222,)
        )
        assert directory.lookup("user-bob-x-lab") == AgentRecord(
            "user-bob-x-lab", "bob-x", "lab", second["metadata"]["uid"], ports=(2222,)
        )
        assert len(directory.records()) == 2

        # A wake goes to the healthy RDEAgent, never to the one in Error.
        await asyncio.wait_for(directory.request_wake("user-alice-smith-dev", "alice"), WAIT)
        assert WAKE_ANNOTATION in agent_annotations(kube, "smith-dev")
        assert WAKE_ANNOTATION not in agent_annotations(kube, "dev")


async def test_an_agent_id_two_healthy_rdeagents_claim_is_nobody_s_yet(kube: Kube) -> None:
    """Before the operator has put the loser in Error, neither owner may use the ID."""
    await kube.create_agent("smith-dev", {**workspace_spec("5m"), "owner": "alice"})
    await kube.create_agent("dev", {**workspace_spec("5m"), "owner": "alice-smith"})
    async with directory_for(kube.kubeconfig) as directory:
        await asyncio.wait_for(directory.refresh(), WAIT)
        record = directory.lookup("user-alice-smith-dev")
        assert record is not None and record.error is not None
        assert "claimed by more than one workspace" in record.error
        assert "owner" not in record.error and "'" not in record.error, "it names nobody"

        await set_status(kube, "dev", {"phase": "Error", "message": "agent ID taken"})
        await asyncio.wait_for(directory.refresh(), WAIT)
        record = directory.lookup("user-alice-smith-dev")
        assert record is not None
        assert (record.owner, record.error) == ("alice", None)


async def test_request_wake_writes_a_subsecond_timestamp(
    kube: Kube, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kuberde.gateway.kubernetes")
    await kube.create_agent("ssh-server", workspace_spec("5m"))
    await kube.create_agent("doomed", workspace_spec("5m"))
    async with directory_for(kube.kubeconfig) as directory:
        await asyncio.wait_for(directory.refresh(), WAIT)
        before = datetime.now(UTC)
        await asyncio.wait_for(directory.request_wake("user-testuser-ssh-server", OWNER), WAIT)
        after = datetime.now(UTC)

        stamp = agent_annotations(kube, "ssh-server")[WAKE_ANNOTATION]
        assert _SUBSECOND.search(stamp), stamp
        requested = datetime.fromisoformat(stamp)
        assert requested.tzinfo is not None
        assert before <= requested <= after
        assert "wake requested for user-testuser-ssh-server by testuser" in caplog.text

        with pytest.raises(WakeError, match="no longer exists"):
            await directory.request_wake("user-testuser-nothing", OWNER)

        # Deleted after the last refresh: the API's 404 becomes a message for the user.
        await kube.delete_agent("doomed")
        with pytest.raises(WakeError, match="could not ask Kubernetes"):
            await asyncio.wait_for(directory.request_wake("user-testuser-doomed", OWNER), WAIT)
        assert "cannot request a wake of user-testuser-doomed" in caplog.text


async def test_a_lookup_miss_refreshes_before_the_interval(kube: Kube) -> None:
    async with (
        directory_for(kube.kubeconfig, refresh_interval=30.0) as directory,
        watching(directory),
    ):
        await asyncio.wait_for(directory.synced.wait(), WAIT)
        assert directory.records() == []
        created = await kube.create_agent("late", workspace_spec("5m"))
        # Every miss asks for a refresh; well within the 30 s interval the agent is known.
        record = await eventually(
            lambda: directory.lookup("user-testuser-late"), "the new RDEAgent", within=5.0
        )
        assert record.uid == created["metadata"]["uid"]


async def test_a_repeated_miss_is_cached_until_the_next_refresh(kube: Kube) -> None:
    """A user probing a missing name does not make the gateway list RDEAgents each time."""
    async with (
        directory_for(kube.kubeconfig, refresh_interval=30.0) as directory,
        watching(directory),
    ):
        await asyncio.wait_for(directory.synced.wait(), WAIT)

        def lists() -> int:
            return sum(
                call.method == "GET" and call.path.endswith("/rdeagents")
                for call in kube.server.calls
            )

        assert directory.lookup("user-testuser-nothing") is None
        await asyncio.wait_for(directory.catch_up("user-testuser-nothing"), WAIT)
        before = lists()
        for _ in range(20):
            assert directory.lookup("user-testuser-nothing") is None
            await asyncio.wait_for(directory.catch_up("user-testuser-nothing"), WAIT)
        assert lists() == before
        # A name not missed yet still gets its early look.
        await kube.create_agent("fresh", workspace_spec("5m"))
        assert directory.lookup("user-testuser-fresh") is None
        await asyncio.wait_for(directory.catch_up("user-testuser-fresh"), WAIT)
        assert directory.lookup("user-testuser-fresh") is not None


async def test_lists_follow_continue_across_pages(kube: Kube) -> None:
    for n in range(7):
        await kube.create_agent(f"paged-{n}", workspace_spec("5m"))
    api = KubeApi.connect(
        await load_configuration(kube.kubeconfig), timeout=WAIT, user_agent="paging-test"
    )
    try:
        path = f"/apis/kuberde.io/v1/namespaces/{NAMESPACE}/rdeagents"
        calls = len(kube.server.calls)
        items = await api.list(path, page_size=3)
        assert len(kube.server.calls) - calls == 3
        assert sorted(item["metadata"]["name"] for item in items) == [
            f"paged-{n}" for n in range(7)
        ]
        assert len(await api.list(path, limit=2, page_size=3)) == 2
    finally:
        await api.close()


async def test_catch_up_sees_an_rdeagent_created_a_moment_ago(kube: Kube) -> None:
    async with (
        directory_for(kube.kubeconfig, refresh_interval=30.0) as directory,
        watching(directory),
    ):
        await asyncio.wait_for(directory.synced.wait(), WAIT)
        created = await kube.create_agent("fresh", workspace_spec("5m"))
        # No polling: once catch_up returns, the very next lookup has the agent.
        await asyncio.wait_for(directory.catch_up(), WAIT)
        record = directory.lookup("user-testuser-fresh")
        assert record is not None
        assert record.uid == created["metadata"]["uid"]
        # Callers racing one list are all released by it.
        await asyncio.wait_for(asyncio.gather(*(directory.catch_up() for _ in range(5))), WAIT)


async def test_unreachable_api_is_retried_and_reported_once(
    kube: Kube, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kuberde.gateway.kubernetes")
    await kube.create_agent("ssh-server", workspace_spec("5m"))
    port = free_port()
    kubeconfig = tmp_path / "elsewhere"
    config = json.loads(kube.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{port}"
    kubeconfig.write_text(json.dumps(config))

    def failures() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith("cannot list RDEAgents")]

    attempts = 0

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        writer.transport.abort()

    async with directory_for(kubeconfig, refresh_interval=0.05) as directory, watching(directory):
        # Nothing listens: connection refused.
        await eventually(failures, "the first failure to be logged")
        # Something listens but drops every request: count the attempts that fail.
        dropper = await asyncio.start_server(drop, "127.0.0.1", port)
        async with dropper:
            await eventually(lambda: attempts >= 3, "three more failed lists")
        await dropper.wait_closed()
        assert len(failures()) == 1, [r.getMessage() for r in failures()]
        assert failures()[0].levelno == logging.WARNING
        assert not directory.synced.is_set()
        assert directory.records() == []

        # The API server answers on that address: the directory syncs without a restart.
        async with kmock.Server(kube.server, port=port):
            await asyncio.wait_for(directory.synced.wait(), WAIT)
            await eventually(
                lambda: "listing RDEAgents works again" in caplog.text, "the recovery log"
            )
        assert [r.agent_id for r in directory.records()] == ["user-testuser-ssh-server"]
        assert len(failures()) == 1


# ---- end to end: gateway and CLI processes, the operator, the kubelet and the agent ----------


@dataclass
class GatewayProcess:
    """`kuberde server --kubernetes` running as a process, its stderr kept line by line."""

    process: asyncio.subprocess.Process
    url: str
    state_dir: Path
    env: dict[str, str]
    lines: list[str]

    @property
    def log(self) -> str:
        return "".join(self.lines)

    async def token(self, *args: str) -> str:
        """A credential from `kuberde token ...` with the gateway's state directory."""
        code, out, err = await kuberde(
            ["token", *args, "--state-dir", str(self.state_dir)], self.env
        )
        assert code == 0, err
        return out.decode().strip()

    async def connect(self, token: str, agent: str, stdin: bytes = b"") -> tuple[int, bytes, str]:
        """`kuberde connect AGENT` with `stdin` as the bytes to send: (code, stdout, stderr)."""
        env = {**self.env, "KUBERDE_SERVER": self.url, "KUBERDE_TOKEN": token}
        return await kuberde(["connect", agent], env, stdin)


async def kuberde(
    args: list[str], env: dict[str, str], stdin: bytes = b""
) -> tuple[int, bytes, str]:
    process = await asyncio.create_subprocess_exec(
        *KUBERDE,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), CLI_WAIT)
    finally:
        await reap(process)
    assert process.returncode is not None
    return process.returncode, out, err.decode(errors="replace")


@contextlib.asynccontextmanager
async def gateway_running(
    kube: Kube,
    state_dir: Path,
    env: dict[str, str],
    *,
    port: int = 0,
    wake_timeout: float = 45,
    extra: tuple[str, ...] = (),
) -> AsyncIterator[GatewayProcess]:
    """Start the gateway against the emulator (`extra`: more `kuberde server` flags); on a
    clean exit from the block it must stop on SIGTERM with exit code 0."""
    process = await asyncio.create_subprocess_exec(
        *KUBERDE,
        "server",
        "--kubernetes",
        "--kubeconfig",
        str(kube.kubeconfig),
        "--namespace",
        NAMESPACE,
        "--listen",
        f"127.0.0.1:{port}",
        "--state-dir",
        str(state_dir),
        "--wake-timeout",
        str(wake_timeout),
        *extra,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    lines: list[str] = []
    listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def collect() -> None:
        assert process.stderr is not None
        while line := await process.stderr.readline():
            text = line.decode(errors="replace")
            lines.append(text)
            match = _LISTENING.search(text)
            if match and not listening.done():
                listening.set_result(match.group(1))
        if not listening.done():
            listening.set_exception(AssertionError(f"the gateway exited:\n{''.join(lines)}"))

    reader = asyncio.create_task(collect(), name="gateway-stderr")
    try:
        url = await asyncio.wait_for(listening, WAIT)
        yield GatewayProcess(process, url, state_dir, env, lines)
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), WAIT)
        assert code == 0, f"the gateway exited with {code}:\n{''.join(lines)}"
    finally:
        await reap(process)
        await asyncio.wait_for(reader, WAIT)


async def gateway_agent(
    gateway: GatewayProcess, management: str, agent: str
) -> dict[str, Any] | None:
    """The gateway's `/mgmt/agents/AGENT` entry, or None if it does not know the agent."""
    async with (
        asyncio.timeout(WAIT),
        aiohttp.ClientSession() as http,
        http.get(
            f"{gateway.url}/mgmt/agents/{agent}",
            headers={"Authorization": f"Bearer {management}"},
        ) as response,
    ):
        if response.status == 404:
            return None
        assert response.status == 200, await response.text()
        entry: dict[str, Any] = await response.json()
        return entry


async def test_scaled_down_agent_is_woken_by_connect(
    kube: Kube, tmp_path: Path, env: dict[str, str], workspace_port: int
) -> None:
    agent_id = "user-testuser-ssh-server"
    async with gateway_running(kube, tmp_path / "gateway", env) as gateway:
        settings = fast_settings(
            kube,
            signing_key_file=gateway.state_dir / SIGNING_KEY_FILE,
            server_api=gateway.url,
        )
        user = await gateway.token("user", "--user", OWNER)
        alice = await gateway.token("user", "--user", "alice")
        management = await gateway.token("management")
        async with (
            kubelet_running(
                kube, tmp_path, run_agents=True, port_map={2222: workspace_port}
            ) as kubelet,
            operator_running(settings) as operator,
        ):
            # TTL 0 until the first session is over, so the test decides when idling starts.
            await kube.create_agent("ssh-server", workspace_spec("0"))
            status = await eventually(
                partial(status_in, kube, "ssh-server", "Running"), "the agent Running"
            )
            assert status["online"] is True

            code, out, err = await gateway.connect(user, "ssh-server", PAYLOAD)
            assert code == 0, err
            assert out == BANNER + PAYLOAD
            assert "waking" not in err

            await kube.patch_agent("ssh-server", {"spec": {"ttl": "3s"}})
            status = await eventually(
                partial(status_in, kube, "ssh-server", "ScaledDown"), "the idle agent scaled down"
            )
            assert kube.replicas(agent_id) == 0
            assert status["online"] is False and "pod" not in status
            [event] = await eventually(
                lambda: kube.events("ssh-server", "ScaledDown"), "the ScaledDown Event"
            )
            assert "(ttl 3s)" in event["message"]
            await eventually(lambda: not kubelet.pods, "the pod to go away")

            async def offline() -> bool:
                entry = await gateway_agent(gateway, management, agent_id)
                return entry is not None and entry["online"] is False and entry["owner"] == OWNER

            await eventually_async(offline, "the gateway to see the agent offline")
            assert WAKE_ANNOTATION not in agent_annotations(kube, "ssh-server")

            # Someone else's agent: missing to them, and nothing is woken.
            mark = kube.mark()
            code, out, err = await gateway.connect(alice, agent_id, b"not for you")
            assert code == 1
            assert out == b""
            assert f"no workspace named '{agent_id}'" in err
            assert "waking" not in err
            assert gateway_writes(kube, mark) == []
            assert WAKE_ANNOTATION not in agent_annotations(kube, "ssh-server")
            assert "wake requested" not in gateway.log
            assert kube.replicas(agent_id) == 0

            # The owner connects: the same command waits through the wake and gets through.
            before = datetime.now(UTC)
            mark = kube.mark()
            code, out, err = await gateway.connect(user, "ssh-server", PAYLOAD)
            assert code == 0, err
            assert out == BANNER + PAYLOAD
            assert "waking ssh-server… " in err
            assert "ssh-server is up after" in err

            assert gateway_writes(kube, mark) == [
                f"PATCH /apis/kuberde.io/v1/namespaces/{NAMESPACE}/rdeagents/ssh-server"
            ]
            stamp = agent_annotations(kube, "ssh-server")[WAKE_ANNOTATION]
            assert _SUBSECOND.search(stamp), stamp
            assert before <= datetime.fromisoformat(stamp) <= datetime.now(UTC)
            assert f"wake requested for {agent_id} by testuser" in gateway.log
            [woken] = kube.events("ssh-server", "Woken")
            assert "Scaled to one replica" in woken["message"]
            assert operator.metric("kuberde_operator_wakes_total") == 1
            assert kubelet.agent_codes == [0], "the scaled-down agent did not stop cleanly"


async def test_unknown_agent_and_agent_in_error(
    kube: Kube, tmp_path: Path, env: dict[str, str]
) -> None:
    # The operator starts first and must know the gateway's address: pick the port up front.
    port = free_port()
    state_dir = tmp_path / "gateway"
    load_or_create_signing_key(state_dir)
    settings = fast_settings(
        kube,
        signing_key_file=state_dir / SIGNING_KEY_FILE,
        server_api=f"http://127.0.0.1:{port}",
    )
    async with operator_running(settings):
        await kube.create_agent("broken", workspace_spec("banana"))
        status = await eventually(
            partial(status_in, kube, "broken", "Error"), "the invalid agent in Error"
        )
        message = status["message"]
        assert "banana" in message
        async with gateway_running(kube, state_dir, env, port=port) as gateway:
            user = await gateway.token("user", "--user", OWNER)

            code, out, err = await gateway.connect(user, "nosuch")
            assert code == 1 and out == b""
            assert "no workspace named 'nosuch'" in err

            mark = kube.mark()
            code, out, err = await gateway.connect(user, "broken", b"hello")
            assert code == 1 and out == b""
            assert f"broken is unavailable: {message}" in err
            assert "waking" not in err
            assert gateway_writes(kube, mark) == []
            assert WAKE_ANNOTATION not in agent_annotations(kube, "broken")


async def test_gateway_in_kubernetes_mode_stops_cleanly(
    kube: Kube, tmp_path: Path, env: dict[str, str]
) -> None:
    await kube.create_agent("ssh-server", workspace_spec("5m"))
    async with gateway_running(kube, tmp_path / "gateway", env) as gateway:
        management = await gateway.token("management")
        entry = await gateway_agent(gateway, management, "user-testuser-ssh-server")
        assert entry is not None and entry["owner"] == OWNER and entry["online"] is False
    # Exit code 0 is checked on leaving the block; nothing may be left for asyncio to report.
    assert " ERROR " not in gateway.log and "Traceback" not in gateway.log, gateway.log


async def test_stop_and_extend_from_the_cli_through_the_operator(
    kube: Kube, tmp_path: Path, env: dict[str, str], workspace_port: int
) -> None:
    """`kuberde extend` and `kuberde stop` on Kubernetes: the gateway writes the request on
    the RDEAgent, the real operator honours it (an extension moves the idle deadline, a stop
    scales to zero and clears itself), a bad value is ignored with a message, and a
    connection after the stop wakes the workspace again."""
    agent_id = "user-testuser-ssh-server"
    async with gateway_running(kube, tmp_path / "gateway", env) as gateway:
        settings = fast_settings(
            kube, signing_key_file=gateway.state_dir / SIGNING_KEY_FILE, server_api=gateway.url
        )
        user = await gateway.token("user", "--user", OWNER)
        alice = await gateway.token("user", "--user", "alice")

        async def cli(token: str, *args: str) -> tuple[int, str, str]:
            cli_env = {**gateway.env, "KUBERDE_SERVER": gateway.url, "KUBERDE_TOKEN": token}
            code, out, err = await kuberde(list(args), cli_env)
            return code, out.decode(), err

        async with (
            kubelet_running(kube, tmp_path, run_agents=True, port_map={2222: workspace_port}),
            operator_running(settings),
        ):
            await kube.create_agent("ssh-server", workspace_spec("1h"))
            await eventually(partial(status_in, kube, "ssh-server", "Running"), "Running")
            code, out, err = await gateway.connect(user, "ssh-server", PAYLOAD)
            assert (code, out) == (0, BANNER + PAYLOAD), err

            # An extension past the TTL's deadline becomes the idle deadline.
            code, said, err = await cli(user, "extend", "ssh-server", "3h")
            assert code == 0, err
            until = agent_annotations(kube, "ssh-server")[EXTEND_ANNOTATION]
            assert said.strip() == f"rdeagent/ssh-server extended until {until}"
            ahead = datetime.fromisoformat(until) - datetime.now(UTC)
            assert 2 * 3600 < ahead.total_seconds() <= 3 * 3600

            def deadline_is(expected: str) -> bool:
                return kube.status("ssh-server").get("idleDeadline") == expected

            await eventually(partial(deadline_is, until), "the extended idle deadline")

            # A bad value is ignored and said so; nothing else changes and nothing is removed.
            await kube.patch_agent(
                "ssh-server", {"metadata": {"annotations": {EXTEND_ANNOTATION: "tomorrow"}}}
            )

            def complaint() -> dict[str, Any] | None:
                status = kube.status("ssh-server")
                message = status.get("message") or ""
                return status if "'tomorrow' is not an RFC 3339 time; ignored" in message else None

            status = await eventually(complaint, "the status message about the bad value")
            assert status["phase"] == "Running" and EXTEND_ANNOTATION in status["message"]
            assert agent_annotations(kube, "ssh-server")[EXTEND_ANNOTATION] == "tomorrow"
            assert status["idleDeadline"] != until
            assert kube.replicas(agent_id) == 1

            # Someone else's workspace is missing to them, and nothing is written.
            mark = kube.mark()
            code, _, err = await cli(alice, "stop", "ssh-server")
            assert code == 1 and "no workspace named 'ssh-server'" in err
            assert gateway_writes(kube, mark) == []

            # A stop scales it to zero now, then the request and the extension are gone.
            code, said, err = await cli(user, "stop", "ssh-server")
            assert code == 0, err
            assert said.strip() == "rdeagent/ssh-server scaled down"
            await eventually(partial(status_in, kube, "ssh-server", "ScaledDown"), "stopped")
            assert kube.replicas(agent_id) == 0
            annotations = agent_annotations(kube, "ssh-server")
            assert STOP_ANNOTATION not in annotations and EXTEND_ANNOTATION not in annotations
            assert SCALED_DOWN_ANNOTATION in annotations
            [event] = kube.events("ssh-server", "Stopped")
            assert "stop requested at" in event["message"]
            assert f"stop requested for {agent_id} by {OWNER}" in gateway.log

            # A connection after the stop wakes it again.
            code, out, err = await gateway.connect(user, "ssh-server", PAYLOAD)
            assert (code, out) == (0, BANNER + PAYLOAD), err
            assert "waking ssh-server" in err
            assert kube.replicas(agent_id) == 1


async def test_non_browser_clients_are_held_through_a_wake_and_the_dashboard_stops(
    kube: Kube, tmp_path: Path, env: dict[str, str]
) -> None:
    """A `curl`-like request (a bearer token, no `Accept: text/html`) to the app of a
    workspace that is not up is held: through a wake it gets the app's own answer; from a
    gateway with a short wake deadline, for a workspace whose agent never connects, 503
    with Retry-After. Then the dashboard (signed in through the provider) extends and stops
    it, through the operator."""

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello from the app at {request.path}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    app_port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    lab = {**workspace_spec("1h"), "apps": [{"name": "web", "port": 8888}]}

    async def app_request(gateway: GatewayProcess, token: str) -> tuple[int, str, str | None]:
        port = gateway.url.rsplit(":", 1)[1]
        async with (
            asyncio.timeout(CLI_WAIT),
            aiohttp.ClientSession() as http,
            http.get(
                f"{gateway.url}/notebooks?x=1",
                headers={
                    "Host": f"lab--{OWNER}.localhost:{port}",
                    "Authorization": f"Bearer {token}",
                    "Accept": "application/json",
                },
            ) as response,
        ):
            return response.status, await response.text(), response.headers.get("Retry-After")

    try:
        async with running_provider(tmp_path) as idp:
            browser = ("--oidc-issuer", idp.issuer, "--apps-domain", "localhost")
            async with (
                gateway_running(kube, tmp_path / "gateway", env, extra=browser) as gateway,
                gateway_running(
                    kube, tmp_path / "short", env, wake_timeout=2, extra=browser
                ) as short,
                aiohttp.ClientSession() as http,
            ):
                token = (await device_login(http, idp.issuer, OWNER))["access_token"]
                settings = fast_settings(
                    kube,
                    signing_key_file=gateway.state_dir / SIGNING_KEY_FILE,
                    server_api=gateway.url,
                )
                async with operator_running(settings):
                    await kube.create_agent("lab", lab)
                    # Pods run, but no agent ever connects: held to the deadline, then 503.
                    async with kubelet_running(kube, tmp_path) as kubelet:
                        await eventually(lambda: kubelet.pods, "the workspace pod")
                        status, body, retry = await app_request(short, token)
                        assert status == 503, body
                        assert retry is not None and int(retry) > 0
                        assert json.loads(body) == {"error": "workspace lab is not ready yet"}
                        assert WAKE_ANNOTATION in agent_annotations(kube, "lab")

                    async with kubelet_running(
                        kube, tmp_path, run_agents=True, port_map={8888: app_port}
                    ):
                        await eventually(partial(status_in, kube, "lab", "Running"), "Running")
                        async with http.post(
                            f"{gateway.url}/api/workspaces/lab/stop",
                            headers={"Authorization": f"Bearer {token}"},
                        ) as response:
                            assert response.status == 200, await response.text()
                        await eventually(partial(status_in, kube, "lab", "ScaledDown"), "down")
                        await eventually(
                            lambda: kube.replicas("user-testuser-lab") == 0, "replicas 0"
                        )
                        mark = kube.mark()
                        # Scaled down: this one request wakes it and waits for its answer.
                        status, body, _ = await app_request(gateway, token)
                        assert (status, body) == (200, "hello from the app at /notebooks"), body
                        assert gateway_writes(kube, mark) == [
                            f"PATCH /apis/kuberde.io/v1/namespaces/{NAMESPACE}/rdeagents/lab"
                        ]
                        assert kube.replicas("user-testuser-lab") == 1

                        # The dashboard acts through the same requests: extend, then stop.
                        browser_session = Browser()
                        try:
                            page = await asyncio.wait_for(
                                browser_session.complete(
                                    f"{gateway.url}/auth/login",
                                    {"login": OWNER, "password": "any"},
                                    done=f"Signed in as <strong>{OWNER}</strong>",
                                ),
                                CLI_WAIT,
                            )
                            forms = {form.action: form for form in forms_of(page.text)}
                            extend = forms["/dashboard/workspaces/lab/extend"]
                            page = await browser_session.submit(
                                Page(page.url, page.status, _only_form(page.text, extend.action)),
                                {"duration": "2h"},
                            )
                            assert "lab stays up until at least" in page.text, page.text[:500]
                            assert EXTEND_ANNOTATION in agent_annotations(kube, "lab")
                            stop = "/dashboard/workspaces/lab/stop"
                            page = await browser_session.submit(
                                Page(page.url, page.status, _only_form(page.text, stop)), {}
                            )
                            assert "lab is scaled down" in page.text, page.text[:500]
                        finally:
                            await browser_session.close()
                        await eventually(partial(status_in, kube, "lab", "ScaledDown"), "down")
                        annotations = agent_annotations(kube, "lab")
                        assert STOP_ANNOTATION not in annotations
                        assert EXTEND_ANNOTATION not in annotations
    finally:
        await runner.cleanup()


def _only_form(html: str, action: str) -> str:
    """The page's form posting to `action` alone, for `Browser.submit` (it takes the first)."""
    match = re.search(
        rf'<form[^>]*action="{re.escape(action)}".*?</form>', html, re.DOTALL | re.IGNORECASE
    )
    assert match is not None, f"no form for {action}"
    return match.group(0)


async def test_ls_and_open_from_the_cli_against_a_kubernetes_gateway(
    kube: Kube, tmp_path: Path, env: dict[str, str], workspace_port: int
) -> None:
    """`kuberde ls`, `ls -w`, `open` and name completion show what the operator reports
    through the gateway, each user their own and an admin everyone's with owners; someone
    else's workspace is answered as a missing one; `apply`, `delete` and `logs` name the
    kubectl command."""
    lab = {"name": "web", "port": 8888}
    async with running_provider(tmp_path, admins=("root",)) as idp:
        browser = ("--oidc-issuer", idp.issuer, "--apps-domain", "localhost")
        async with gateway_running(kube, tmp_path / "gateway", env, extra=browser) as gateway:
            tokens = {}
            for user in ("alice", "bob", "root"):
                # A session each: the provider's sign-in cookie must not carry over.
                async with aiohttp.ClientSession() as http:
                    tokens[user] = (await device_login(http, idp.issuer, user))["access_token"]

            async def cli(user: str, *args: str) -> tuple[int, str, str]:
                cli_env = {
                    **gateway.env,
                    "KUBERDE_SERVER": gateway.url,
                    "KUBERDE_TOKEN": tokens[user],
                }
                code, out, err = await kuberde(list(args), cli_env)
                return code, out.decode(), err

            settings = fast_settings(
                kube, signing_key_file=gateway.state_dir / SIGNING_KEY_FILE, server_api=gateway.url
            )
            async with (
                kubelet_running(kube, tmp_path, run_agents=True, port_map={2222: workspace_port}),
                operator_running(settings),
            ):
                for owner in ("alice", "bob"):
                    agent_spec = {**workspace_spec("1h"), "owner": owner, "apps": [lab]}
                    await kube.create_agent(f"{owner}-ws", agent_spec)
                for owner in ("alice", "bob"):
                    name = f"{owner}-ws"
                    await eventually(partial(status_in, kube, name, "Running"), "Running")

                def pod_of(name: str) -> str:
                    return str(kube.status(name)["pod"])

                async def listed() -> bool:
                    """The gateway's directory has caught up with the operator's status."""
                    async with (
                        asyncio.timeout(WAIT),
                        aiohttp.ClientSession() as http,
                        http.get(
                            f"{gateway.url}/api/workspaces",
                            headers={"Authorization": f"Bearer {tokens['root']}"},
                        ) as response,
                    ):
                        assert response.status == 200, await response.text()
                        items = (await response.json())["workspaces"]
                    pods = {item["name"]: item["pod"] for item in items if item["online"]}
                    return pods == {name: pod_of(name) for name in ("alice-ws", "bob-ws")}

                await eventually_async(listed, "the gateway to list both workspaces up")
                code, out, err = await cli("alice", "ls")
                assert code == 0, err
                header, *rows = out.splitlines()
                assert header.split() == ["NAME", "STATUS", "ONLINE", "POD", "AGE"]
                [row] = rows
                assert row.split()[:4] == ["alice-ws", "Running", "true", pod_of("alice-ws")]
                assert "bob-ws" not in out

                code, out, err = await cli("alice", "ls", "-o", "json")
                assert code == 0, err
                [item] = json.loads(out)
                url = f"http://alice-ws--alice.localhost:{gateway.url.rsplit(':', 1)[1]}/"
                assert item["name"] == "alice-ws" and item["owner"] == "alice"
                assert item["phase"] == "Running" and item["online"] is True
                assert item["ttl"] == "1h" and item["created_at"]
                assert item["apps"] == [{"name": "web", "port": 8888, "path": "/", "url": url}]

                code, out, err = await cli("root", "ls", "-o", "json")
                assert code == 0, err
                owners = {entry["name"]: entry["owner"] for entry in json.loads(out)}
                assert owners == {"alice-ws": "alice", "bob-ws": "bob"}

                code, out, err = await cli("alice", "open", "alice-ws")
                assert (code, out.strip()) == (0, url), err
                assert "no browser was opened" in err

                # Someone else's workspace answers exactly as a missing one.
                missing = await cli("bob", "open", "nosuch")
                code, out, err = await cli("bob", "open", "alice-ws")
                assert code == missing[0] == 1 and out == missing[1] == ""
                assert err == missing[2].replace("nosuch", "alice-ws")
                assert "no workspace named 'alice-ws'" in err
                code, out, err = await cli("bob", "ls", "-o", "name")
                assert (code, out.strip()) == (0, "rdeagent/bob-ws"), err
                # Shell completion of names (the console script: click completes its own name).
                completion = {"_KUBERDE_COMPLETE": "complete_bash", "COMP_CWORD": "2"}
                for user, expected in (("bob", ["bob-ws"]), ("root", ["alice-ws", "bob-ws"])):
                    process = await asyncio.create_subprocess_exec(
                        str(Path(sys.executable).with_name("kuberde")),
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=asyncio.subprocess.PIPE,
                        env={
                            **gateway.env,
                            **completion,
                            "COMP_WORDS": "kuberde stop ",
                            "KUBERDE_SERVER": gateway.url,
                            "KUBERDE_TOKEN": tokens[user],
                        },
                    )
                    try:
                        completed, _ = await asyncio.wait_for(process.communicate(), CLI_WAIT)
                    finally:
                        await reap(process)
                    assert (process.returncode, completed.decode().split()) == (0, expected)

                # `ls -w` prints the table, then each change: bob's stop shows up on its own.
                watch = await asyncio.create_subprocess_exec(
                    *KUBERDE,
                    "ls",
                    "-w",
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    env={
                        **gateway.env,
                        "KUBERDE_SERVER": gateway.url,
                        "KUBERDE_TOKEN": tokens["bob"],
                    },
                )
                assert watch.stdout is not None
                try:
                    lines = [
                        (await asyncio.wait_for(watch.stdout.readline(), CLI_WAIT)).decode()
                        for _ in range(2)
                    ]
                    assert lines[0].split()[:2] == ["NAME", "STATUS"]
                    assert lines[1].split()[:2] == ["bob-ws", "Running"]
                    code, _, err = await cli("bob", "stop", "bob-ws")
                    assert code == 0, err
                    changes: list[list[str]] = []
                    async with asyncio.timeout(CLI_WAIT):
                        while not changes or changes[-1][:2] != ["bob-ws", "ScaledDown"]:
                            line = await watch.stdout.readline()
                            assert line, f"ls -w exited after {changes}"
                            changes.append(line.decode().split())
                    assert all(change[0] == "bob-ws" for change in changes), changes
                    assert changes[-1][2] == "false"
                finally:
                    watch.kill()
                    await watch.wait()

                manifest = tmp_path / "ws.yaml"
                manifest.write_text("kind: RDEAgent\n")
                mark = kube.mark()
                code, out, err = await cli("alice", "apply", "-f", str(manifest))
                assert code == 1 and out == ""
                hint = "on Kubernetes, workspaces are RDEAgents: `kubectl -n"
                assert hint in err and "apply -f FILE`" in err
                code, _, err = await cli("alice", "delete", "alice-ws")
                assert code == 1 and hint in err and "delete rdeagent alice-ws`" in err
                code, _, err = await cli("alice", "logs", "alice-ws")
                assert code == 1 and "logs deploy/user-alice-alice-ws`" in err
                code, _, err = await cli("bob", "delete", "alice-ws")
                assert code == 1 and "no workspace named 'alice-ws'" in err
                assert gateway_writes(kube, mark) == []
                assert kube.agent("alice-ws") is not None
