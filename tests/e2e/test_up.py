"""`kuberde up` end to end: the real console script, real workloads, real sshd, real sockets.

Each test runs its own `kuberde up` (sweep every 0.2 s) on a temporary state directory and
talks to it only through the `kuberde` CLI and OpenSSH, as a user would. Teardown stops
`kuberde up` with SIGTERM and checks that no workload or agent process survives it.
"""

from __future__ import annotations

import itertools
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.e2e.up_fixtures import (
    KUBERDE,
    WAIT,
    WORKLOAD_PYTHON,
    KubeRDE,
    ProcessId,
    Row,
    command_line,
    current_owner,
    echo_command,
    free_port,
    wait_for_text,
    wait_until,
    workspace,
    write_documents,
)

TTL = 2
FAILING = ["sh", "-c", "echo boom-marker >&2; exit 3"]


def _run(argv: list[str], rde: KubeRDE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=rde.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


def _is_error_with(marker: str) -> Callable[[Row | None], bool]:
    return lambda row: row is not None and row["phase"] == "Error" and marker in row["message"]


# ---- TTL -----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_idle_workspace_is_scaled_down_and_its_processes_are_gone(
    rde: KubeRDE, tmp_path: Path
) -> None:
    port = free_port()
    file = write_documents(
        tmp_path / "idle.yaml",
        [workspace("idle", echo_command(port, "idle-marker"), ttl="3s", local_port=port)],
    )
    rde.start_up(file)
    workload = rde.wait_workload("idle-marker")
    agent = rde.wait_agent(f"user-{current_owner()}-idle")

    row = rde.wait_phase("idle", "ScaledDown")

    assert row["online"] is False
    assert row["pod"] is None
    assert row["ttl"] == "3s"
    assert not workload.alive
    assert not agent.alive
    assert not rde.agents(row["agent_id"])
    table = rde.ok("ls")
    assert re.search(r"^idle\s+ScaledDown\s+false\s+<none>\s", table, re.MULTILINE), table


@pytest.mark.timeout(60)
def test_ssh_session_held_open_for_three_ttls_keeps_the_workspace_running(
    rde: KubeRDE, tmp_path: Path
) -> None:
    sshd = rde.make_sshd()
    sshd.trust("shell.kuberde")
    file = write_documents(
        tmp_path / "shell.yaml",
        [workspace("shell", sshd.command, ttl=f"{TTL}s", local_port=sshd.port, workspace_port=22)],
    )
    rde.start_up(file)
    # No wait for Running first: with a 2 s TTL a loaded machine's `ls` can miss that window,
    # and the session wakes the workspace if the TTL got there first.
    output = tmp_path / "session.out"
    remote = [f"echo session-open; sleep {3 * TTL + 3}; echo session-done"]

    with rde.client(sshd.via_connect("shell", remote), output) as session:
        wait_for_text(output, "session-open")
        # Three TTLs from the session's start, which ends 3 s later: the last `ls` has 3 s
        # plus a TTL before a scale-down could follow the session's end.
        held_until = time.monotonic() + 3 * TTL
        pod = rde.wait_phase("shell", "Running")["pod"]
        while time.monotonic() < held_until:
            row = rde.ls()["shell"]
            assert row["phase"] == "Running" and row["pod"] == pod, row
        assert session.wait(timeout=WAIT) == 0, output.read_text()

    assert "session-done" in output.read_text()
    row = rde.wait_phase("shell", "ScaledDown")
    assert row["pod"] is None


@pytest.mark.timeout(60)
def test_ttl_zero_never_scales_down(rde: KubeRDE, tmp_path: Path) -> None:
    forever, probe = free_port(), free_port()
    file = write_documents(
        tmp_path / "ttl.yaml",
        [
            workspace("forever", echo_command(forever, "forever"), ttl=0, local_port=forever),
            # Scaled down by the same sweeps, so the TTL loop is seen to be at work meanwhile.
            workspace("probe", echo_command(probe, "probe"), ttl=f"{TTL}s", local_port=probe),
        ],
    )
    rde.start_up(file)
    pod = rde.wait_phase("forever", "Running")["pod"]
    rde.wait_phase("probe", "ScaledDown")

    watch_until = time.monotonic() + 3 * TTL
    while time.monotonic() < watch_until:
        row = rde.ls()["forever"]
        assert row["phase"] == "Running" and row["pod"] == pod, row
        assert row["ttl"] is None and row["idle_deadline"] is None, row
    assert len(rde.starts("forever")) == 1


