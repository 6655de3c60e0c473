"""After a KubeRDE error that comes once ssh has started, `kuberde ssh` prints that error and
nothing of ssh's (`kex_exchange_identification: ...`, `Connection closed by ...`), and exits
1; plain `ssh NAME.kuberde` prints our message first, on one line. Real OpenSSH against one
real `kuberde up` and its demo workspace."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kuberde.cli.config import resolve
from kuberde.cli.sshconfig import render_block, ssh_argv, ssh_environment
from kuberde.cli.sshrun import run_ssh
from tests.e2e.up_fixtures import KUBERDE, WAIT, KubeRDE, running_demo, wait_until

MISSING = "kuberde: no workspace named 'dmeo'; `kuberde ls` lists yours\n"
SSH_NOISE = ("kex_exchange_identification", "Connection closed", "Broken pipe", "UNKNOWN port")


@pytest.fixture(scope="module")
def rde(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeRDE]:
    with running_demo(tmp_path_factory.mktemp("ssh-errors")) as installation:
        yield installation


def _batch(*remote: str) -> list[str]:
    return ["--", "-o", "BatchMode=yes", *remote]


def test_a_refusal_from_connect_inside_the_proxycommand_is_the_only_message(
    rde: KubeRDE, tmp_path: Path
) -> None:
    # `kuberde ssh`'s own check would answer first, so run its ssh child directly, as it
    # does once the check passed: the gateway's 404 then comes inside the ProxyCommand.
    settings = resolve(None, None, rde.env)
    argv = ssh_argv([KUBERDE], "dmeo", extra=["-o", "BatchMode=yes", "true"])
    captured = tmp_path / "stderr"
    with captured.open("wb") as sink:
        code = run_ssh(argv, ssh_environment(settings, rde.env), sink.fileno())
    assert (code, captured.read_text()) == (1, MISSING)


def test_plain_ssh_prints_our_message_first_on_one_line(rde: KubeRDE, tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(render_block([KUBERDE]))
    result = subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", "dmeo.kuberde", "true"],
        env=rde.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 255
    assert result.stderr.splitlines(keepends=True)[0] == MISSING, result.stderr


def test_on_a_terminal_ssh_keeps_it_and_its_exit_code_passes_through(rde: KubeRDE) -> None:
    """stdin and stdout stay the terminal (only ssh's stderr is relayed)."""
    controller, terminal = os.openpty()
    try:
        ssh = subprocess.Popen(
            [KUBERDE, "ssh", "demo", *_batch("test -t 0 || echo remote-saw-no-tty; exit 7")],
            env=rde.env,
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            start_new_session=True,
        )
        os.close(terminal)
        terminal = -1
        seen = b""
        with contextlib.suppress(OSError):  # EIO once every copy of the terminal is closed
            while chunk := os.read(controller, 4096):
                seen += chunk
        assert ssh.wait(timeout=WAIT) == 7, seen
        # No -t: the remote side has no terminal, as with plain ssh and a command.
        assert b"remote-saw-no-tty" in seen
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)


@contextlib.contextmanager
def _held_ssh(rde: KubeRDE, output: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`kuberde ssh demo` running `cat`, which ends with the connection (a `sleep` would
    outlive it), once its session is up; stdin stays open until the block ends."""
    argv = [KUBERDE, "ssh", "demo", *_batch("echo ready; exec cat")]
    with output.open("wb") as sink:
        ssh = subprocess.Popen(argv, env=rde.env, stdin=subprocess.PIPE, stdout=sink, stderr=sink)
    try:
        wait_until(lambda: "ready" in output.read_text(errors="replace"), "the session is up")
        yield ssh
    finally:
        if ssh.poll() is None:
            ssh.kill()
        ssh.wait(timeout=WAIT)
        assert ssh.stdin is not None
        ssh.stdin.close()


def _only_our_message(ssh: subprocess.Popen[bytes], output: Path) -> str:
    assert ssh.wait(timeout=WAIT) == 1
    # (As root, sshd may first say it cannot chdir to the account's home: sshd's own line.)
    lines = output.read_text(errors="replace").splitlines()
    said = [line for line in lines if line != "ready" and "Could not chdir" not in line]
    assert all(noise not in line for line in said for noise in SSH_NOISE), lines
    [message] = said
    assert message.startswith("kuberde: "), lines
    return message


def test_the_gateway_going_away_mid_session_is_the_only_message(
    rde: KubeRDE, tmp_path: Path
) -> None:
    output = tmp_path / "ssh.log"
    with _held_ssh(rde, output) as ssh:
        rde.stop_up()
        message = _only_our_message(ssh, output)
    # `kuberde up` stops the workspace's agent before its gateway: the stream is reset first.
    assert message in (
        "kuberde: connection reset: the workspace is stopping",
        "kuberde: the gateway is shutting down",
    ), message
    rde.start_up()
    rde.wait_phase("demo", "Running")


# Last: it deletes the demo.
def test_a_workspace_deleted_mid_session_is_the_only_message(rde: KubeRDE, tmp_path: Path) -> None:
    output = tmp_path / "ssh.log"
    with _held_ssh(rde, output) as ssh:
        rde.ok("delete", "demo")
        message = _only_our_message(ssh, output)
    # Locally the workspace's agent is stopped first and resets its stream, saying why.
    assert message in (
        "kuberde: connection reset: the workspace is stopping",
        "kuberde: workspace demo went away",
    ), message
