"""Workspaces keep their work on Kubernetes: the home PVC, whose it is, and backup/restore.

The emulated kubelet (`tests.integration.kube.Kubelet`) stands in for the volume: a file a
workload writes is recorded against the uid of the PVC its pod mounts at that path, so it
survives exactly as long as that PVC object does, and a PVC made anew is empty. Everything
else is real: the operator against the emulated API server, the gateway, the agents, the
real `kubectl` for the runbook's backup and restore, and the `kuberde` CLI as a process.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import RunningGateway
from tests.integration.kube import (
    PVCS,
    WAIT,
    Kube,
    eventually,
    fast_settings,
    key_file_of,
    kubectl,
    kubelet_running,
    loops_after,
    operator_running,
    reconciles_after,
    requests_by,
    status_in,
    writes_of,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:kmock")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    from kuberde.auth import load_or_create_signing_key

    load_or_create_signing_key(tmp_path / "keys")
    return tmp_path / "keys" / "signing-key.pem"


def workspace(owner: str = "testuser", ttl: str = "0", **storage: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "owner": owner,
        "ttl": ttl,
        "localTarget": "127.0.0.1:2222",
        "workload": {"image": "lscr.io/linuxserver/openssh-server:latest"},
    }
    if storage:
        spec["storage"] = storage
    return spec


def claim_uid(kube: Kube, name: str) -> str:
    claim = kube.get(PVCS, name)
    assert claim is not None, f"PersistentVolumeClaim {name} is gone"
    return str(claim["metadata"]["uid"])


def mounted_claims(kube: Kube, agent_id: str) -> dict[str, str]:
    """mountPath → claimName of the workload container in the agent's Deployment."""
    deployment = kube.deployment(agent_id)
    assert deployment is not None, f"no Deployment {agent_id}"
    pod = deployment["spec"]["template"]["spec"]
    claims = {
        volume["name"]: volume["persistentVolumeClaim"]["claimName"]
        for volume in pod["volumes"]
        if "persistentVolumeClaim" in volume
    }
    workload = next(c for c in pod["containers"] if c["name"] == "workload")
    return {
        mount["mountPath"]: claims[mount["name"]]
        for mount in workload.get("volumeMounts", [])
        if mount["name"] in claims
    }


async def delete_all(kube: Kube, names: list[str]) -> None:
    """`kubectl delete rdeagent -n kuberde --all`, and the garbage collector's part."""
    for name in names:
        await kube.delete_agent(name)
    await eventually(
        lambda: all(kube.agent(name) is None for name in names), "the RDEAgents deleted"
    )


