"""The operator against an emulated Kubernetes API over HTTP: objects, changes, errors, HA."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kuberde.auth import LocalTokenVerifier, SigningKey, load_or_create_signing_key
from kuberde.testing.processes import reap
from tests.integration.conftest import RunningGateway
from tests.integration.kube import (
    DEPLOYMENTS,
    LEASES,
    NAMESPACE,
    PVCS,
    SECRETS,
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
    requests_by,
    server_defaults,
    status_in,
    writes_of,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:kmock")

OWNER = "testuser"


def condition(status: dict[str, Any], kind: str) -> str | None:
    for item in status.get("conditions") or []:
        if item.get("type") == kind:
            return str(item.get("status"))
    return None


@pytest.fixture
def signing_key(tmp_path: Path) -> SigningKey:
    return load_or_create_signing_key(tmp_path / "keys")


@pytest.fixture
def key_file(tmp_path: Path, signing_key: SigningKey) -> Path:
    return tmp_path / "keys" / "signing-key.pem"


def workspace(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "owner": OWNER,
        "ttl": "5m",
        "localTarget": "127.0.0.1:2222",
        "workload": {
            "image": "lscr.io/linuxserver/openssh-server:latest",
            "ports": [{"name": "ssh", "containerPort": 2222}],
        },
    }
    spec.update(overrides)
    return spec


async def test_create_builds_owned_objects(
    kube: Kube, key_file: Path, signing_key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kuberde")
    settings = fast_settings(
        kube, signing_key_file=key_file, agent_server_url="http://frp-server.kuberde.svc:8080"
    )
    async with operator_running(settings):
        created = await kube.create_agent(
            "ssh-server", workspace(storage={"size": "5Gi", "mountPath": "/config"})
        )
        uid = created["metadata"]["uid"]
        deployment = await eventually(
            lambda: kube.deployment("user-testuser-ssh-server"), "the Deployment"
        )
        secret = await eventually(
            lambda: kube.get(SECRETS, "user-testuser-ssh-server-credential"), "the Secret"
        )
        claim = await eventually(lambda: kube.get(PVCS, "user-testuser-ssh-server-home"), "the PVC")
        status = await eventually(
            partial(status_in, kube, "ssh-server", "Pending"), "status Pending (no pod yet)"
        )

    owner = {"apiVersion": "kuberde.io/v1", "kind": "RDEAgent", "name": "ssh-server", "uid": uid}
    for obj in (deployment, secret):
        assert [dict(ref, controller=True) for ref in obj["metadata"]["ownerReferences"]] == [
            {**owner, "controller": True, "blockOwnerDeletion": True}
        ]
    assert "ownerReferences" not in claim["metadata"], "the PVC must never be garbage-collected"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"

    assert deployment["spec"]["replicas"] == 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels == {"app": "frp-agent", "instance": "user-testuser-ssh-server"}
    agent, workload = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in agent["env"]}
    assert env["SERVER_URL"] == "ws://frp-server.kuberde.svc:8080/ws"
    assert env["AGENT_ID"] == "user-testuser-ssh-server"
    assert env["LOCAL_TARGET"] == "127.0.0.1:2222"
    assert workload["image"] == "lscr.io/linuxserver/openssh-server:latest"
    assert {"name": "workspace", "mountPath": "/config"} in workload["volumeMounts"]

    token = base64.b64decode(secret["data"]["token"]).decode()
    principal = await LocalTokenVerifier.from_signing_key(signing_key).verify_agent(token)
    assert (principal.name, principal.owner, principal.agent_uid) == (
        "user-testuser-ssh-server",
        OWNER,
        uid,
    )
    assert token not in caplog.text

    assert status["online"] is False
    assert status["observedGeneration"] == 1
    assert "pod" not in status
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Synced"]["status"] == "True"
    assert conditions["Ready"]["status"] == "False"
    # Logged only about a Deployment that exists: a new one is no "change" (runbook §3).
    assert "deploymentSpecChanged returned: true" not in caplog.text
    assert kube.all(DEPLOYMENTS) == [kube.deployment("user-testuser-ssh-server")]


async def test_spec_update_is_one_deployment_write(
    kube: Kube, key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kuberde")
    async with operator_running(fast_settings(kube, signing_key_file=key_file)) as runner:
        await kube.create_agent("dev", workspace())
        await eventually(lambda: kube.status("dev").get("observedGeneration") == 1, "first sync")
        await reconciles_after(runner, 2)
        mark = kube.mark()

        await kube.patch_agent("dev", {"spec": {"workload": {"image": "example.org/dev:2"}}})
        await eventually(
            lambda: kube.status("dev").get("observedGeneration") == 2, "the new generation synced"
        )
        await reconciles_after(runner, 3)
        deployment = kube.deployment("user-testuser-dev")
        assert deployment is not None
        assert deployment["spec"]["template"]["spec"]["containers"][1]["image"] == (
            "example.org/dev:2"
        )
        writes = [w for w in writes_of(requests_by(kube, runner.identity, mark)) if "/deploy" in w]
        assert writes == ["PATCH /apis/apps/v1/namespaces/kuberde/deployments/user-testuser-dev"]
        assert deployment["spec"]["replicas"] == 1


async def test_delete_leaves_owned_objects_to_gc_and_keeps_the_pvc(
    kube: Kube, key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kuberde")
    async with operator_running(fast_settings(kube, signing_key_file=key_file)) as runner:
        created = await kube.create_agent("notebook", workspace(storage={"size": "1Gi"}))
        uid = created["metadata"]["uid"]
        await eventually(lambda: kube.deployment("user-testuser-notebook"), "the Deployment")
        await eventually(lambda: kube.status("notebook").get("phase"), "a status")
        for resource, name in (
            (DEPLOYMENTS, "user-testuser-notebook"),
            (SECRETS, "user-testuser-notebook-credential"),
        ):
            obj = kube.get(resource, name)
            assert obj is not None
            assert [ref["uid"] for ref in obj["metadata"]["ownerReferences"]] == [uid]

        await kube.delete_agent("notebook")
        await eventually(lambda: "RDEAgent notebook deleted" in caplog.text, "the deletion seen")
        await eventually(
            lambda: (
                kube.deployment("user-testuser-notebook") is None
                and kube.get(SECRETS, "user-testuser-notebook-credential") is None
            ),
            "the garbage collector to remove the Deployment and Secret",
        )
        await loops_after(runner, "status", 3)
        mark = kube.mark()
        await loops_after(runner, "status", 3)
        await loops_after(runner, "ttl", 3)
        assert kube.get(PVCS, "user-testuser-notebook-home") is not None
        assert writes_of(requests_by(kube, runner.identity, mark)) == []
        deletes = [line for line in requests_by(kube, runner.identity) if line.startswith("DELETE")]
        assert deletes == [], "the operator deletes nothing itself"


async def test_a_failing_agent_is_retried_and_forgotten_once_deleted(
    kube: Kube, key_file: Path
) -> None:
    """A reconcile that keeps failing is retried with backoff, without new events, while the
    others are served; deleting that agent leaves nothing about it anywhere in the operator."""
    claim = f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims/user-testuser-flaky-home"
    kube.server[f"get {claim}"] << 500
    # No resync sweep and no re-listing watch during the test: only the engine's retries
    # reconcile it again.
    settings = fast_settings(
        kube, signing_key_file=key_file, resync_interval=3600, watch_inactivity_timeout=3600
    )
    async with operator_running(settings) as runner:
        assert runner.operator is not None
        operator = runner.operator
        await kube.create_agent("flaky", workspace())
        await kube.create_agent("dev", workspace())
        await eventually(partial(status_in, kube, "dev", "Pending"), "dev reconciled")
        await eventually(
            lambda: runner.metric("kuberde_operator_reconciles_total", {"result": "error"}) >= 3,
            "the failing reconcile retried",
        )
        assert kube.deployment("user-testuser-flaky") is None
        assert set(operator.remembers("flaky")) >= {"store", "engine"}
        await kube.delete_agent("flaky")
        await eventually(lambda: operator.remembers("flaky") == [], "flaky forgotten")
        await kube.delete_agent("dev")
        await eventually(lambda: operator.remembers("dev") == [], "dev forgotten")


async def test_steady_state_writes_nothing_across_resyncs_and_a_restart(
    kube: Kube, gateway: RunningGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Deployments decorated with server defaults, Running and ScaledDown agents: no writes."""
    caplog.set_level(logging.INFO, logger="kuberde")
    settings = partial(
        fast_settings, kube, signing_key_file=key_file_of(gateway), server_api=gateway.url
    )
    async with kubelet_running(kube, tmp_path, run_agents=True):
        async with operator_running(settings()) as runner:
            await kube.create_agent("ssh-server", workspace())
            await kube.create_agent("code-server", workspace(ttl="0"))
            await kube.create_agent("jupyter-notebook", workspace(ttl="1s"))
            for name in ("ssh-server", "code-server"):
                await eventually(partial(status_in, kube, name, "Running"), f"{name} Running")
            await eventually(
                lambda: (
                    kube.status("jupyter-notebook").get("phase") == "ScaledDown"
                    and condition(kube.status("jupyter-notebook"), "Connected") == "False"
                ),
                "jupyter-notebook scaled down by its 1s TTL, its agent gone",
            )
            for agent_id in ("ssh-server", "code-server", "jupyter-notebook"):
                kube.update_stored(DEPLOYMENTS, f"user-testuser-{agent_id}", server_defaults)
            await reconciles_after(runner, 3)
            mark = kube.mark()
            await reconciles_after(runner, 3 * 3)
            await loops_after(runner, "status", 5)
            await loops_after(runner, "ttl", 5)
            assert writes_of(requests_by(kube, runner.identity, mark)) == []
            running_status = kube.status("ssh-server")

        caplog.clear()
        async with operator_running(settings()) as restarted:
            await reconciles_after(restarted, 3 * 3)
            await loops_after(restarted, "status", 5)
            await loops_after(restarted, "ttl", 5)
            assert writes_of(requests_by(kube, restarted.identity, mark)) == []
            assert requests_by(kube, restarted.identity, mark), "the new replica did run"

    assert kube.replicas("user-testuser-jupyter-notebook") == 0
    assert kube.replicas("user-testuser-ssh-server") == 1
    assert kube.status("ssh-server") == running_status
    assert running_status["pod"].startswith("user-testuser-ssh-server-")
    # Its agent connecting is not activity: the idle clock runs from the creation.
    assert running_status["lastActivitySource"] == "created"
    assert "Agent jupyter-notebook is scaled down by TTL, preserving replicas=0" in caplog.text
    assert "deploymentSpecChanged returned: true" not in caplog.text
    assert "deploymentSpecChanged returned: false" in caplog.text


