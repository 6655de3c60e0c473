"""The runbook's daily health checks as pure functions (what `kuberde doctor` decides).

An `Observation` is what an adapter read from a cluster or a local `kuberde up`: pods,
RDEAgents, samples of the workspace Deployments taken over a window, the operator's log, the
agents' logs, whether the gateway answered. `diagnose` turns it into `Finding`s, each saying
what it measured and, when it fails, the runbook's fix. No I/O here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kuberde import policy
from kuberde.clock import parse_timestamp

__all__ = [
    "LOOP_THRESHOLDS_MS",
    "Finding",
    "LocalObservation",
    "Observation",
    "diagnose",
    "diagnose_local",
    "log_lines",
]

#: The runbook's expected loop times (§4.2), for 4-10 agents.
LOOP_THRESHOLDS_MS = {"TTL enforcer": 500.0, "Server monitor": 300.0, "Status updater": 200.0}
_LOOP_LINES = {
    "TTL enforcer": re.compile(r"TTL enforcer completed \d+ agents in (\d+)ms"),
    "Server monitor": re.compile(r"Server monitor checked in (\d+)ms"),
    "Status updater": re.compile(r"Status updater processed in (\d+)ms"),
}
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (\w+) ([\w.]+): (.*)$")
PENDING_LIMIT = timedelta(minutes=5)
TTL_SANE = (timedelta(minutes=1), timedelta(hours=24))
MAX_RESTARTS = 3
FIX = {
    "operator": "kubectl logs -n kuberde -l app=kuberde-operator --tail=100; if stuck: "
    "kubectl delete pod -n kuberde -l app=kuberde-operator (runbook §1.1)",
    "gateway": "verify frp-server is running: kubectl get pods -n kuberde -l app=frp-server "
    "(runbook §3, Agent Not Connecting)",
    "pending": "pod scheduling issue: kubectl describe pod <name>; check node resources and "
    "tolerations (runbook §1.2)",
    "error": "Deployment/PVC issue: kubectl describe rdeagent -n kuberde <name> (runbook §1.2)",
    "online-no-pod": "network connectivity issue: check the gateway and the agent pod's logs "
    "(runbook §1.2)",
    "disagree": "kubectl logs -n kuberde -l app=frp-agent,instance=user-<owner>-<name> "
    "(runbook §3, Agent Not Connecting)",
    "stability": "Phase 4.1 bug: check the operator image is soloking/kuberde-operator:v2.1 or "
    "later, else kubectl set image deployment/kuberde-operator -n kuberde "
    "operator=soloking/kuberde-operator:v2.1 (runbook §3, Constant Pod Rebuilds)",
    "ttl": 'set spec.ttl to a valid, reasonable duration such as "5m", "30m" or "1h" '
    "(runbook §2.1)",
    "ttl-loop": "TTL enforcer loop not running: kubectl delete pod -n kuberde -l "
    "app=kuberde-operator (runbook §3, TTL Not Enforcing)",
    "timings": "check the agents' workloads, network latency to the server API and its response "
    "times (runbook §4.2)",
    "auth": 'pod logs show "401" or "403": token auto-refresh should handle this; check the '
    "identity provider (runbook §3, Auth token expired)",
}


@dataclass(frozen=True)
class Finding:
    """One check: passed or not, what it measured, and the runbook's fix when it failed."""

    check: str
    ok: bool
    measured: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "ok": self.ok, "measured": self.measured, "fix": self.fix}


@dataclass(frozen=True)
class LogLine:
    at: datetime
    level: str
    logger: str
    message: str


def log_lines(text: str) -> list[LogLine]:
    """The operator's log lines (`%(asctime)s %(levelname)s %(name)s: %(message)s`, UTC)."""
    lines = []
    for raw in text.splitlines():
        found = _LOG_LINE.match(raw)
        if found:
            stamp, millis, level, logger, message = found.groups()
            at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
            lines.append(LogLine(at + timedelta(milliseconds=int(millis)), level, logger, message))
    return lines


@dataclass(frozen=True)
class Observation:
    """What an adapter read; `deployments` holds one list per sample, oldest first."""

    now: datetime
    operator_pods: Sequence[Mapping[str, Any]] = ()
    agents: Sequence[Mapping[str, Any]] = ()
    agent_pods: Sequence[Mapping[str, Any]] = ()
    deployments: Sequence[Sequence[Mapping[str, Any]]] = ()
    operator_log: str = ""
    agent_logs: Mapping[str, str] = field(default_factory=dict)
    gateway: tuple[bool, str] | None = None
    ttl_interval: float = 60.0


def _age(value: object, now: datetime) -> str:
    when = parse_timestamp(value)
    return "unknown" if when is None else policy.format_duration(max(now - when, timedelta(0)))


