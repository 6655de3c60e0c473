"""`kuberde doctor` against the emulated cluster: healthy, then with red flags injected."""

from __future__ import annotations

import json
import shlex
import sys

import pytest

from kuberde.testing.cluster import Cluster, CommandResult
from tests.runbook.conftest import Runbook, eventually
from tests.runbook.test_runbook import all_agents_online

pytestmark = pytest.mark.asyncio(loop_scope="module")

DOCTOR = f"{shlex.quote(sys.executable)} -m kuberde doctor --window 2 --ttl-interval 2"


async def doctor(cluster: Cluster, *args: str) -> CommandResult:
    return await cluster.sh(" ".join([DOCTOR, *map(shlex.quote, args)]))


async def test_a_healthy_cluster(cluster: Cluster, runbook: Runbook) -> None:
    await runbook.until("doctor", "kubectl get rdeagent -n kuberde -o wide", all_agents_online)
    result = await doctor(cluster, "--gateway", cluster.gateway_url())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "❌" not in result.stdout
    for check in ("operator pod", "gateway reachable", "agent ssh-server", "deployment stability"):
        assert f"✅ {check}: " in result.stdout, result.stdout
    document = json.loads((await doctor(cluster, "-o", "json")).stdout)
    assert document["ok"] is True
    assert {finding["check"] for finding in document["findings"]} >= {
        "TTL loop alive",
        "TTL enforcer timing",
        "agent authentication",
    }


async def test_an_unreachable_gateway(cluster: Cluster) -> None:
    result = await doctor(cluster, "--gateway", "http://127.0.0.1:9", "-o", "json")
    assert result.returncode == 1
    [failed] = [item for item in json.loads(result.stdout)["findings"] if not item["ok"]]
    assert failed["check"] == "gateway reachable"
    assert "kubectl get pods -n kuberde -l app=frp-server" in failed["fix"]


async def test_an_unreasonable_ttl(cluster: Cluster) -> None:
    await cluster.kubectl(
        "patch", "rdeagent", "code-server", "-n", "kuberde", "--type=merge", "-p",
        '{"spec":{"ttl":"24h"}}',
    )  # fmt: skip
    try:
        result = await doctor(cluster)
        assert result.returncode == 1
        assert "❌ TTL values: " in result.stdout and "code-server: 24h" in result.stdout
        assert "fix: set spec.ttl" in result.stdout
    finally:
        await cluster.kubectl(
            "patch", "rdeagent", "code-server", "-n", "kuberde", "--type=merge", "-p",
            '{"spec":{"ttl":"5m"}}',
        )  # fmt: skip


async def test_an_agent_in_error(cluster: Cluster) -> None:
    broken = (
        "apiVersion: kuberde.io/v1\nkind: RDEAgent\nmetadata: {name: broken, namespace: kuberde}\n"
        'spec: {owner: testuser, ttl: "1.5h"}\n'
    )
    await cluster.sh(f"echo {shlex.quote(broken)} | kubectl apply -f -")
    try:

        async def in_error() -> bool:
            result = await cluster.sh(
                "kubectl get rdeagent -n kuberde broken -o jsonpath='{.status.phase}'"
            )
            return result.stdout == "Error"

        await eventually(in_error, "the operator to put the broken agent in Error")
        result = await doctor(cluster)
        assert result.returncode == 1
        assert "❌ agent broken: STATUS=Error" in result.stdout, result.stdout
        assert "fix: Deployment/PVC issue: kubectl describe rdeagent" in result.stdout
        assert "❌ TTL values: " in result.stdout and "broken: " in result.stdout
        assert "✅ agent ssh-server: " in result.stdout, "the others keep passing"
    finally:
        await cluster.kubectl("delete", "rdeagent", "-n", "kuberde", "broken")


async def test_a_cluster_gateway_in_the_cli_config_is_checked_as_a_cluster(
    cluster: Cluster,
) -> None:
    configured = f"KUBERDE_SERVER={shlex.quote(cluster.gateway_url())} KUBERDE_TOKEN=unused "
    result = await cluster.sh(configured + DOCTOR)
    assert "✅ operator pod: " in result.stdout, result.stdout + result.stderr
    local = await cluster.sh(configured + DOCTOR + " --local")
    assert local.returncode == 1
    assert local.stderr == (
        f"kuberde: {cluster.gateway_url()} is not a local `kuberde up` (it has no /api/runtime)\n"
    )


async def test_doctor_local_with_no_gateway_configured_says_how_to_configure_one(
    cluster: Cluster,
) -> None:
    result = await doctor(cluster, "--local")
    assert result.returncode == 2
    assert "no server configured: pass --server, set KUBERDE_SERVER or run `kuberde up`" in (
        result.stderr
    )