INVALID = {
    "bad-ttl": (workspace(ttl="5 minutes"), "invalid TTL"),
    "bad-size": (workspace(storage={"size": "lots"}), "size 'lots' is not a Kubernetes quantity"),
    "bad-reclaim": (
        workspace(storage={"reclaimPolicy": "Recycle"}),
        "spec.storage.reclaimPolicy: Input should be 'Retain' or 'Delete'",
    ),
    "bad-mount": (
        workspace(storage={"mountPath": "home"}),
        "mountPath 'home' must be an absolute path",
    ),
    "bad-owner": (workspace(owner="Alice_"), "owner"),
    "x" * 50: (workspace(), "the limit is 63"),
    "no-image": (workspace(workload={"command": ["sleep", "infinity"]}), "workload.image"),
}


async def test_invalid_agents_get_error_and_event_while_others_work(
    kube: Kube, key_file: Path
) -> None:
    async with operator_running(fast_settings(kube, signing_key_file=key_file)) as runner:
        for name, (spec, _) in INVALID.items():
            await kube.create_agent(name, spec)
        await kube.create_agent("dev", workspace())
        await eventually(
            lambda: kube.deployment("user-testuser-dev"), "the valid agent's Deployment"
        )
        for name, (_, expected) in INVALID.items():
            status = await eventually(
                partial(status_in, kube, name, "Error"), f"{name} in phase Error"
            )
            assert expected in status["message"], (name, status["message"])
            assert status["online"] is False
            assert condition(status, "Synced") == "False"
            events = await eventually(
                partial(kube.events, name, "InvalidSpec"), f"a Warning Event for {name}"
            )
            assert events[0]["type"] == "Warning"
            assert expected in events[0]["message"]
        await eventually(partial(status_in, kube, "dev", "Pending"), "dev Pending")
        assert [d["metadata"]["name"] for d in kube.all(DEPLOYMENTS)] == ["user-testuser-dev"]
        assert len(kube.all(SECRETS)) == 1
        assert [c["metadata"]["name"] for c in kube.all(PVCS)] == ["user-testuser-dev-home"]
        await reconciles_after(runner, 2 * len(INVALID))
        await loops_after(runner, "status", 3)
        for name in INVALID:
            assert len(kube.events(name)) == 1, "each problem is announced once"