# ---- wake on connect -----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_ssh_to_a_scaled_down_workspace_wakes_it(rde: KubeRDE, tmp_path: Path) -> None:
    sshd = rde.make_sshd()
    sshd.trust("sleeper.kuberde")
    file = write_documents(
        tmp_path / "sleeper.yaml",
        [
            workspace(
                "sleeper", sshd.command, ttl=f"{TTL}s", local_port=sshd.port, workspace_port=22
            )
        ],
    )
    rde.start_up(file)
    row = rde.wait_phase("sleeper", "ScaledDown")
    assert row["pod"] is None
    assert len(rde.starts("sleeper")) == 1

    result = _run(sshd.via_connect("sleeper", ["echo", "woke-up"]), rde)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "woke-up\n"
    assert "waking sleeper…" in result.stderr
    assert len(rde.starts("sleeper")) == 2


@pytest.mark.timeout(60)
def test_status_follows_the_agent_without_waiting_for_a_sweep(tmp_path: Path) -> None:
    """With sweeps an hour apart, only events move the phase: the agent connecting shows it
    Running, and right after a stream went through a woken workspace `ls` says Running."""
    port = free_port()
    file = write_documents(
        tmp_path / "eager.yaml",
        [workspace("eager", echo_command(port, "eager"), ttl="1h", local_port=port)],
    )
    rde = KubeRDE(tmp_path / "kuberde", sweep_interval=3600)
    try:
        with rde:
            rde.start_up(file)
            rde.wait_phase("eager", "Running")
            rde.ok("stop", "eager")
            assert rde.ls()["eager"]["phase"] == "ScaledDown"

            reply = rde.kuberde("connect", "eager", input="hello again\n")

            assert reply.returncode == 0, reply.stderr
            row = rde.ls()["eager"]
            assert (row["phase"], row["online"]) == ("Running", True), row
    finally:
        print(rde.diagnostics())


@pytest.mark.timeout(60)
def test_ten_connections_during_one_wake_start_it_once_and_all_succeed(
    rde: KubeRDE, tmp_path: Path
) -> None:
    port = free_port()
    file = write_documents(
        tmp_path / "echo.yaml", [workspace("echo", echo_command(port, "echo"), local_port=port)]
    )
    rde.start_up(file)
    rde.wait_phase("echo", "Running")
    assert rde.ok("stop", "echo").strip() == "rdeagent/echo scaled down"
    rde.wait_phase("echo", "ScaledDown")
    workload_starts = len(rde.starts("echo"))
    agent_starts = len(rde.starts("echo", agent=True))
    output = tmp_path / "port-forward.out"
    messages = [f"connection {i} ".encode() * 1000 for i in range(10)]
    together = threading.Barrier(len(messages))

    def exchange(message: bytes) -> bytes:
        together.wait(WAIT)
        with socket.create_connection(("127.0.0.1", local), timeout=WAIT) as conn:
            conn.sendall(message)
            conn.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
        return received

    with rde.client([KUBERDE, "port-forward", "echo", ":7000"], output):
        forwarding = wait_for_text(output, r"Forwarding from 127\.0\.0\.1:(\d+) -> 7000")
        local = int(forwarding.group(1))
        with ThreadPoolExecutor(len(messages)) as pool:
            replies = list(pool.map(exchange, messages))

    assert replies == messages
    assert "waking echo…" in output.read_text()
    assert len(rde.starts("echo")) == workload_starts + 1
    assert len(rde.starts("echo", agent=True)) == agent_starts + 1
    assert rde.ls()["echo"]["phase"] == "Running"