async def test_home_volume_keeps_work_across_scale_down_restart_deletion_and_restore(
    kube: Kube, gateway: RunningGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Runbook §5 with kubectl: every workspace comes back with its own volume and state."""
    caplog.set_level(logging.INFO, logger="kuberde")
    settings = partial(
        fast_settings, kube, signing_key_file=key_file_of(gateway), server_api=gateway.url
    )
    notebook, shell = "user-testuser-notebook", "user-testuser-shell"
    async with kubelet_running(kube, tmp_path, run_agents=True) as kubelet:
        async with operator_running(settings()):
            await kube.create_agent("notebook", workspace(mountPath="/home/jovyan"))
            await kube.create_agent("shell", workspace())
            for name in ("notebook", "shell"):
                await eventually(partial(status_in, kube, name, "Running"), f"{name} Running")
            assert mounted_claims(kube, notebook) == {"/home/jovyan": f"{notebook}-home"}
            assert mounted_claims(kube, shell) == {"/home/testuser": f"{shell}-home"}
            kubelet.write_file(notebook, "/home/jovyan/work/analysis.ipynb", "cells")
            kubelet.write_file(shell, "/home/testuser/.bashrc", "alias ll='ls -l'")
            claims = {agent: claim_uid(kube, f"{agent}-home") for agent in (notebook, shell)}

            await kube.patch_agent("notebook", {"spec": {"ttl": "1s"}})
            await eventually(
                partial(status_in, kube, "notebook", "ScaledDown"), "notebook scaled down"
            )
            assert kube.replicas(notebook) == 0
            assert notebook not in kubelet.pods

        async with operator_running(settings()) as restarted:
            await reconciles_after(restarted, 2 * 2)
            assert (kube.replicas(notebook), kube.replicas(shell)) == (0, 1)
            # Runbook §5 verbatim, but for --validate=false: kubectl's client-side schema
            # check needs an OpenAPI v2 document, which the emulated API server does not serve.
            backup = tmp_path / "frpagent_backup.yaml"
            backup.write_text(await kubectl(kube, "get", "rdeagent", "-n", "kuberde", "-o", "yaml"))
            await kubectl(kube, "delete", "rdeagent", "-n", "kuberde", "--all")
            await eventually(
                lambda: kube.deployment(notebook) is None and kube.deployment(shell) is None,
                "the garbage collector to remove the Deployments",
            )
            for name, agent in (("notebook", notebook), ("shell", shell)):
                events = await eventually(
                    partial(kube.events, name, "VolumeRetained"), f"{name}: volume kept"
                )
                assert f"PersistentVolumeClaim {agent}-home is kept" in events[0]["message"]
                assert f"RDEAgent {name} deleted: PersistentVolumeClaim {agent}-home" in (
                    caplog.text
                )

            await kubectl(kube, "apply", "--validate=false", "-f", str(backup))
            await eventually(partial(status_in, kube, "shell", "Running"), "shell Running again")
            await eventually(
                partial(status_in, kube, "notebook", "ScaledDown"), "notebook restored scaled down"
            )
            await reconciles_after(restarted, 2 * 3)
            await loops_after(restarted, "ttl", 3)
            assert kube.replicas(notebook) == 0, "a scaled-down workspace stays scaled down"
            assert (
                f"RDEAgent notebook (owner testuser) mounts its existing PersistentVolumeClaim "
                f"{notebook}-home again"
            ) in caplog.text
            assert {agent: claim_uid(kube, f"{agent}-home") for agent in claims} == claims
            assert kubelet.read_file(shell, "/home/testuser/.bashrc") == "alias ll='ls -l'"

            await kube.patch_agent("notebook", {"spec": {"ttl": "0"}})
            await kube.request_wake("notebook")
            await eventually(partial(status_in, kube, "notebook", "Running"), "notebook woken")
            assert kubelet.read_file(notebook, "/home/jovyan/work/analysis.ipynb") == "cells"
    assert len(kube.all(PVCS)) == 2


@pytest.mark.parametrize("order", [("smith-dev", "dev"), ("dev", "smith-dev")])
async def test_colliding_agents_keep_their_winner_across_a_restore(
    kube: Kube, key_file: Path, tmp_path: Path, order: tuple[str, str]
) -> None:
    claim = "user-alice-smith-dev-home"
    async with operator_running(fast_settings(kube, signing_key_file=key_file)) as runner:
        await kube.create_agent("smith-dev", workspace("alice"))
        await eventually(lambda: kube.get(PVCS, claim), "alice's volume")
        await kube.create_agent("dev", workspace("alice-smith"))
        await eventually(partial(status_in, kube, "dev", "Error"), "the newcomer refused")
        volume = claim_uid(kube, claim)
        saved = await kubectl(kube, "get", "rdeagent", "-n", "kuberde", "-o", "yaml")
        for item in yaml.safe_load(saved)["items"]:
            (tmp_path / f"{item['metadata']['name']}.yaml").write_text(yaml.safe_dump(item))

        await delete_all(kube, list(order))
        await eventually(lambda: kube.deployment("user-alice-smith-dev") is None, "GC")
        for name in order:
            await kubectl(kube, "apply", "--validate=false", "-f", str(tmp_path / f"{name}.yaml"))
        lost = "agent ID user-alice-smith-dev is already taken by another workspace"
        await eventually(
            lambda: lost in kube.status("dev").get("message", ""), "dev loses to smith-dev again"
        )
        await reconciles_after(runner, 2 * 3)
        assert kube.status("dev")["phase"] == "Error"
        assert kube.status("smith-dev").get("phase") == "Pending"
        deployment = kube.deployment("user-alice-smith-dev")
        assert deployment is not None
        assert deployment["metadata"]["labels"]["kuberde.io/owner"] == "alice"
        assert claim_uid(kube, claim) == volume


async def test_every_example_gets_its_home_volume(kube: Kube, key_file: Path) -> None:
    examples = [yaml.safe_load(path.read_text()) for path in sorted(DEPLOY.glob("examples/*"))]
    assert len(examples) == 3
    async with operator_running(fast_settings(kube, signing_key_file=key_file)):
        await kubectl(kube, "apply", "--validate=false", "-f", str(DEPLOY / "examples"))
        for example in examples:
            name = example["metadata"]["name"]
            agent = f"user-testuser-{name}"
            await eventually(partial(status_in, kube, name, "Pending"), f"{name} synced")
            home = example["spec"]["storage"]["mountPath"]
            assert mounted_claims(kube, agent) == {home: f"{agent}-home"}
            claim = kube.get(PVCS, f"{agent}-home")
            assert claim is not None
            assert (
                claim["spec"]["resources"]["requests"]["storage"]
                == (example["spec"]["storage"]["size"])
            )
            assert "ownerReferences" not in claim["metadata"]


async def test_reclaim_policy_delete_lets_the_volume_go_with_its_agent(
    kube: Kube, key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kuberde")
    claim = "user-testuser-scratch-home"
    async with operator_running(fast_settings(kube, signing_key_file=key_file)) as runner:
        created = await kube.create_agent("scratch", workspace())
        await eventually(lambda: kube.get(PVCS, claim), "the volume")
        await kube.patch_agent("scratch", {"spec": {"storage": {"reclaimPolicy": "Delete"}}})
        owned = await eventually(
            lambda: (kube.get(PVCS, claim) or {}).get("metadata", {}).get("ownerReferences"),
            "the volume owned by its RDEAgent",
        )
        assert [ref["uid"] for ref in owned] == [created["metadata"]["uid"]]
        await reconciles_after(runner, 3)
        mark = kube.mark()
        await reconciles_after(runner, 3)
        claim_writes = [
            line
            for line in writes_of(requests_by(kube, runner.identity, mark))
            if "/persistent" in line
        ]
        assert claim_writes == [], "an owner reference in place is not written again"
        await kube.delete_agent("scratch")
        await eventually(lambda: kube.get(PVCS, claim) is None, "the volume deleted by GC")
        events = await eventually(partial(kube.events, "scratch", "VolumeDeleted"), "an Event")
        assert (
            f"PersistentVolumeClaim {claim} is deleted with RDEAgent scratch"
            in (events[0]["message"])
        )
        assert "RDEAgent scratch deleted: PersistentVolumeClaim" in caplog.text


async def test_ephemeral_workspace_has_no_volume(kube: Kube, key_file: Path) -> None:
    async with operator_running(fast_settings(kube, signing_key_file=key_file)):
        await kube.create_agent("tmp", workspace(ephemeral=True))
        await eventually(partial(status_in, kube, "tmp", "Pending"), "tmp synced")
        assert mounted_claims(kube, "user-testuser-tmp") == {}
        assert kube.all(PVCS) == []


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ({"size": "ten gigs"}, "size 'ten gigs' is not a Kubernetes quantity"),
        ({"reclaimPolicy": "Recycle"}, "reclaimPolicy: Input should be 'Retain' or 'Delete'"),
        ({"mountPath": "data"}, "mountPath 'data' must be an absolute path"),
    ],
    ids=["size", "reclaimPolicy", "mountPath"],
)
async def test_bad_storage_on_a_live_agent_is_an_error_that_touches_nothing(
    kube: Kube, key_file: Path, storage: dict[str, Any], expected: str
) -> None:
    agent = "user-testuser-dev"
    async with operator_running(fast_settings(kube, signing_key_file=key_file)) as runner:
        await kube.create_agent("dev", workspace())
        await kube.create_agent("other", workspace())
        for name in ("dev", "other"):
            await eventually(partial(status_in, kube, name, "Pending"), f"{name} synced")
        await eventually(lambda: kube.get(PVCS, f"{agent}-home"), "its volume")
        await loops_after(runner, "status", 2)
        before = (kube.deployment(agent), kube.get(PVCS, f"{agent}-home"))
        mark = kube.mark()
        await kube.patch_agent("dev", {"spec": {"storage": storage}})
        status = await eventually(partial(status_in, kube, "dev", "Error"), "dev in Error")
        assert expected in status["message"]
        await reconciles_after(runner, 2 * 2)
        assert (kube.deployment(agent), kube.get(PVCS, f"{agent}-home")) == before
        writes = [
            line
            for line in writes_of(requests_by(kube, runner.identity, mark))
            if "/rdeagents/dev/status" not in line and "/events" not in line
        ]
        assert writes == [], "only the status and an Event of the broken agent change"
        assert kube.status("other").get("phase") == "Pending"


async def kuberde(kube: Kube, *args: str) -> tuple[int, str, str]:
    """The real `kuberde` CLI as a process, pointed at the emulated API server."""
    command = [sys.executable, "-m", "kuberde", *args, "--kubeconfig", str(kube.kubeconfig)]
    done = await asyncio.to_thread(
        subprocess.run,
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


async def test_kuberde_backup_and_restore_keep_volumes_winners_and_scale_down(
    kube: Kube, key_file: Path, tmp_path: Path
) -> None:
    saved = tmp_path / "rdeagents.yaml"
    stamp = "2026-01-01T00:00:00+00:00"
    async with operator_running(fast_settings(kube, signing_key_file=key_file)) as runner:
        await kube.create_agent("smith-dev", workspace("alice"))
        await eventually(lambda: kube.get(PVCS, "user-alice-smith-dev-home"), "alice's volume")
        await kube.create_agent("dev", workspace("alice-smith"))
        await kube.create_agent(
            "notebook", workspace(), annotations={"kuberde.io/scaled-down-at": stamp}
        )
        await eventually(partial(status_in, kube, "dev", "Error"), "the newcomer refused")
        await eventually(partial(status_in, kube, "notebook", "ScaledDown"), "notebook scaled down")
        volumes = {claim["metadata"]["name"]: claim["metadata"]["uid"] for claim in kube.all(PVCS)}
        assert sorted(volumes) == ["user-alice-smith-dev-home", "user-testuser-notebook-home"]

        code, out, err = await kuberde(kube, "backup", "-n", "kuberde", "-o", str(saved))
        assert (code, out) == (0, ""), err
        assert "saved 3 RDEAgents" in err
        items = yaml.safe_load(saved.read_text())["items"]
        live = kube.all("kuberde.io/v1/rdeagents")
        oldest_first = sorted(
            live, key=lambda a: (a["metadata"]["creationTimestamp"], a["metadata"]["name"])
        )
        assert [item["metadata"]["name"] for item in items] == [
            agent["metadata"]["name"] for agent in oldest_first
        ]
        for item in items:
            assert "status" not in item
            assert set(item["metadata"]) <= {"name", "namespace", "annotations", "labels"}
        notebook = next(item for item in items if item["metadata"]["name"] == "notebook")
        assert notebook["metadata"]["annotations"] == {"kuberde.io/scaled-down-at": stamp}

        await delete_all(kube, ["smith-dev", "dev", "notebook"])
        await eventually(lambda: kube.deployment("user-alice-smith-dev") is None, "GC")

        code, out, err = await kuberde(kube, "restore", str(saved), "--dry-run")
        assert code == 1, err
        assert kube.all("kuberde.io/v1/rdeagents") == [], "a dry run changes nothing"

        code, out, err = await kuberde(kube, "restore", str(saved))
        assert code == 1
        assert "created rdeagent/smith-dev" in out and "created rdeagent/notebook" in out
        assert (
            "refused rdeagent/dev: its volume PersistentVolumeClaim user-alice-smith-dev-home "
            "belongs to owner 'alice' (RDEAgent 'smith-dev'), not to owner 'alice-smith'"
        ) in err
        assert "1 RDEAgent not restored" in err
        assert kube.agent("dev") is None
        await eventually(partial(status_in, kube, "smith-dev", "Pending"), "smith-dev back")
        await eventually(
            partial(status_in, kube, "notebook", "ScaledDown"), "notebook back, scaled down"
        )
        await reconciles_after(runner, 2 * 2)
        assert kube.replicas("user-testuser-notebook") == 0
        assert {
            claim["metadata"]["name"]: claim["metadata"]["uid"] for claim in kube.all(PVCS)
        } == (volumes)

        code, out, err = await kuberde(kube, "restore", str(saved))
        assert code == 1
        assert "unchanged rdeagent/smith-dev" in out

        broken = tmp_path / "broken.yaml"
        broken.write_text(saved.read_text().replace("owner: alice\n", "owner: Alice_\n"))
        await delete_all(kube, ["notebook"])
        code, _, err = await kuberde(kube, "restore", str(broken))
        assert code == 2
        assert "nothing restored" in err and "owner" in err
        assert kube.agent("notebook") is None