def check_operator_pod(observation: Observation) -> Finding:
    pods = list(observation.operator_pods)
    if not pods:
        return Finding(
            "operator pod", False, "no pod labelled app=kuberde-operator", FIX["operator"]
        )
    problems = []
    parts = []
    for pod in pods:
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        statuses = status.get("containerStatuses") or []
        ready = bool(statuses) and all(item.get("ready") for item in statuses)
        restarts = sum(int(item.get("restartCount") or 0) for item in statuses)
        phase = str(status.get("phase") or "Unknown")
        waiting = [
            str(((item.get("state") or {}).get("waiting") or {}).get("reason") or "")
            for item in statuses
        ]
        shown = next((reason for reason in waiting if reason), phase)
        age = _age(pod["metadata"].get("creationTimestamp"), observation.now)
        parts.append(
            f"{name} {'Ready' if ready else 'not Ready'}, {shown}, {restarts} restarts, age {age}"
        )
        if not ready or shown != "Running" or restarts >= MAX_RESTARTS:
            problems.append(name)
    return Finding(
        "operator pod", not problems, "; ".join(parts), FIX["operator"] if problems else ""
    )


def check_gateway(observation: Observation) -> Finding:
    if observation.gateway is not None:
        reachable, detail = observation.gateway
        return Finding("gateway reachable", reachable, detail, "" if reachable else FIX["gateway"])
    lines = [
        line for line in log_lines(observation.operator_log) if "Server monitor" in line.message
    ]
    if not lines:
        return Finding(
            "gateway reachable", False, "no Server monitor line in the operator log", FIX["gateway"]
        )
    last = lines[-1]
    reachable = "failed" not in last.message
    measured = f"operator's last monitor check {policy.format_duration(observation.now - last.at)}"
    measured += f" ago: {last.message}"
    return Finding("gateway reachable", reachable, measured, "" if reachable else FIX["gateway"])


def _agent_findings(agent: Mapping[str, Any], pods: set[str], now: datetime) -> list[Finding]:
    name = str(agent["metadata"]["name"])
    status = agent.get("status") or {}
    phase = str(status.get("phase") or "")
    online = status.get("online")
    pod = str(status.get("pod") or "")
    shown = f"STATUS={phase or '<none>'} ONLINE={str(online).lower()} POD={pod or '<none>'}"
    check = f"agent {name}"
    if phase == "Error":
        message = status.get("message") or ""
        return [Finding(check, False, f"{shown}: {message}", FIX["error"])]
    if phase == "Pending":
        since = parse_timestamp(agent["metadata"].get("creationTimestamp"))
        for condition in status.get("conditions") or []:
            if condition.get("type") == "Ready":
                since = parse_timestamp(condition.get("lastTransitionTime")) or since
        if since is not None and now - since > PENDING_LIMIT:
            pending_for = policy.format_duration(now - since)
            return [Finding(check, False, f"{shown}, Pending for {pending_for}", FIX["pending"])]
    if online is True and (not pod or pod not in pods):
        where = "no pod" if not pod else f"pod {pod} does not exist"
        return [Finding(check, False, f"{shown}: online but {where}", FIX["online-no-pod"])]
    expected = {"Running": (True, True), "ScaledDown": (False, False)}.get(phase)
    if expected is not None and (online is True, bool(pod)) != expected:
        return [Finding(check, False, f"{shown}: {phase} expects ONLINE={expected[0]}".lower(),
                        FIX["disagree"])]  # fmt: skip
    if pod and not re.fullmatch(r"user-[a-z0-9-]+-[a-z0-9]+-[a-z0-9]{5}", pod):
        return [Finding(check, False, f"{shown}: pod name not user-{{owner}}-{{name}}-{{hash}}",
                        FIX["disagree"])]  # fmt: skip
    return [Finding(check, True, shown)]


def check_agents(observation: Observation) -> list[Finding]:
    pods = {str(pod["metadata"]["name"]) for pod in observation.agent_pods}
    findings: list[Finding] = []
    for agent in sorted(observation.agents, key=lambda item: str(item["metadata"]["name"])):
        findings += _agent_findings(agent, pods, observation.now)
    return findings


def _template_hash(deployment: Mapping[str, Any]) -> str:
    template = (deployment.get("spec") or {}).get("template") or {}
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def check_stability(observation: Observation) -> Finding:
    samples = list(observation.deployments)
    if len(samples) < 2:
        return Finding("deployment stability", True, "not sampled (window 0)")
    history: dict[str, list[tuple[int, str]]] = {}
    for sample in samples:
        for deployment in sample:
            name = str(deployment["metadata"]["name"])
            count = int((deployment.get("spec") or {}).get("replicas", 1))
            history.setdefault(name, []).append((count, _template_hash(deployment)))
    problems = []
    for name, seen in sorted(history.items()):
        counts = [count for count, _ in seen]
        changes = sum(1 for before, after in itertools.pairwise(counts) if before != after)
        if changes > 1:
            problems.append(f"{name} replicas {'→'.join(str(count) for count in counts)}")
        if len({digest for _, digest in seen}) > 1:
            problems.append(f"{name} pod template changed")
    measured = f"{len(history)} Deployments over {len(samples)} samples: " + (
        "; ".join(problems) if problems else "replicas and pod templates constant"
    )
    return Finding(
        "deployment stability", not problems, measured, FIX["stability"] if problems else ""
    )