@pytest.mark.timeout(60)
def test_waking_connection_goes_through_to_a_workload_that_listens_late(
    rde: KubeRDE, tmp_path: Path
) -> None:
    """A real workload (Jupyter, code-server) takes a while to open its port after its
    process starts; the connection that woke it must reach it, not a refused port."""
    port = free_port()
    late = ["sh", "-c", f"sleep 3; exec {shlex.join(echo_command(port, 'late'))}"]
    file = write_documents(tmp_path / "late.yaml", [workspace("late", late, local_port=port)])
    rde.start_up(file)
    rde.wait_phase("late", "Running")
    rde.ok("stop", "late")
    rde.wait_phase("late", "ScaledDown")

    result = rde.kuberde("connect", "late", input="worth the wait\n")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "worth the wait\n"
    assert "waking late…" in result.stderr


@pytest.mark.timeout(60)
def test_stop_then_port_forward_and_plain_ssh_wakes_it(rde: KubeRDE, tmp_path: Path) -> None:
    """The runbook's session check, with the local runtime in place of Kubernetes."""
    sshd = rde.make_sshd()
    file = write_documents(
        tmp_path / "dev.yaml",
        [workspace("dev", sshd.command, ttl="5m", local_port=sshd.port, workspace_port=22)],
    )
    rde.start_up(file)
    rde.wait_phase("dev", "Running")
    assert rde.ok("stop", "dev").strip() == "rdeagent/dev scaled down"
    assert rde.wait_phase("dev", "ScaledDown")["pod"] is None
    local = free_port()
    sshd.trust(f"[127.0.0.1]:{local}")
    output = tmp_path / "port-forward.out"

    with rde.client([KUBERDE, "port-forward", "dev", f"{local}:22"], output):
        wait_for_text(output, rf"Forwarding from 127\.0\.0\.1:{local} -> 22")
        result = _run(sshd.direct(local, ["echo", "runbook-ok"]), rde)

    assert result.returncode == 0, f"{result.stderr}\n{output.read_text()}"
    assert result.stdout == "runbook-ok\n"
    assert "waking dev…" in output.read_text()
    assert rde.wait_phase("dev", "Running")["pod"] is not None


def _remote_sleep(rde: KubeRDE, seconds: int) -> ProcessId:
    """The `sleep SECONDS` an ssh session runs: sshd starts it in a session of its own, with
    a fresh environment."""
    return rde.wait_process(
        f"sleep {seconds}", lambda p: command_line(p.pid) == ["sleep", str(seconds)]
    )


@pytest.mark.timeout(90)
def test_stop_and_exit_end_ssh_sessions_promptly_and_leave_no_remote_command(
    rde: KubeRDE, tmp_path: Path
) -> None:
    sshd = rde.make_sshd()
    sshd.trust("shell.kuberde")
    file = write_documents(
        tmp_path / "shell.yaml",
        [workspace("shell", sshd.command, ttl="5m", local_port=sshd.port, workspace_port=22)],
    )
    rde.start_up(file)
    output = tmp_path / "session.out"

    with rde.client(sshd.via_connect("shell", ["echo started; exec sleep 4201"]), output) as ssh:
        wait_for_text(output, "started")
        remote = _remote_sleep(rde, 4201)
        assert rde.ok("stop", "shell").strip() == "rdeagent/shell scaled down"
        rde.wait_phase("shell", "ScaledDown")
        wait_until(lambda: not remote.alive, "the remote sleep gone after kuberde stop")
        assert ssh.wait(timeout=WAIT) != 0
    assert "kuberde: connection reset: the workspace is stopping" in output.read_text()
    for log in (rde.log_path("shell"), rde.log_path("shell", agent=True)):
        assert "ignored SIGTERM" not in log.read_text(), log.read_text()

    output = tmp_path / "again.out"
    with rde.client(sshd.via_connect("shell", ["echo started; exec sleep 4202"]), output) as ssh:
        wait_for_text(output, "started")
        remote = _remote_sleep(rde, 4202)
        rde.stop_up()
        assert not remote.alive
        assert ssh.wait(timeout=WAIT) != 0
    assert "ignored SIGTERM" not in rde.log_path("shell", agent=True).read_text()


_HOLDER = """
import signal, socket, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("holder ready", flush=True)
connection, _ = server.accept()
print("holder accepted", flush=True)
while True:
    signal.pause()
"""


