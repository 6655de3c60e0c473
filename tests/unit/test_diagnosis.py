"""`kuberde doctor`'s verdicts: a healthy observation passes, each runbook red flag fails."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kuberde.diagnosis import (
    Finding,
    LocalObservation,
    Observation,
    diagnose,
    diagnose_local,
    log_lines,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def stamp(ago: timedelta) -> str:
    return (NOW - ago).strftime("%Y-%m-%dT%H:%M:%SZ")


def log_at(ago: float, message: str) -> str:
    at = NOW - timedelta(seconds=ago)
    return f"{at:%Y-%m-%d %H:%M:%S},{at.microsecond // 1000:03d} INFO kuberde.operator: {message}"


def agent(name: str, phase: str, online: bool, pod: str | None, ttl: str | None = "5m") -> Any:
    spec: dict[str, Any] = {"owner": "testuser"}
    if ttl is not None:
        spec["ttl"] = ttl
    status: dict[str, Any] = {"phase": phase, "online": online}
    if pod:
        status["pod"] = pod
    return {
        "metadata": {"name": name, "creationTimestamp": stamp(timedelta(hours=1))},
        "spec": spec,
        "status": status,
    }


def deployment(name: str, replicas: int, image: str = "x") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{"name": "agent", "image": image}]}},
        },
    }


SSH_POD = "user-testuser-ssh-server-7c445d9b55-dn7ff"
GONE = "user-testuser-a-1234567890-gone0"
MONITOR_FAILED = "Server monitor: GET http://frp-server.kuberde.svc:8080/mgmt/agents failed"
HEALTHY = Observation(
    now=NOW,
    operator_pods=[
        {
            "metadata": {
                "name": "kuberde-operator-5d76c7f8fc-l9njm",
                "creationTimestamp": stamp(timedelta(hours=23)),
            },
            "status": {
                "phase": "Running",
                "containerStatuses": [{"ready": True, "restartCount": 0, "state": {"running": {}}}],
            },
        }
    ],
    agents=[
        agent("ssh-server", "Running", True, SSH_POD),
        agent("jupyter-notebook", "ScaledDown", False, None),
    ],
    agent_pods=[{"metadata": {"name": SSH_POD}}],
    deployments=[
        [deployment("user-testuser-ssh-server", 1), deployment("user-testuser-jupyter-notebook", 0)]
    ]
    * 3,
    operator_log="\n".join(
        [
            log_at(50, "TTL enforcer: checking 2 agents"),
            log_at(50, "TTL enforcer completed 2 agents in 250ms"),
            log_at(10, "Server monitor checked in 120ms (2 agents)"),
            log_at(5, "Status updater processed in 90ms (2 agents)"),
        ]
    ),
    agent_logs={SSH_POD: "INFO kuberde.agent.client: connected"},
)


def failed(observation: Observation) -> list[Finding]:
    return [finding for finding in diagnose(observation) if not finding.ok]


def test_a_healthy_cluster_passes_every_check() -> None:
    findings = diagnose(HEALTHY)
    assert [finding for finding in findings if not finding.ok] == []
    checks = [finding.check for finding in findings]
    assert checks == [
        "operator pod",
        "gateway reachable",
        "agent jupyter-notebook",
        "agent ssh-server",
        "deployment stability",
        "TTL values",
        "TTL loop alive",
        "TTL enforcer timing",
        "Server monitor timing",
        "Status updater timing",
        "agent authentication",
    ]
    operator = findings[0]
    assert "Ready, Running, 0 restarts, age 23h" in operator.measured


def _operator(change: Callable[[dict[str, Any]], None]) -> Observation:
    pods: list[dict[str, Any]] = copy.deepcopy([dict(pod) for pod in HEALTHY.operator_pods])
    change(pods[0])
    return replace(HEALTHY, operator_pods=pods)


def _crashloop(pod: dict[str, Any]) -> None:
    pod["status"]["containerStatuses"][0].update(
        ready=False, restartCount=7, state={"waiting": {"reason": "CrashLoopBackOff"}}
    )


@pytest.mark.parametrize(
    ("observation", "check", "words"),
    [
        (replace(HEALTHY, operator_pods=[]), "operator pod", "no pod"),
        (_operator(_crashloop), "operator pod", "CrashLoopBackOff, 7 restarts"),
        (
            _operator(lambda pod: pod["status"]["containerStatuses"][0].update(restartCount=4)),
            "operator pod",
            "4 restarts",
        ),
        (
            replace(HEALTHY, gateway=(False, "GET /healthz: refused")),
            "gateway reachable",
            "refused",
        ),
        (
            replace(HEALTHY, agents=[agent("a", "Error", False, None)]),
            "agent a",
            "STATUS=Error",
        ),
        (
            replace(
                HEALTHY,
                agents=[
                    {**agent("a", "Pending", False, None),
                     "metadata": {"name": "a", "creationTimestamp": stamp(timedelta(minutes=6))}}
                ],
            ),
            "agent a",
            "Pending for 6m",
        ),
        (
            replace(HEALTHY, agents=[agent("a", "Running", True, None)]),
            "agent a",
            "online but no pod",
        ),
        (
            replace(HEALTHY, agents=[agent("a", "Running", True, GONE)]),
            "agent a",
            "does not exist",
        ),
        (
            replace(HEALTHY, agents=[agent("a", "Running", False, SSH_POD)]),
            "agent a",
            "running expects online=true",
        ),
        (
            replace(
                HEALTHY,
                deployments=[[deployment("d", 1)], [deployment("d", 0)], [deployment("d", 1)]],
            ),
            "deployment stability",
            "d replicas 1→0→1",
        ),
        (
            replace(HEALTHY, deployments=[[deployment("d", 1)], [deployment("d", 1, image="y")]]),
            "deployment stability",
            "pod template changed",
        ),
        (
            replace(HEALTHY, agents=[agent("a", "ScaledDown", False, None, ttl=None)]),
            "TTL values",
            "a: no TTL",
        ),
        (
            replace(HEALTHY, agents=[agent("a", "ScaledDown", False, None, ttl="1s")]),
            "TTL values",
            "not between 1m and 24h",
        ),
        (
            replace(HEALTHY, agents=[agent("a", "ScaledDown", False, None, ttl="24h")]),
            "TTL values",
            "not between 1m and 24h",
        ),
        (
            replace(HEALTHY, agents=[agent("a", "ScaledDown", False, None, ttl="five")]),
            "TTL values",
            "a: ",
        ),
        (
            replace(
                HEALTHY,
                operator_log=HEALTHY.operator_log.replace(
                    log_at(50, "TTL enforcer: checking 2 agents"),
                    log_at(400, "TTL enforcer: checking 2 agents"),
                ),
            ),
            "TTL loop alive",
            "last sweep 6m40s ago",
        ),
        (
            replace(HEALTHY, operator_log=HEALTHY.operator_log.replace("250ms", "900ms")),
            "TTL enforcer timing",
            "median 900ms",
        ),
        (
            replace(HEALTHY, operator_log=HEALTHY.operator_log.replace("in 120ms", "in 301ms")),
            "Server monitor timing",
            "median 301ms",
        ),
        (
            replace(HEALTHY, operator_log=HEALTHY.operator_log.replace("in 90ms", "in 200ms")),
            "Status updater timing",
            "median 200ms",
        ),
        (
            replace(HEALTHY, agent_logs={SSH_POD: "WARNING credential rejected (401): expired"}),
            "agent authentication",
            SSH_POD,
        ),
    ],
)  # fmt: skip
def test_each_red_flag_fails_its_check_with_the_runbook_fix(
    observation: Observation, check: str, words: str
) -> None:
    findings = failed(observation)
    assert [finding.check for finding in findings] == [check], findings
    [finding] = findings
    assert words in finding.measured
    assert "runbook §" in finding.fix


def test_the_gateway_is_judged_from_the_operator_log_without_a_probe() -> None:
    unreachable = (
        HEALTHY.operator_log
        + "\n"
        + log_at(
            1,
            f"{MONITOR_FAILED} after 5000ms",
        )
    )
    [finding] = failed(replace(HEALTHY, operator_log=unreachable))
    assert finding.check == "gateway reachable" and "failed" in finding.measured


def test_log_lines_carry_their_time() -> None:
    [line] = log_lines(log_at(1.5, "Server monitor checked in 3ms (1 agents)") + "\nnoise")
    assert line.at == NOW - timedelta(seconds=1.5)
    assert line.message.startswith("Server monitor")


# ---- a local `kuberde up` ----------------------------------------------------------------


def local_workspace(
    name: str, phase: str, online: bool, pod: str | None, since: timedelta = timedelta(0)
) -> dict[str, Any]:
    return {
        "name": name,
        "phase": phase,
        "online": online,
        "pod": pod,
        "since": stamp(since),
        "ttl": "5m",
        "message": "",
    }


LOCAL_RUNTIME: dict[str, Any] = {
    "runtime": "local",
    "sweep_interval_s": 1.0,
    "sweeps": 40,
    "last_sweep_age_s": 0.4,
    "reconcile_ms": [2.0, 3.5, 1.0],
    "agent_refusals": {"window_s": 600.0, "reasons": []},
    "workspaces": [
        local_workspace("demo", "Running", True, "4242", timedelta(hours=1)),
        local_workspace("idle", "ScaledDown", False, None),
    ],
}
LOCAL_HEALTHY = LocalObservation(now=NOW, gateway=(True, "GET /healthz: ok"), runtime=LOCAL_RUNTIME)


def with_runtime(**changes: Any) -> LocalObservation:
    return replace(LOCAL_HEALTHY, runtime={**LOCAL_RUNTIME, **changes})


def with_workspace(item: dict[str, Any]) -> LocalObservation:
    return with_runtime(workspaces=[*LOCAL_RUNTIME["workspaces"], item])


def test_a_healthy_local_up_passes_and_the_cluster_only_checks_do_not_apply() -> None:
    findings = diagnose_local(LOCAL_HEALTHY)
    assert all(finding.ok for finding in findings), findings
    checks = [finding.check for finding in findings]
    assert checks == [
        "operator pod", "gateway reachable", "workspace demo", "workspace idle",
        "deployment stability", "TTL values", "TTL loop alive", "sweep timing",
        "agent authentication",
    ]  # fmt: skip
    by_check = {finding.check: finding for finding in findings}
    for check in ("operator pod", "deployment stability"):
        assert by_check[check].measured.startswith("n/a locally")


@pytest.mark.parametrize(
    ("observation", "check", "words"),
    [
        (with_workspace(local_workspace("bad", "Error", False, None)), "workspace bad",
         "STATUS=Error"),
        (with_workspace(local_workspace("slow", "Starting", False, "7", timedelta(minutes=6))),
         "workspace slow", "Starting for 6m"),
        (with_workspace(local_workspace("ghost", "Running", True, None)), "workspace ghost",
         "online without a process"),
        (with_workspace(local_workspace("odd", "Running", False, "9")), "workspace odd",
         "expects online=true"),
        (with_workspace({**local_workspace("off", "Running", True, "5"), "ttl": "0"}),
         "TTL values", "off: TTL disabled"),
        (with_runtime(last_sweep_age_s=30.0), "TTL loop alive", "last sweep 30.0s ago"),
        (with_runtime(last_sweep_age_s=None), "TTL loop alive", "no sweep yet"),
        (with_runtime(reconcile_ms=[900.0, 700.0, 10.0]), "sweep timing", "median 700ms"),
        (with_runtime(agent_refusals={"window_s": 600.0, "reasons": ["invalid", "invalid"]}),
         "agent authentication", "2 agent credentials refused in the last 10m: invalid (2)"),
    ],
)  # fmt: skip
def test_each_local_red_flag_fails_its_check_with_a_fix(
    observation: LocalObservation, check: str, words: str
) -> None:
    findings = [finding for finding in diagnose_local(observation) if not finding.ok]
    assert [finding.check for finding in findings] == [check], findings
    [finding] = findings
    assert words in finding.measured
    assert finding.fix


def test_a_starting_workspace_within_five_minutes_is_fine() -> None:
    young = with_workspace(local_workspace("new", "Starting", False, "8", timedelta(minutes=4)))
    assert all(finding.ok for finding in diagnose_local(young))


def test_an_unreachable_local_gateway_says_how_to_start_it_and_checks_nothing_more() -> None:
    down = LocalObservation(now=NOW, gateway=(False, "connection refused"))
    findings = diagnose_local(down)
    assert [(f.check, f.ok) for f in findings] == [
        ("operator pod", True),
        ("gateway reachable", False),
    ]
    assert "is `kuberde up` running?" in findings[1].fix