def check_ttl_values(observation: Observation) -> Finding:
    problems = []
    values = []
    for agent in observation.agents:
        name = str(agent["metadata"]["name"])
        raw = (agent.get("spec") or {}).get("ttl")
        values.append(f"{name}={raw if raw not in (None, '') else '<unset>'}")
        if raw in (None, ""):
            problems.append(f"{name}: no TTL")
            continue
        try:
            ttl = policy.parse_ttl(raw)
        except policy.InvalidTTL as exc:
            problems.append(f"{name}: {exc}")
            continue
        if ttl is None:
            problems.append(f"{name}: TTL disabled ({raw})")
        elif not TTL_SANE[0] <= ttl < TTL_SANE[1]:
            problems.append(f"{name}: {raw} is not between 1m and 24h")
    measured = ", ".join(values) or "no agents"
    if problems:
        measured += "; " + "; ".join(problems)
    return Finding("TTL values", not problems, measured, FIX["ttl"] if problems else "")


def check_ttl_loop(observation: Observation) -> Finding:
    sweeps = [
        line for line in log_lines(observation.operator_log)
        if line.message.startswith("TTL enforcer: checking")
    ]  # fmt: skip
    limit = timedelta(seconds=3 * observation.ttl_interval)
    if not sweeps:
        return Finding("TTL loop alive", False, "no 'TTL enforcer: checking' line", FIX["ttl-loop"])
    age = observation.now - sweeps[-1].at
    measured = (
        f"last sweep {policy.format_duration(max(age, timedelta(0)))} ago ({sweeps[-1].message})"
    )
    return Finding(
        "TTL loop alive", age <= limit, measured, "" if age <= limit else FIX["ttl-loop"]
    )


def check_loop_timings(observation: Observation) -> list[Finding]:
    findings = []
    for loop, pattern in _LOOP_LINES.items():
        times = [float(found) for found in pattern.findall(observation.operator_log)][-20:]
        threshold = LOOP_THRESHOLDS_MS[loop]
        name = f"{loop} timing"
        if not times:
            findings.append(Finding(name, False, f"no '{loop}' timing line", FIX["timings"]))
            continue
        median = statistics.median(times)
        measured = (
            f"median {median:.0f}ms, max {max(times):.0f}ms over {len(times)} cycles "
            f"(runbook: < {threshold:.0f}ms)"
        )
        findings.append(
            Finding(
                name, median < threshold, measured, "" if median < threshold else FIX["timings"]
            )
        )
    return findings


def check_authentication(observation: Observation) -> Finding:
    failing = sorted(
        name for name, text in observation.agent_logs.items()
        if re.search(r"credential rejected|\b40[13]\b", text)
    )  # fmt: skip
    measured = f"{len(observation.agent_logs)} agent logs read; " + (
        f"failing authentication: {', '.join(failing)}" if failing else "no 401/403"
    )
    return Finding("agent authentication", not failing, measured, FIX["auth"] if failing else "")


def diagnose(observation: Observation) -> list[Finding]:
    """Every check of the runbook's daily procedures, in the runbook's order."""
    return [
        check_operator_pod(observation),
        check_gateway(observation),
        *check_agents(observation),
        check_stability(observation),
        check_ttl_values(observation),
        check_ttl_loop(observation),
        *check_loop_timings(observation),
        check_authentication(observation),
    ]


# ---- a local `kuberde up` ----------------------------------------------------------------

LOCAL_FIX = {
    "gateway": "is `kuberde up` running? Start it with `kuberde up` (or `make run` in a clone)",
    "error": "kuberde logs {name} (the workload's log); fix the RDEAgent and "
    "`kuberde apply -f FILE`",
    "starting": "its agent never came online: kuberde logs {name} --agent",
    "online-no-pod": "its processes are gone: kuberde stop {name}, then kuberde wake {name}",
    "disagree": "kuberde logs {name} --agent; `kuberde ls -o wide` says why",
    "ttl-loop": "the lifecycle loop of `kuberde up` is stuck: its stderr says why; restart it",
    "timings": "the machine is overloaded or a workspace's processes are slow to stop",
    "auth": "an agent credential was refused: a workspace's agent gets a fresh one at each "
    "start (kuberde stop NAME, then kuberde wake NAME); anything else dialling /ws is not ours",
}
_NOT_LOCAL = "n/a locally: `kuberde up` runs the lifecycle itself"