@pytest.mark.timeout(60)
def test_stop_with_an_open_stream_ends_the_agent_at_once(rde: KubeRDE, tmp_path: Path) -> None:
    """A workload that ignores SIGTERM holds a connection open through the whole grace
    period; the agent must not wait for it."""
    port = free_port()
    file = write_documents(
        tmp_path / "holder.yaml",
        [workspace("holder", [WORKLOAD_PYTHON, "-c", _HOLDER, str(port)], ttl=0, local_port=port)],
    )
    rde.start_up(file)
    rde.wait_phase("holder", "Running")
    with subprocess.Popen(
        [KUBERDE, "connect", "holder"],
        env=rde.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as client:
        try:
            wait_for_text(rde.log_path("holder"), "holder accepted")
            assert rde.ok("stop", "holder").strip() == "rdeagent/holder scaled down"
            rde.wait_phase("holder", "ScaledDown")
            _, stderr = client.communicate(timeout=WAIT)
        finally:
            client.kill()
    workload_log = rde.log_path("holder").read_text()
    agent_log = rde.log_path("holder", agent=True).read_text()
    assert "holder/workload ignored SIGTERM" in workload_log, workload_log
    assert "ignored SIGTERM" not in agent_log, agent_log
    assert "going away" in agent_log, agent_log
    assert client.returncode != 0
    assert "connection reset: the workspace is stopping" in stderr.decode(), stderr.decode()


# ---- failing workloads ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_failing_workload_is_an_error_backs_off_and_apply_recovers_it(
    rde: KubeRDE, tmp_path: Path
) -> None:
    port = free_port()
    file = write_documents(
        tmp_path / "flaky.yaml", [workspace("flaky", FAILING, ttl=0, local_port=port)]
    )
    rde.start_up(file)
    row = rde.wait_for("flaky", "Error with its stderr", _is_error_with("boom-marker"))
    assert row is not None and row["online"] is False
    wide = rde.ok("ls", "-o", "wide")
    assert re.search(r"^flaky\s+Error\s+false\s.*boom-marker", wide, re.MULTILINE), wide

    wait_until(lambda: len(rde.starts("flaky")) >= 4, "restarted three times")
    starts = rde.starts("flaky")[:4]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert all(shorter < longer for shorter, longer in itertools.pairwise(gaps)), gaps

    write_documents(file, [workspace("flaky", echo_command(port, "fixed"), ttl=0, local_port=port)])
    applied = rde.kuberde("apply", "-f", str(file))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout == "rdeagent/flaky configured\n"
    row = rde.wait_phase("flaky", "Running")
    assert row["message"] == ""
    reply = rde.kuberde("connect", "flaky", input="after the fix\n")
    assert reply.returncode == 0, reply.stderr
    assert reply.stdout == "after the fix\n"


@pytest.mark.timeout(60)
def test_connecting_to_a_failing_workspace_shows_its_error(rde: KubeRDE, tmp_path: Path) -> None:
    port = free_port()
    file = write_documents(
        tmp_path / "flaky.yaml", [workspace("flaky", FAILING, ttl=0, local_port=port)]
    )
    rde.start_up(file)
    rde.wait_for("flaky", "Error with its stderr", _is_error_with("boom-marker"))
    # The agent itself runs fine and is connected, as it would be in a pod.
    wait_for_text(rde.log_path("flaky", agent=True), "connected to ")

    result = rde.kuberde("connect", "flaky", input="hello\n")

    assert result.returncode == 1
    assert "flaky is unavailable: " in result.stderr, result.stderr
    assert "boom-marker" in result.stderr, result.stderr
    assert result.stdout == ""


@pytest.mark.timeout(60)
def test_a_workspace_whose_workload_fails_on_wake_refuses_connections_with_its_error(
    rde: KubeRDE, tmp_path: Path
) -> None:
    port = free_port()
    broken = rde.account().home / "broken-once"  # where the workload's account can look
    server = shlex.join(echo_command(port, "first-run"))
    once = f"if [ -e {broken} ]; then echo boom-marker >&2; exit 3; fi; exec {server}"
    file = write_documents(
        tmp_path / "once.yaml", [workspace("once", ["sh", "-c", once], ttl="5m", local_port=port)]
    )
    rde.start_up(file)
    rde.wait_phase("once", "Running")
    broken.touch()
    assert rde.ok("stop", "once").strip() == "rdeagent/once scaled down"
    rde.wait_phase("once", "ScaledDown")

    result = rde.kuberde("connect", "once", input="hello\n")

    assert result.returncode == 1, result.stderr
    assert "once is unavailable: " in result.stderr, result.stderr
    assert "boom-marker" in result.stderr, result.stderr
    assert " is up" not in result.stderr, result.stderr
    assert result.stdout == ""