async def test_colliding_agent_ids_second_one_gets_error_naming_the_first_to_the_admin_only(
    kube: Kube, key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11: the status its owner sees says the ID is taken and names nobody; the operator's
    log and the Warning Event (the admin's view) say by whom."""
    caplog.set_level(logging.INFO, logger="kuberde")
    async with operator_running(fast_settings(kube, signing_key_file=key_file)) as runner:
        first = await kube.create_agent("smith-dev", workspace(owner="alice"))
        await eventually(
            lambda: kube.deployment("user-alice-smith-dev"), "the first agent's Deployment"
        )
        await kube.create_agent("dev", workspace(owner="alice-smith"))
        status = await eventually(
            partial(status_in, kube, "dev", "Error"), "the second agent in phase Error"
        )
        assert status["message"] == (
            "agent ID user-alice-smith-dev is already taken by another workspace; "
            "choose another name"
        )
        detail = "is already used by RDEAgent 'smith-dev' (owner 'alice')"
        assert all(detail not in str(c) for c in status["conditions"]), "conditions too"
        assert detail in kube.events("dev", "AgentIDConflict")[0]["message"]
        assert f"RDEAgent dev: agent ID user-alice-smith-dev {detail}" in caplog.text
        await reconciles_after(runner, 4)
        deployment = kube.deployment("user-alice-smith-dev")
        assert deployment is not None
        assert deployment["metadata"]["ownerReferences"][0]["uid"] == first["metadata"]["uid"]
        assert kube.status("smith-dev").get("phase") == "Pending"

        await kube.delete_agent("smith-dev")
        claim = "user-alice-smith-dev-home"
        retained = await eventually(
            partial(kube.events, "smith-dev", "VolumeRetained"), "an Event: the volume is kept"
        )
        assert f"PersistentVolumeClaim {claim} is kept" in retained[0]["message"]
        foreign = f"PersistentVolumeClaim {claim} belongs to another workspace, so it is not"
        await eventually(
            lambda: foreign in kube.status("dev").get("message", ""),
            "the second agent refused alice's volume",
        )
        assert "alice" not in kube.status("dev")["message"].replace(claim, "")
        detail = f"PersistentVolumeClaim {claim} belongs to owner 'alice' (RDEAgent 'smith-dev')"
        assert detail in kube.events("dev", "ForeignVolume")[0]["message"]
        await reconciles_after(runner, 4)
        assert kube.deployment("user-alice-smith-dev") is None, "alice's volume is never mounted"
        assert kube.get(PVCS, claim) is not None

        await kube.delete_pvc(claim)
        await eventually(
            partial(status_in, kube, "dev", "Pending"), "the second agent takes the ID over"
        )
        deployment = await eventually(
            lambda: kube.deployment("user-alice-smith-dev"), "the Deployment of the second agent"
        )
        assert deployment["metadata"]["labels"]["kuberde.io/owner"] == "alice-smith"
        fresh = await eventually(lambda: kube.get(PVCS, claim), "a new volume for alice-smith")
        assert fresh["metadata"]["labels"]["kuberde.io/owner"] == "alice-smith"


async def http_get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, asyncio.timeout(WAIT), http.get(url) as response:
        return response.status, await response.text()


async def test_second_replica_stands_by_and_takes_over(kube: Kube, key_file: Path) -> None:
    settings = partial(fast_settings, kube, signing_key_file=key_file)
    async with operator_running(settings()) as first:
        await eventually(lambda: first.leading, "the first replica to lead")
        async with operator_running(settings()) as second:
            mark = kube.mark()
            await kube.create_agent("dev", workspace())
            await eventually(lambda: kube.deployment("user-testuser-dev"), "the Deployment")
            await loops_after(first, "status", 3)
            assert not second.leading
            standby = requests_by(kube, second.identity, mark)
            assert standby, "the standby polls the Lease"
            assert all("/leases/" in line for line in standby), standby
            assert writes_of(standby, leases=True) == []
            assert second.metric("kuberde_operator_leader") == 0
            assert first.metric("kuberde_operator_leader") == 1

            status, body = await http_get(second.health_url + "/readyz")
            assert status == 200 and "standing by" in body
            status, body = await http_get(first.health_url + "/readyz")
            assert status == 200 and "leading" in body
            status, _ = await http_get(second.health_url + "/healthz")
            assert status == 200
            status, metrics = await http_get(first.health_url + "/metrics")
            assert status == 200
            for name in (
                "kuberde_operator_reconciles_total",
                "kuberde_operator_api_writes_total",
                "kuberde_operator_loop_duration_seconds_bucket",
                "kuberde_operator_scale_downs_total",
                "kuberde_operator_wakes_total",
                "kuberde_operator_errors_total",
            ):
                assert name in metrics, name

            await first.stop()
            await eventually(lambda: second.leading, "the standby to take over")
            await kube.create_agent("notebook", workspace())
            await eventually(
                lambda: kube.deployment("user-testuser-notebook"), "the new leader's Deployment"
            )
            assert second.metric("kuberde_operator_leader") == 1


async def test_cli_runs_the_operator_and_stops_on_sigterm(
    kube: Kube, key_file: Path, tmp_path: Path
) -> None:
    """`kuberde operator` as a process: main thread, uvloop, signals, exit status."""
    port = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kube.kubeconfig),
        "KUBERDE_SIGNING_KEY_FILE": str(key_file),
        "KUBERDE_SERVER_API": f"http://127.0.0.1:{free_port()}",
        "KUBERDE_OPERATOR_LISTEN": f"127.0.0.1:{port}",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import typer; from kuberde.cli.operator_cmd import operator; typer.run(operator)",
        "--status-interval",
        "0.5",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await eventually_async(
            lambda: ready(f"http://127.0.0.1:{port}/readyz"), "the operator process ready"
        )
        await kube.create_agent("dev", workspace())
        await eventually(lambda: kube.deployment("user-testuser-dev"), "its Deployment")
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT):
            _, stderr = await process.communicate()
    finally:
        await reap(process)
    assert process.returncode == 0, stderr.decode()
    lease = kube.get(LEASES, "kuberde-operator")
    assert lease is not None and lease["spec"]["holderIdentity"] == "", "the Lease is released"


async def ready(url: str) -> bool:
    try:
        status, _ = await http_get(url)
    except aiohttp.ClientError:
        return False
    return status == 200