@dataclass(frozen=True)
class LocalObservation:
    """What `kuberde doctor` read from a local `kuberde up`: whether the gateway answered,
    and its `/api/runtime` document (loop timings, refused agents, workspaces)."""

    now: datetime
    gateway: tuple[bool, str]
    runtime: Mapping[str, Any] = field(default_factory=dict)


def _local_workspace(item: Mapping[str, Any], now: datetime) -> Finding:
    name = str(item.get("name"))
    phase = str(item.get("phase") or "")
    online = item.get("online") is True
    pod = str(item.get("pod") or "")
    shown = f"STATUS={phase or '<none>'} ONLINE={str(online).lower()} POD={pod or '<none>'}"
    check = f"workspace {name}"

    def failed(measured: str, fix: str) -> Finding:
        return Finding(check, False, measured, LOCAL_FIX[fix].format(name=name))

    if phase == "Error":
        return failed(f"{shown}: {item.get('message') or ''}", "error")
    since = parse_timestamp(item.get("since"))
    if phase in ("Pending", "Starting") and since is not None and now - since > PENDING_LIMIT:
        return failed(f"{shown}, {phase} for {policy.format_duration(now - since)}", "starting")
    if online and not pod:
        return failed(f"{shown}: online without a process", "online-no-pod")
    expected = {"Running": (True, True), "ScaledDown": (False, False)}.get(phase)
    if expected is not None and (online, bool(pod)) != expected:
        return failed(f"{shown}: {phase} expects ONLINE={expected[0]}".lower(), "disagree")
    return Finding(check, True, shown)


def _local_ttl_loop(runtime: Mapping[str, Any]) -> Finding:
    interval = float(runtime.get("sweep_interval_s") or 0)
    age = runtime.get("last_sweep_age_s")
    # Three intervals, as for the operator's loop; at least a few seconds on a busy machine.
    limit = max(3 * interval, 5.0)
    if not isinstance(age, int | float):
        return Finding("TTL loop alive", False, "no sweep yet", LOCAL_FIX["ttl-loop"])
    ok = age <= limit
    measured = f"last sweep {age:.1f}s ago (every {interval:g}s; limit {limit:g}s)"
    return Finding("TTL loop alive", ok, measured, "" if ok else LOCAL_FIX["ttl-loop"])


def _local_timing(runtime: Mapping[str, Any]) -> Finding:
    times = [float(value) for value in runtime.get("reconcile_ms") or []]
    threshold = LOOP_THRESHOLDS_MS["TTL enforcer"]
    if not times:
        return Finding("sweep timing", True, "no workspace reconciled yet")
    median = statistics.median(times)
    ok = median < threshold
    measured = (
        f"median {median:.0f}ms, max {max(times):.0f}ms per workspace over {len(times)} "
        f"reconciles (runbook: < {threshold:.0f}ms)"
    )
    return Finding("sweep timing", ok, measured, "" if ok else LOCAL_FIX["timings"])


def _local_authentication(runtime: Mapping[str, Any]) -> Finding:
    refusals = runtime.get("agent_refusals") or {}
    reasons = [str(reason) for reason in refusals.get("reasons") or []]
    window = policy.format_duration(timedelta(seconds=float(refusals.get("window_s") or 0)))
    if not reasons:
        return Finding("agent authentication", True, f"no agent credential refused in {window}")
    counted = ", ".join(f"{r} ({reasons.count(r)})" for r in sorted(set(reasons)))
    measured = f"{len(reasons)} agent credentials refused in the last {window}: {counted}"
    return Finding("agent authentication", False, measured, LOCAL_FIX["auth"])


def diagnose_local(observation: LocalObservation) -> list[Finding]:
    """The same checks against a local `kuberde up`, in the same order; the cluster-only
    ones (operator pod, Deployment stability) say they do not apply."""
    reachable, detail = observation.gateway
    runtime = observation.runtime
    workspaces = sorted(runtime.get("workspaces") or [], key=lambda item: str(item.get("name")))
    ttls = Observation(
        now=observation.now,
        agents=[{"metadata": {"name": w.get("name")}, "spec": {"ttl": w.get("ttl")}}
                for w in workspaces],
    )  # fmt: skip
    findings = [
        Finding("operator pod", True, _NOT_LOCAL),
        Finding("gateway reachable", reachable, detail, "" if reachable else LOCAL_FIX["gateway"]),
    ]
    if not reachable:
        return findings
    return [
        *findings,
        *(_local_workspace(w, observation.now) for w in workspaces),
        Finding("deployment stability", True, _NOT_LOCAL),
        check_ttl_values(ttls),
        _local_ttl_loop(runtime),
        _local_timing(runtime),
        _local_authentication(runtime),
    ]