# ---- state across restarts -----------------------------------------------------------------


@pytest.mark.timeout(90)
def test_restarting_up_keeps_every_workspace_state(rde: KubeRDE, tmp_path: Path) -> None:
    sleepy, busy = free_port(), free_port()
    file = write_documents(
        tmp_path / "pair.yaml",
        [
            workspace("busy", echo_command(busy, "busy"), ttl="1h", local_port=busy),
            workspace("sleepy", echo_command(sleepy, "sleepy"), ttl="1h", local_port=sleepy),
        ],
    )
    rde.start_up(file)
    rde.wait_phase("busy", "Running")
    rde.wait_phase("sleepy", "Running")
    rde.ok("stop", "sleepy")
    rde.wait_phase("sleepy", "ScaledDown")
    before = rde.ls()
    sleepy_starts = len(rde.starts("sleepy"))
    busy_starts = len(rde.starts("busy"))

    rde.stop_up()
    rde.start_up(file)

    rde.wait_phase("busy", "Running")
    after = rde.ls()
    assert after["sleepy"]["phase"] == "ScaledDown"
    assert after["sleepy"]["online"] is False and after["sleepy"]["pod"] is None
    assert len(rde.starts("sleepy")) == sleepy_starts
    assert len(rde.starts("busy")) == busy_starts + 1
    assert after["sleepy"]["last_activity"] == before["sleepy"]["last_activity"]
    for name in ("busy", "sleepy"):
        assert after[name]["created_at"] == before[name]["created_at"]
        # Its agent reconnecting to the restarted gateway is not activity: the idle clock
        # (and so the deadline) is the one from before the restart.
        for field in ("last_activity", "last_activity_source"):
            assert after[name][field] == before[name][field], (name, field)
    # Still a normal scaled-down workspace: a connection wakes it.
    reply = rde.kuberde("connect", "sleepy", input="still here\n")
    assert reply.returncode == 0, reply.stderr
    assert reply.stdout == "still here\n"


# ---- documents -----------------------------------------------------------------------------

LONG_NAME = "toolong-" + "x" * 50


def _malformed() -> str:
    """Five bad documents, numbered 2 to 6 after one valid document."""
    owner = current_owner()
    return f"""---
apiVersion: kuberde.io/v1
kind: RDEAgent
metadata: {{name: broken
spec: [
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: wrongkind}}
spec: {{owner: {owner}}}
---
apiVersion: kuberde.io/v1
kind: RDEAgent
metadata: {{name: badttl}}
spec: {{owner: {owner}, ttl: 5x, workload: {{command: [sleep, "60"]}}}}
---
apiVersion: kuberde.io/v1
kind: RDEAgent
metadata: {{name: badowner}}
spec: {{owner: Alice, workload: {{command: [sleep, "60"]}}}}
---
apiVersion: kuberde.io/v1
kind: RDEAgent
metadata: {{name: {LONG_NAME}}}
spec: {{owner: {owner}, workload: {{command: [sleep, "60"]}}}}
"""


#: What each rejected document's message must say, by document number.
REJECTIONS = {
    2: ["invalid YAML at line"],
    3: ["('wrongkind')", "kind 'Deployment'"],
    4: ["('badttl')", "spec.ttl", "'5x'"],
    5: ["('badowner')", "spec.owner", "'Alice'"],
    6: [f"('{LONG_NAME}')", "the limit is 63"],
}


def _assert_rejections(stderr: str, source: Path) -> None:
    for index, fragments in REJECTIONS.items():
        prefix = f"kuberde: {source}, document {index}"
        line = next((line for line in stderr.splitlines() if line.startswith(prefix)), None)
        assert line is not None, f"no {prefix!r} in:\n{stderr}"
        for fragment in fragments:
            assert fragment in line, line


