"""The operator runbook (`../shared/seeds/000_392b450856813a50.txt`), command by command.

Each command runs verbatim (placeholders filled in: owner `testuser`, agent `ssh-server`)
with the real `kubectl` against the emulated cluster where the real gateway, operator and
agents run (`kuberde.testing.cluster`). The tests run in file order on one cluster: first
what only reads, then what the runbook does to the system (TTL, restart, upgrade, restore).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest

from kuberde.auth.tokens import TokenIssuer
from kuberde.testing.cluster import NAMESPACE, Cluster, CommandResult
from kuberde.testing.kube import RDEAGENTS
from tests.runbook.conftest import WAIT, Runbook, eventually, not_applicable, record
from tests.runbook.tables import column, table

pytestmark = pytest.mark.asyncio(loop_scope="module")

AGENTS = ("code-server", "jupyter-notebook", "ssh-server")
OPERATOR_POD = re.compile(r"^kuberde-operator-[a-z0-9]{10}-[a-z0-9]{5}$")
RUNNING = {"Running"}


def ok(result: CommandResult) -> None:
    assert result.returncode == 0, result.stderr


def header(*names: str) -> Callable[[CommandResult], None]:
    def check(result: CommandResult) -> None:
        ok(result)
        assert result.lines, "no output"
        assert result.lines[0].split() == " ".join(names).split(), result.lines[0]

    return check


def recovers(result: CommandResult) -> None:
    """A followed operator log: its loops running, nothing failing."""
    assert "Server monitor checked in" in result.stdout, result.stdout
    assert "Traceback" not in result.stdout and " ERROR " not in result.stdout


def operator_pod_healthy(result: CommandResult) -> None:
    header("NAME", "READY", "STATUS", "RESTARTS", "AGE")(result)
    [row] = table(result.stdout)
    assert OPERATOR_POD.match(row["NAME"]), row
    assert (row["READY"], row["STATUS"], row["RESTARTS"]) == ("1/1", "Running", "0"), row


def all_agents_online(result: CommandResult) -> None:
    ok(result)
    rows = table(result.stdout)
    assert sorted(row["NAME"] for row in rows) == sorted(AGENTS)
    for row in rows:
        assert (row["STATUS"], row["ONLINE"]) == ("Running", "true"), row
        assert re.fullmatch(rf"user-testuser-{row['NAME']}-[a-z0-9]+-[a-z0-9]{{5}}", row["POD"])


async def operator_log(cluster: Cluster) -> str:
    return (await cluster.sh("kubectl logs -n kuberde -l app=kuberde-operator")).stdout


# ---- install ---------------------------------------------------------------------------------


async def test_installed_as_the_readme_says(cluster: Cluster, runbook: Runbook) -> None:
    await runbook.until(
        "1.2", "kubectl get rdeagent -n kuberde -o wide", all_agents_online, note="within 60 s"
    )


# ---- Quick reference and §1: daily health checks -----------------------------------------------


async def test_operator_pod_health(runbook: Runbook) -> None:
    for section in ("Quick ref", "1.1"):
        await runbook.run(
            section, "kubectl get pods -n kuberde -l app=kuberde-operator", operator_pod_healthy
        )


async def test_operator_logs(runbook: Runbook) -> None:
    def streams_operator_lines(result: CommandResult) -> None:
        assert "Server monitor checked in" in result.stdout, result.stdout[-2000:]

    await runbook.run(
        "Quick ref",
        "kubectl logs -n kuberde -l app=kuberde-operator -f",
        streams_operator_lines,
        stop_after=3.0,
        note="followed for 3 s, then stopped",
    )

    def at_most_100(result: CommandResult) -> None:
        ok(result)
        assert 0 < len(result.lines) <= 100

    await runbook.run(
        "1.1", "kubectl logs -n kuberde -l app=kuberde-operator --tail=100", at_most_100
    )

    def no_errors(result: CommandResult) -> None:
        assert result.stdout == "", result.stdout

    await runbook.run_history(
        "1.1", "kubectl logs -n kuberde -l app=kuberde-operator | grep -i error", no_errors
    )


async def test_agents_overview(runbook: Runbook) -> None:
    await runbook.run(
        "Quick ref",
        "kubectl get rdeagent -n kuberde",
        header("NAME", "STATUS", "ONLINE", "POD", "AGE"),
    )

    def wide(result: CommandResult) -> None:
        header("NAME", "STATUS", "ONLINE", "POD", "AGE", "TTL", "LAST-ACTIVITY", "MESSAGE")(result)
        [row] = table(result.stdout)
        assert (row["NAME"], row["STATUS"], row["ONLINE"], row["TTL"]) == (
            "ssh-server",
            "Running",
            "true",
            "5m",
        )

    await runbook.run("Quick ref", "kubectl get rdeagent -n kuberde ssh-server -o wide", wide)
    await runbook.run("1.2", "kubectl get rdeagent -n kuberde -o wide", all_agents_online)


async def test_agent_deployment(runbook: Runbook) -> None:
    def one_ready(result: CommandResult) -> None:
        header("NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE")(result)
        [row] = table(result.stdout)
        assert (row["NAME"], row["READY"]) == ("user-testuser-ssh-server", "1/1")

    for section in ("Quick ref", "3 not connecting"):
        await runbook.run(
            section, "kubectl get deployment -n kuberde user-testuser-ssh-server", one_ready
        )


async def test_events(runbook: Runbook) -> None:
    def sorted_events(result: CommandResult) -> None:
        header("LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE")(result)
        reasons = set(column(result, "REASON"))
        assert {"Scheduled", "Started", "ScalingReplicaSet"} <= reasons, reasons

    await runbook.run(
        "Quick ref",
        "kubectl get events -n kuberde --sort-by='.lastTimestamp' | tail -20",
        sorted_events,
    )
    await runbook.run(
        "8", "kubectl get events -n kuberde --sort-by='.lastTimestamp'", sorted_events
    )


async def test_deployment_stability(cluster: Cluster, runbook: Runbook) -> None:
    def constant_replicas(result: CommandResult) -> None:
        ok(result)
        counts = re.findall(r"Replicas: (\S*)", result.stdout)
        assert counts == ["1", "1", "1"], result.stdout

    await runbook.run(
        "1.3",
        "kubectl get deployment -n kuberde user-testuser-ssh-server -o wide",
        header(
            "NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"
        ),
    )
    pods_before = await cluster.sh(
        "kubectl get pods -n kuberde -l app=frp-agent -o jsonpath='{.items[*].metadata.name}'"
    )
    replicas = (
        "kubectl get deployment -n kuberde user-testuser-ssh-server -o jsonpath='{.spec.replicas}'"
    )
    loop = (
        "for i in 1 2 3; do\n"
        f"""  echo "[$(date '+%H:%M:%S')] Replicas: $({replicas})"\n"""
        "  sleep 30\n"
        "done"
    )
    await runbook.run(
        "1.3",
        loop.replace("sleep 30", "sleep 2"),
        constant_replicas,
        note="sleep 30 run as sleep 2",
    )
    pods_after = await cluster.sh(
        "kubectl get pods -n kuberde -l app=frp-agent -o jsonpath='{.items[*].metadata.name}'"
    )
    assert pods_before.stdout == pods_after.stdout, "a workspace pod was recreated"

    hashes: list[str] = []

    def template_hash(result: CommandResult) -> None:
        ok(result)
        hashes.append(result.stdout)

    command = (
        "kubectl get deployment -n kuberde user-testuser-ssh-server -o jsonpath="
        "'{.spec.template.metadata.labels.pod-template-hash}'"
    )

    async def spec_checks() -> int:
        """How often the operator has compared this Deployment with its spec so far."""
        log = await cluster.sh("kubectl logs -n kuberde -l app=kuberde-operator --tail=-1")
        return log.stdout.count("Agent ssh-server: deploymentSpecChanged returned")

    for sample in range(3):
        if sample:  # "30 seconds apart": here, apart by one more look of the operator's
            seen = await spec_checks()

            async def looked_again(seen: int = seen) -> bool:
                return await spec_checks() > seen

            await eventually(looked_again, "the operator to reconcile the Deployment again")
        await runbook.run(
            "3 rebuilds",
            command,
            template_hash,
            note="empty, as on Kubernetes: the label is on pods; theirs checked constant",
        )
    assert len(set(hashes)) == 1, hashes
    pod_hash = await cluster.sh(
        "kubectl get pods -n kuberde -l instance=user-testuser-ssh-server -o jsonpath="
        "'{.items[*].metadata.labels.pod-template-hash}'"
    )
    assert pod_hash.stdout and pod_hash.stdout in pods_after.stdout


async def test_ttl_configuration(runbook: Runbook) -> None:
    def five_minutes(result: CommandResult) -> None:
        ok(result)
        listed = dict(line.split("\t") for line in result.lines)
        assert listed == dict.fromkeys(AGENTS, "5m"), listed

    command = (
        "kubectl get rdeagent -n kuberde -o jsonpath="
        '\'{range .items[*]}{.metadata.name}{"\\t"}{.spec.ttl}{"\\n"}{end}\''
    )
    for section in ("2.1", "7 scaling"):
        await runbook.run(section, command, five_minutes)


async def test_agent_diagnosis(cluster: Cluster, runbook: Runbook) -> None:
    def one_agent_pod(result: CommandResult) -> None:
        header("NAME", "READY", "STATUS", "RESTARTS", "AGE")(result)
        [row] = table(result.stdout)
        assert row["NAME"].startswith("user-testuser-ssh-server-"), row
        assert (row["READY"], row["STATUS"]) == ("2/2", "Running")

    await runbook.run(
        "3 not connecting",
        "kubectl get pods -n kuberde -l app=frp-agent,instance=user-testuser-ssh-server",
        one_agent_pod,
    )

    def agent_log(result: CommandResult) -> None:
        ok(result)
        assert "kuberde.agent" in result.stdout, result.stdout

    await runbook.run(
        "3 not connecting",
        "kubectl logs -n kuberde -l app=frp-agent,instance=user-testuser-ssh-server",
        agent_log,
    )

    def agent_env(result: CommandResult) -> None:
        ok(result)
        assert '"name":"SERVER_URL","value":"ws://frp-server.kuberde.svc:8080/ws"' in result.stdout

    await runbook.run(
        "3 not connecting",
        "kubectl get deployment -n kuberde user-testuser-ssh-server -o jsonpath="
        "'{.spec.template.spec.containers[0].env[*]}'",
        agent_env,
    )
    agent_pod = (await cluster.sh("kubectl get pods -n kuberde -l app=frp-agent -o name")).lines[0]
    agent_pod = agent_pod.removeprefix("pod/")

    def a_shell_in_the_pod(result: CommandResult) -> None:
        ok(result)
        assert result.stdout == f"inside {agent_pod}\n", result.stdout

    for section in ("3 not connecting", "8"):
        await runbook.run(
            section,
            f"kubectl exec -it -n kuberde {agent_pod} -- /bin/sh",
            a_shell_in_the_pod,
            typed=b"echo inside $POD_NAME\nexit\n",
            note="typed: echo inside $POD_NAME; exit (stdin is no TTY here)",
        )

    def gateway_answers(result: CommandResult) -> None:
        ok(result)
        assert result.lines and result.lines[0].startswith("HTTP/1.1 "), result.stdout

    gateway = cluster.gateway_url().removeprefix("http://")
    await runbook.run(
        "3 not connecting",
        f"curl -I http://{gateway}/ws",
        gateway_answers,
        note="frp-server.kuberde.svc:8080 has no cluster DNS here: its loopback address",
    )

    def describe_pod(result: CommandResult) -> None:
        ok(result)
        assert re.search(r"^Status:\s+Running$", result.stdout, re.M), result.stdout
        assert "Events:" in result.stdout

    pod = (await cluster.sh("kubectl get pods -n kuberde -l app=frp-agent -o name")).lines[0]
    name = pod.removeprefix("pod/")
    for section in ("3 not connecting", "8"):
        await runbook.run(section, f"kubectl describe pod -n kuberde {name}", describe_pod)
    await runbook.run("3 not connecting", f"kubectl describe pod {name}", describe_pod)

    def one_gateway(result: CommandResult) -> None:
        header("NAME", "READY", "STATUS", "RESTARTS", "AGE")(result)
        [row] = table(result.stdout)
        assert row["NAME"].startswith("frp-server-") and row["STATUS"] == "Running"

    for section in ("3 not connecting", "7 incident"):
        await runbook.run(section, "kubectl get pods -n kuberde -l app=frp-server", one_gateway)
    not_applicable(
        "7 incident",
        "kubectl exec <agent-pod> -- ping frp-server.kuberde.svc",
        "exec works, but pods run on loopback without cluster DNS: the name does not resolve",
    )


async def test_ttl_diagnosis(runbook: Runbook) -> None:
    def timestamp(result: CommandResult) -> None:
        ok(result)
        datetime.fromisoformat(result.stdout.replace("Z", "+00:00"))

    for section in ("3 TTL", "7 scaling"):
        await runbook.run(
            section,
            "kubectl get rdeagent -n kuberde ssh-server -o jsonpath='{.status.lastActivity}'",
            timestamp,
        )

    def five_minutes(result: CommandResult) -> None:
        ok(result)
        assert result.stdout == "5m"

    await runbook.run(
        "3 TTL",
        "kubectl get rdeagent -n kuberde ssh-server -o jsonpath='{.spec.ttl}'",
        five_minutes,
    )
    await runbook.run(
        "3 TTL",
        "kubectl get rdeagent ssh-server -o jsonpath='{.spec.ttl}'",
        five_minutes,
        note="namespace from the kubeconfig context",
    )

    def one(result: CommandResult) -> None:
        ok(result)
        assert result.stdout == "1"

    await runbook.run(
        "3 TTL",
        "kubectl get deployment -n kuberde user-testuser-ssh-server -o jsonpath='{.spec.replicas}'",
        one,
    )

    def ttl_context(result: CommandResult) -> None:
        ok(result)
        assert "TTL enforcer: checking 3 agents" in result.stdout

    await runbook.run_history(
        "3 TTL", 'kubectl logs -n kuberde -l app=kuberde-operator | grep -A5 -B5 "TTL"', ttl_context
    )
    await runbook.run_history(
        "7 scaling", "kubectl logs -n kuberde -l app=kuberde-operator | grep TTL", ttl_context
    )

    def deployments(result: CommandResult) -> None:
        header("NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE")(result)
        names = set(column(result, "NAME"))
        assert {"kuberde-operator", "frp-server", "user-testuser-ssh-server"} <= names

    await runbook.run("8", "kubectl get deployment -n kuberde", deployments)


async def test_no_false_change_detection(runbook: Runbook) -> None:
    def v21(result: CommandResult) -> None:
        ok(result)
        assert result.stdout == "soloking/kuberde-operator:v2.1"

    command = (
        "kubectl get deployment -n kuberde kuberde-operator -o jsonpath="
        "'{.spec.template.spec.containers[0].image}'"
    )
    await runbook.run("3 rebuilds", command, v21)

    def only_false(result: CommandResult) -> None:
        ok(result)
        assert "deploymentSpecChanged returned: false" in result.stdout
        assert "deploymentSpecChanged returned: true" not in result.stdout

    await runbook.run_history(
        "3 rebuilds",
        'kubectl logs -n kuberde -l app=kuberde-operator | grep "deploymentSpecChanged"',
        only_false,
    )

    def stable_pod(result: CommandResult) -> None:
        assert "error" not in result.stderr.lower(), result.stderr
        [row] = table(result.stdout)
        assert row["RESTARTS"] == "0" and row["STATUS"] == "Running", result.stdout

    await runbook.run(
        "3 rebuilds",
        "kubectl get pods -n kuberde -l app=frp-agent,instance=user-testuser-ssh-server -w",
        stable_pod,
        stop_after=3.0,
        note="watched for 3 s",
    )


async def test_permissions(runbook: Runbook) -> None:
    def both_bindings(result: CommandResult) -> None:
        ok(result)
        bound = [line.split()[0] for line in result.lines]
        assert bound == [
            "rolebinding.rbac.authorization.k8s.io/kuberde-operator",
            "clusterrolebinding.rbac.authorization.k8s.io/kuberde-operator",
        ], bound

    await runbook.run(
        "3 crashloop",
        "kubectl get rolebinding,clusterrolebinding -n kuberde | grep kuberde-operator",
        both_bindings,
    )

    def yes(result: CommandResult) -> None:
        ok(result)
        assert result.stdout == "yes\n", result.stdout

    await runbook.run(
        "3 crashloop",
        "kubectl auth can-i get rdeagents --as=system:serviceaccount:kuberde:kuberde-operator",
        yes,
        note="RBAC evaluated over deploy/rbac.yaml",
    )
    denied = await runbook.cluster.sh(
        "kubectl auth can-i delete rdeagents --as=system:serviceaccount:kuberde:kuberde-operator"
    )
    assert (denied.returncode, denied.stdout) == (1, "no\n"), "least privilege: no delete"

    def mebibytes(cell: str) -> int:
        assert cell.endswith("Mi"), cell
        return int(cell.removesuffix("Mi"))

    def millicores(cell: str) -> int:
        assert cell.endswith("m"), cell
        return int(cell.removesuffix("m"))

    def within_limits(result: CommandResult) -> None:
        header("NAME", "CPU(cores)", "MEMORY(bytes)")(result)
        [row] = table(result.stdout)
        assert OPERATOR_POD.match(row["NAME"]), row
        # deploy/operator.yaml: limits 500m and 512Mi; the runbook expects about 15m, 180Mi.
        assert millicores(row["CPU(cores)"]) <= 500, row
        assert 0 < mebibytes(row["MEMORY(bytes)"]) <= 512, row

    for section in ("3 crashloop", "4.1"):
        await runbook.run(
            section,
            "kubectl top pod -n kuberde -l app=kuberde-operator",
            within_limits,
            note="the operator process's real /proc CPU and RSS",
        )
    pods = column(await runbook.cluster.sh("kubectl get pods -n kuberde"), "NAME")

    def every_pod(result: CommandResult) -> None:
        header("NAME", "CPU(cores)", "MEMORY(bytes)")(result)
        rows = table(result.stdout)
        assert sorted(row["NAME"] for row in rows) == sorted(pods), result.stdout
        assert all(mebibytes(row["MEMORY(bytes)"]) > 0 for row in rows), "each runs a process"

    await runbook.run("8", "kubectl top pod -n kuberde", every_pod)
    not_applicable(
        "8",
        "kubectl port-forward -n kuberde <pod-name> 8080:8080",
        "kubectl tunnels SPDY/3.1 for it, which the emulated kubelet does not speak "
        "(its pods' ports are loopback ports already)",
    )


async def test_agent_count(runbook: Runbook) -> None:
    def four_lines(result: CommandResult) -> None:
        ok(result)
        assert result.stdout.strip() == "4", "a header and three agents"

    await runbook.run("4.1", "kubectl get rdeagent -n kuberde | wc -l", four_lines)


async def test_loop_timings(runbook: Runbook) -> None:
    def timings(result: CommandResult) -> None:
        ok(result)
        for pattern in (
            r"TTL enforcer completed \d+ agents in \d+ms",
            r"Server monitor checked in \d+ms",
            r"Status updater processed in \d+ms",
        ):
            assert re.search(pattern, result.stdout), pattern

    await runbook.run_history(
        "4.2",
        'kubectl logs -n kuberde -l app=kuberde-operator --since=1h | grep -E "TTL|monitor|status"',
        timings,
    )


async def test_agent_details(runbook: Runbook) -> None:
    def yaml_document(result: CommandResult) -> None:
        ok(result)
        assert "kind: RDEAgent" in result.stdout and "phase: Running" in result.stdout

    await runbook.run("8", "kubectl get rdeagent -n kuberde ssh-server -o yaml", yaml_document)

    def described(result: CommandResult) -> None:
        ok(result)
        assert re.search(r"^Kind:\s+RDEAgent$", result.stdout, re.M)
        assert re.search(r"Phase:\s+Running", result.stdout)

    await runbook.run("8", "kubectl describe rdeagent -n kuberde ssh-server", described)

    def header_only(result: CommandResult) -> None:
        header("NAME", "STATUS", "ONLINE", "POD", "AGE")(result)

    await runbook.run("8", "kubectl get rdeagent -n kuberde", header_only)

    def agent_logs(result: CommandResult) -> None:
        assert "kuberde.agent" in result.stdout

    await runbook.run(
        "8",
        "kubectl logs -n kuberde -l app=frp-agent -f",
        agent_logs,
        stop_after=3.0,
        note="followed for 3 s, then stopped",
    )


# ---- §2.2 and §2.3: TTL enforcement and auto-recovery ------------------------------------------


async def _open_session(cluster: Cluster, agent_id: str, port: int) -> bytes:
    """A user connection through the gateway (what `ssh` through the CLI opens)."""
    token = TokenIssuer(cluster.signing_key).mint_user("testuser")
    url = f"{cluster.gateway_url()}/connect/{agent_id}?port={port}"
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, headers={"Authorization": f"Bearer {token}"}) as ws,
    ):
        async with asyncio.timeout(WAIT):
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    return bytes(message.data)
    raise AssertionError("the session closed before the workspace answered")


async def test_ttl_scale_down_and_auto_recovery(cluster: Cluster, runbook: Runbook) -> None:
    await cluster.kubectl(
        "patch", "rdeagent", "ssh-server", "-n", NAMESPACE, "--type=merge", "-p",
        '{"spec":{"ttl":"10s"}}',
    )  # fmt: skip

    def scaled_down(result: CommandResult) -> None:
        ok(result)
        [line] = result.lines
        assert line.split()[:3] == ["ssh-server", "ScaledDown", "false"], line

    await runbook.until(
        "2.3",
        "kubectl get rdeagent -n kuberde -o wide | grep ScaledDown",
        scaled_down,
        note="ttl set to 10s for the test",
    )

    def ttl_messages(result: CommandResult) -> None:
        ok(result)
        for expected in (
            "Agent ssh-server is scaled down by TTL, preserving replicas=0",
            "TTL not expired",
            "TTL enforcer: checking 3 agents",
        ):
            assert expected in result.stdout, expected
        assert re.search(r"lastActivity: \S+ \(.+\); TTL not expired", result.stdout)

    await runbook.run_history(
        "2.2",
        'kubectl logs -n kuberde -l app=kuberde-operator --since=1h | grep -i "ttl\\|scale"',
        ttl_messages,
    )
    inner = (
        'kubectl get rdeagent -n kuberde ssh-server -o jsonpath="{.status.phase} - Replicas: '
        '$(kubectl get deployment -n kuberde user-testuser-ssh-server -o jsonpath=\\"{.spec.replicas}\\")"'  # noqa: E501
    )
    before = await cluster.sh(inner)
    # The runbook's \" inside $(…) reaches kubectl as a literal quote: `Replicas: "0"`.
    assert before.stdout == 'ScaledDown - Replicas: "0"', before.stdout + before.stderr
    started = time.monotonic()
    banner = await _open_session(cluster, "user-testuser-ssh-server", 2222)
    woke_in = time.monotonic() - started
    assert banner.startswith(b"SSH-2.0-"), banner
    record(
        "2.3",
        "ssh -p 2022 user@127.0.0.1  # Will trigger scale-up",
        f"holds (a session through the gateway, as ssh does via `kuberde port-forward "
        f"ssh-server 2022:2222`; woke and answered in {woke_in:.1f} s)",
    )

    def running(result: CommandResult) -> None:
        assert result.stdout == 'Running - Replicas: "1"', result.stdout

    await _poll_watch(runbook, inner, running, 60.0 - woke_in)
    await cluster.kubectl(
        "patch", "rdeagent", "ssh-server", "-n", NAMESPACE, "--type=merge", "-p",
        '{"spec":{"ttl":"5m"}}',
    )  # fmt: skip


async def _poll_watch(
    runbook: Runbook, inner: str, check: Callable[[CommandResult], None], within: float
) -> None:
    """`watch CMD` needs a terminal; poll CMD instead and record the row under `watch`."""
    async with asyncio.timeout(within):
        while True:
            result = await runbook.cluster.sh(inner)
            try:
                check(result)
                break
            except AssertionError:
                await asyncio.sleep(0.5)
    record(
        "2.3",
        f"watch '{inner}'",
        'holds (its command polled: watch needs a terminal; ScaledDown - Replicas: "0", then '
        'Running - Replicas: "1" within 60 s: the runbook\'s quoting prints the quotes)',
    )


# ---- §3 operator restart, §3 crash, §6 upgrade -------------------------------------------------


def _deployment_writes(cluster: Cluster, since: int) -> list[str]:
    return [
        call.line
        for call in cluster.server.calls[since:]
        if call.is_write and "/deployments/user-" in call.path
    ]


async def _operator_reconciled(cluster: Cluster, pod: str) -> None:
    async def all_seen() -> bool:
        result = await cluster.sh(f"kubectl logs -n kuberde {pod}")
        return all(
            f"Agent {agent}: deploymentSpecChanged returned: false" in result.stdout
            for agent in AGENTS
        )

    await eventually(all_seen, f"operator pod {pod} to reconcile every agent")


async def _operator_pod(cluster: Cluster, other_than: str = "") -> str:
    async def one_new_ready() -> bool:
        result = await cluster.sh("kubectl get pods -n kuberde -l app=kuberde-operator")
        rows = table(result.stdout)
        return len(rows) == 1 and rows[0]["NAME"] != other_than and rows[0]["READY"] == "1/1"

    await eventually(one_new_ready, "one ready operator pod")
    result = await cluster.sh("kubectl get pods -n kuberde -l app=kuberde-operator -o name")
    return result.stdout.strip().removeprefix("pod/")


async def test_operator_restart(cluster: Cluster, runbook: Runbook) -> None:
    old = await _operator_pod(cluster)
    mark = len(cluster.server.calls)

    def deleted(result: CommandResult) -> None:
        ok(result)
        assert f'pod "{old}" deleted' in result.stdout, result.stdout

    await runbook.run("Quick ref", "kubectl delete pod -n kuberde -l app=kuberde-operator", deleted)
    new = await _operator_pod(cluster, other_than=old)
    await _operator_reconciled(cluster, new)

    await runbook.run(
        "3 crashloop",
        "kubectl logs -n kuberde -l app=kuberde-operator -f",
        recovers,
        stop_after=3.0,
        note="followed for 3 s",
    )
    await runbook.until(
        "3 crashloop", "kubectl get rdeagent -n kuberde", all_agents_online, within=30.0,
        note="ONLINE=true within 30 s",
    )  # fmt: skip
    assert _deployment_writes(cluster, mark) == [], "a restart must not write Deployments"
    record(
        "3 crashloop",
        "(operator restart) agents stay ONLINE, zero Deployment writes",
        "holds",
    )

    def false_after_restart(result: CommandResult) -> None:
        ok(result)
        assert "deploymentSpecChanged returned: false" in result.stdout
        assert "returned: true" not in result.stdout

    await runbook.until(
        "3 rebuilds",
        'kubectl logs -n kuberde -l app=kuberde-operator --tail=50 | grep "deploymentSpecChanged"',
        false_after_restart,
        within=15.0,
        note="within a resync (5 s here): 50 lines are ~12 s of compressed loops",
    )


def _lease_holder(cluster: Cluster) -> str:
    lease = cluster.get("coordination.k8s.io/v1/leases", "kuberde-operator") or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def _scaled_down_by(cluster: Cluster, name: str) -> list[str]:
    """The operator instances that reported scaling `name` to zero (its Events)."""
    return [
        str(event.raw.get("reportingInstance"))
        for event in cluster.server.find_all("v1/events", NAMESPACE)
        if event.raw.get("reason") == "ScaledDown"
        and (event.raw.get("involvedObject") or {}).get("name") == name
    ]


async def _survivor_acts(cluster: Cluster, crashed_holder: str) -> None:
    """The operator that replaced a crashed one (which never handed the Lease over) acts:
    it waits the Lease out, then scales an idle workspace down and wakes it for a user."""
    before = _scaled_down_by(cluster, "ssh-server")
    await cluster.kubectl(
        "patch", "rdeagent", "ssh-server", "-n", NAMESPACE, "--type=merge", "-p",
        '{"spec":{"ttl":"1s"}}',
    )  # fmt: skip

    async def scaled_down() -> bool:
        return cluster.agent_status("ssh-server").get("phase") == "ScaledDown"

    await eventually(scaled_down, "the new operator to scale the idle ssh-server down")
    [by] = _scaled_down_by(cluster, "ssh-server")[len(before) :]
    assert by == _lease_holder(cluster) and by != crashed_holder, (by, crashed_holder)
    await cluster.kubectl(
        "patch", "rdeagent", "ssh-server", "-n", NAMESPACE, "--type=merge", "-p",
        '{"spec":{"ttl":"5m"}}',
    )  # fmt: skip
    banner = await _open_session(cluster, "user-testuser-ssh-server", 2222)
    assert banner.startswith(b"SSH-2.0-"), banner

    async def online() -> bool:
        status = cluster.agent_status("ssh-server")
        return status.get("phase") == "Running" and status.get("online") is True

    await eventually(online, "ssh-server woken by the new operator")
    record(
        "3 crashloop",
        "(operator crash, the Lease not released) the restarted operator acts",
        "holds (it took the Lease over, scaled an idle workspace down and woke it)",
    )


async def test_operator_crash_and_previous_logs(cluster: Cluster, runbook: Runbook) -> None:
    pod = await _operator_pod(cluster)
    [container] = cluster.kubelet.pods[pod].containers
    assert container.process is not None
    container.process.kill()

    async def restarted() -> bool:
        result = await cluster.sh("kubectl get pods -n kuberde -l app=kuberde-operator")
        rows = table(result.stdout)
        return bool(rows) and rows[0]["RESTARTS"] == "1" and rows[0]["READY"] == "1/1"

    crashed_holder = _lease_holder(cluster)
    await eventually(restarted, "the crashed operator to be restarted in its pod")
    await _survivor_acts(cluster, crashed_holder)

    current = await cluster.sh("kubectl logs -n kuberde -l app=kuberde-operator --tail=-1")

    def previous(result: CommandResult) -> None:
        ok(result)
        assert "Server monitor checked in" in result.stdout
        assert result.lines[-1] not in current.stdout, "the crashed container's own log"

    await runbook.run(
        "3 crashloop",
        "kubectl logs -n kuberde -l app=kuberde-operator --previous",
        previous,
        note="after a crash (the process killed)",
    )

    def described(result: CommandResult) -> None:
        ok(result)
        assert re.search(r"Restart Count:\s+1", result.stdout), result.stdout

    await runbook.run(
        "3 crashloop", "kubectl describe pod -n kuberde -l app=kuberde-operator", described
    )
    await runbook.run("3 crashloop", "kubectl logs -n kuberde -l app=kuberde-operator", ok)
    await runbook.run(
        "1.1",
        "kubectl delete pod -n kuberde -l app=kuberde-operator",
        ok,
        note="stuck operator: a fresh pod",
    )
    await _operator_pod(cluster, other_than=pod)


async def test_upgrade_and_rollback(cluster: Cluster, runbook: Runbook) -> None:
    image = (
        "kubectl get deployment kuberde-operator -n kuberde -o jsonpath="
        "'{.spec.template.spec.containers[0].image}'"
    )

    def image_is(expected: str) -> Callable[[CommandResult], None]:
        def check(result: CommandResult) -> None:
            ok(result)
            assert result.stdout == expected, result.stdout

        return check

    await runbook.run("6.1", image, image_is("soloking/kuberde-operator:v2.1"))
    await runbook.run("3 rebuilds", image, image_is("soloking/kuberde-operator:v2.1"))
    not_applicable(
        "6.1", "docker pull soloking/kuberde-operator:v2.2", "no container runtime or registry"
    )
    old = await _operator_pod(cluster)
    mark = len(cluster.server.calls)
    await runbook.run(
        "6.1",
        "kubectl set image deployment/kuberde-operator \\\n  -n kuberde \\\n"
        "  operator=soloking/kuberde-operator:v2.2",
        ok,
    )

    def rolled_out(result: CommandResult) -> None:
        ok(result)
        assert "successfully rolled out" in result.stdout, result.stdout

    await runbook.run(
        "6.1",
        "kubectl rollout status deployment/kuberde-operator -n kuberde --timeout=5m",
        rolled_out,
    )
    new = await _operator_pod(cluster, other_than=old)
    await _operator_reconciled(cluster, new)

    def healthy_log(result: CommandResult) -> None:
        ok(result)
        assert 0 < len(result.lines) <= 30 and "Traceback" not in result.stdout

    await runbook.run(
        "6.1", "kubectl logs -n kuberde -l app=kuberde-operator --tail=30", healthy_log
    )
    await runbook.until(
        "6.1", "kubectl get rdeagent -n kuberde", all_agents_online, within=30.0,
        note="ONLINE=true within 30 s",
    )  # fmt: skip
    assert _deployment_writes(cluster, mark) == [], "an upgrade must not touch any workspace"
    record("6.1", "(upgrade) rolls the operator without touching any workspace", "holds")

    await runbook.run(
        "6.2",
        "kubectl set image deployment/kuberde-operator \\\n  -n kuberde \\\n"
        "  operator=soloking/kuberde-operator:v2.1",
        ok,
    )
    rolled_back = await _operator_pod(cluster, other_than=new)
    await runbook.run(
        "6.2",
        "kubectl delete pod -n kuberde -l app=kuberde-operator",
        ok,
        note="a second fresh pod, as the runbook forces one",
    )
    fresh = await _operator_pod(cluster, other_than=rolled_back)
    await _operator_reconciled(cluster, fresh)

    await runbook.run(
        "6.2",
        "kubectl logs -n kuberde -l app=kuberde-operator -f",
        recovers,
        stop_after=3.0,
        note="followed for 3 s",
    )
    await _poll_rows(runbook, "6.2", "watch 'kubectl get rdeagent -n kuberde -o wide'")
    await runbook.run("3 rebuilds", image, image_is("soloking/kuberde-operator:v2.1"))
    await runbook.run(
        "3 rebuilds",
        "kubectl set image deployment/kuberde-operator -n kuberde \\\n"
        "  operator=soloking/kuberde-operator:v2.1",
        ok,
        note="already v2.1: no change, no new pod",
    )

    def revisions_2_and_3(result: CommandResult) -> None:
        ok(result)
        assert result.lines[1].split() == ["REVISION", "CHANGE-CAUSE"], result.stdout
        assert [line.split()[0] for line in result.lines[2:] if line.strip()] == ["2", "3"]

    # v2.1 was revision 1, v2.2 revision 2, and v2.1 again revision 3 (1 is in its history).
    history = await cluster.sh("kubectl rollout history deployment/kuberde-operator -n kuberde")
    revisions_2_and_3(history)
    before_undo = await _operator_pod(cluster)

    def undone(result: CommandResult) -> None:
        ok(result)
        assert result.stdout.strip() == "deployment.apps/kuberde-operator rolled back"

    await runbook.run("8", "kubectl rollout undo deployment/kuberde-operator -n kuberde", undone)
    await runbook.run(
        "8", image, image_is("soloking/kuberde-operator:v2.2"), note="back to revision 2"
    )
    await runbook.run(
        "8", "kubectl rollout status deployment/kuberde-operator -n kuberde", rolled_out
    )
    await _operator_reconciled(cluster, await _operator_pod(cluster, other_than=before_undo))
    await runbook.run(
        "8",
        "kubectl set image deployment/kuberde-operator -n kuberde operator=soloking/kuberde-operator:v2.1",  # noqa: E501
        ok,
    )
    await runbook.run(
        "8", "kubectl rollout status deployment/kuberde-operator -n kuberde", rolled_out
    )
    assert _deployment_writes(cluster, mark) == [], "no rollout may touch a workspace"


async def _poll_rows(runbook: Runbook, section: str, command: str) -> None:
    inner = command.removeprefix("watch '").removesuffix("'")
    await runbook.until(section, inner, all_agents_online, within=30.0)
    record(section, command, "holds (its command polled: watch needs a terminal)")


async def test_operator_resources(cluster: Cluster, runbook: Runbook) -> None:
    limits = (
        "kubectl get deployment kuberde-operator -n kuberde -o jsonpath="
        "'{.spec.template.spec.containers[0].resources.limits.memory}'"
    )
    old = await _operator_pod(cluster)
    await runbook.run(
        "4.1",
        "kubectl patch deployment kuberde-operator -n kuberde --type='json' \\\n"
        '  -p=\'[{"op": "replace", "path": "/spec/template/spec/containers/0/resources/limits/memory", "value":"1Gi"}]\'',  # noqa: E501
        ok,
    )
    result = await cluster.sh(limits)
    assert result.stdout == "1Gi", result.stdout
    new = await _operator_pod(cluster, other_than=old)
    await runbook.run(
        "3 crashloop",
        "kubectl set resources deployment/kuberde-operator -n kuberde --limits=memory=1Gi",
        ok,
        note="already 1Gi: no new pod",
    )
    assert await _operator_pod(cluster) == new
    command = (
        "kubectl get deployment kuberde-operator -n kuberde -o jsonpath="
        "'{.spec.template.spec.containers[0].command}'"
    )
    assert (await cluster.sh(command)).stdout == '["kuberde","operator"]', "patches merged"
    await _operator_reconciled(cluster, new)


# ---- §5 backup and restore ----------------------------------------------------------------------


async def test_backup_and_restore(cluster: Cluster, runbook: Runbook, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    for setup in (
        "git init -q .",
        "git config user.email runbook@example.com",
        "git config user.name runbook",
    ):
        await cluster.sh(setup, cwd=backups)
    await runbook.run(
        "5.1",
        "kubectl get rdeagent -n kuberde -o yaml > frpagent_backup_$(date +%Y%m%d_%H%M%S).yaml",
        ok,
        cwd=backups,
    )
    [backup] = list(backups.glob("frpagent_backup_*.yaml"))

    def dry_run(result: CommandResult) -> None:
        ok(result)
        assert sorted(result.lines) == [
            f"rdeagent.kuberde.io/{agent} configured (dry run)" for agent in AGENTS
        ], result.stdout

    await runbook.run(
        "5.1", "kubectl apply -f frpagent_backup_*.yaml --dry-run=client", dry_run, cwd=backups
    )
    await runbook.run(
        "5.1",
        'git add frpagent_backup_*.yaml && git commit -m "Backup RDEAgent CRs before upgrade"',
        ok,
        cwd=backups,
        note="in a scratch git repository",
    )
    await runbook.run("5.2", "ls -la frpagent_backup_*.yaml", ok, cwd=backups)

    def names_and_status(result: CommandResult) -> None:
        ok(result)
        for agent in AGENTS:
            assert f"name: {agent}" in result.stdout
        assert "status:" in result.stdout

    await runbook.run(
        "5.2", f'cat {backup.name} | grep -E "name:|status:"', names_and_status, cwd=backups
    )
    uids = {agent: (cluster.get(RDEAGENTS, agent) or {})["metadata"]["uid"] for agent in AGENTS}

    def all_deleted(result: CommandResult) -> None:
        ok(result)
        assert sorted(result.lines) == [
            f'rdeagent.kuberde.io "{agent}" deleted' for agent in AGENTS
        ], result.stdout

    await runbook.run("5.2", "kubectl delete rdeagent -n kuberde --all", all_deleted)

    def created(result: CommandResult) -> None:
        ok(result)
        assert sorted(result.lines) == [
            f"rdeagent.kuberde.io/{agent} created" for agent in AGENTS
        ], result.stdout

    await runbook.run("5.2", f"kubectl apply -f {backup.name}", created, cwd=backups)
    await runbook.until("5.2", "kubectl get rdeagent -n kuberde", all_agents_online)
    for agent in AGENTS:
        restored = cluster.get(RDEAGENTS, agent) or {}
        assert restored["metadata"]["uid"] != uids[agent], "a restored agent is a new object"
        assert restored["spec"]["owner"] == "testuser"


async def test_compressed_clock() -> None:
    """The runbook's waits, as these tests take them."""
    record(
        "all",
        "(clock) Run this 3 times at 30-second intervals / watch for 2 minutes",
        "compressed: sleep 2 between checks; operator loops at 0.5-5 s (kuberde.testing.cluster)",
    )