@pytest.mark.timeout(60)
def test_malformed_documents_are_rejected_by_name_and_the_valid_ones_run(
    rde: KubeRDE, tmp_path: Path
) -> None:
    good, other = free_port(), free_port()
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(
        yaml.safe_dump(workspace("good", echo_command(good, "good"), local_port=good))
        + _malformed()
    )
    rde.start_up(mixed)

    _assert_rejections(rde.up_stderr(), mixed)
    rde.wait_phase("good", "Running")
    assert set(rde.ls()) == {"good"}

    again = tmp_path / "apply.yaml"
    again.write_text(
        yaml.safe_dump(workspace("other", echo_command(other, "other"), local_port=other))
        + _malformed()
    )
    result = rde.kuberde("apply", "-f", str(again))
    assert result.returncode == 1
    assert result.stdout == "rdeagent/other created\n"
    _assert_rejections(result.stderr, again)
    rde.wait_phase("other", "Running")
    assert set(rde.ls()) == {"good", "other"}


# ---- logs and delete -----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_logs_show_the_workload_output_and_delete_stops_it(rde: KubeRDE, tmp_path: Path) -> None:
    port = free_port()
    file = write_documents(
        tmp_path / "chatty.yaml",
        [workspace("chatty", echo_command(port, "hello-from-chatty"), local_port=port)],
    )
    rde.start_up(file)
    row = rde.wait_phase("chatty", "Running")
    wait_until(
        lambda: "echo server ready: hello-from-chatty" in rde.ok("logs", "chatty"),
        "showing the workload's output in `kuberde logs`",
    )
    workload = rde.workload(row)
    assert workload == rde.wait_workload("hello-from-chatty"), "POD is not the workload's pid"
    agents = rde.agents(row["agent_id"])

    assert rde.ok("delete", "chatty").strip() == "rdeagent/chatty deleted"

    assert not workload.alive
    assert agents and not any(agent.alive for agent in agents)
    assert "chatty" not in rde.ls()
    listed = rde.kuberde("ls")
    assert listed.returncode == 0 and "No workspaces." in listed.stderr


@pytest.mark.timeout(90)
def test_a_workspace_deleted_during_a_slow_stop_of_another_is_not_started_again(
    rde: KubeRDE, tmp_path: Path
) -> None:
    """The race of issue 9: a sweep busy stopping `slow` (its workload ignores SIGTERM, so
    the stop takes the whole grace period) must not start `trailing`, which a sweep reaches
    after `slow`, again after its delete."""
    slow_port, trailing_port = free_port(), free_port()
    stubborn = ["sh", "-c", f"trap '' TERM; exec {shlex.join(echo_command(slow_port, 'slow'))}"]
    slow = workspace("slow", stubborn, local_port=slow_port)
    trailing = workspace(
        "trailing", echo_command(trailing_port, "trailing-marker"), local_port=trailing_port
    )
    file = write_documents(tmp_path / "both.yaml", [slow, trailing])
    rde.start_up(file)
    rde.wait_phase("slow", "Running")
    trailing_row = rde.wait_phase("trailing", "Running")
    slow["spec"]["workload"]["env"] = [{"name": "CHANGED", "value": "1"}]
    write_documents(file, [slow])
    rde.ok("apply", "-f", str(file))
    wait_until(lambda: "slow: stopping" in rde.up_stderr(), "the slow workspace's stop")

    assert rde.ok("delete", "trailing").strip() == "rdeagent/trailing deleted"

    rde.wait_for(
        "slow",
        "restarted",
        lambda row: row is not None and row["phase"] == "Running" and len(rde.starts("slow")) == 2,
    )
    assert "trailing" not in rde.ls()
    assert not rde.agents(trailing_row["agent_id"])
    assert len(rde.starts("trailing")) == 1
    assert not (rde.state_dir / "credentials" / "trailing.token").exists()


# ---- the demo ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_demo_workspace_answers_kuberde_ssh(rde: KubeRDE) -> None:
    rde.start_up()
    assert "The demo workspace runs OpenSSH" in rde.up_stderr()
    rde.wait_phase("demo", "Running")

    result = rde.kuberde("ssh", "demo", "--", "-o", "BatchMode=yes", "echo", "ok")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
    # Closing the terminal `kuberde up` runs in stops it as cleanly as Ctrl-C does.
    rde.stop_up(signal.SIGHUP)
