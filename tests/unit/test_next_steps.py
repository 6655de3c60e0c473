"""What `kuberde up` tells a newcomer to type next must work when pasted into a shell."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from kuberde.cli.up_cmd import cli_program, next_steps
from kuberde.local.demo import DemoWorkspace


@pytest.mark.parametrize(
    ("argv0", "on_path", "program"),
    [
        # `make run` starts the venv's script, which is not on PATH.
        (".venv/bin/kuberde", None, ".venv/bin/kuberde"),
        (".venv/bin/kuberde", "/usr/local/bin/kuberde", ".venv/bin/kuberde"),
        # The one on PATH is the one running: the short name works.
        ("/usr/local/bin/kuberde", "/usr/local/bin/kuberde", "kuberde"),
        # `python -m kuberde`: there is no script path to offer.
        ("/src/kuberde/__main__.py", None, "kuberde"),
    ],
)
def test_the_program_name_is_one_the_shell_can_run(
    argv0: str, on_path: str | None, program: str
) -> None:
    assert cli_program(argv0, on_path) == program


def _demo(kind: str) -> DemoWorkspace:
    port = 22 if kind == "ssh" else 8080
    ssh = kind == "ssh"
    known_hosts = Path("/h/my keys/known_hosts") if ssh else None
    identity = Path("/h/id_ed25519") if ssh else None
    return DemoWorkspace({}, kind, port, 40000, known_hosts, identity, "al")


def _steps(kind: str, program: str) -> str:
    return next_steps("http://127.0.0.1:8080", _demo(kind), Path("/c.json"), program, user="al")


def test_ssh_demo_steps_use_the_program_and_the_runbook_check() -> None:
    text = _steps("ssh", ".venv/bin/kuberde")
    assert "  .venv/bin/kuberde ssh demo\n" in text
    assert "  .venv/bin/kuberde port-forward demo 2022:22\n" in text
    assert "  .venv/bin/kuberde config-ssh --write " in text
    # As the account the demo's sshd runs as, which need not be the local user.
    assert "plain `ssh al@demo.kuberde` works too" in text


def test_plain_ssh_names_the_identity_and_checks_the_demo_host_key() -> None:
    plain = _steps("ssh", "kuberde").splitlines()[-2].strip()
    assert shlex.split(plain) == [
        "ssh",
        "-p",
        "2022",
        "-i",
        "/h/id_ed25519",
        "-o",
        "UserKnownHostsFile=/h/my keys/known_hosts",
        "-o",
        "HostKeyAlias=demo.kuberde",
        "al@127.0.0.1",
    ]


def test_the_plain_ssh_step_says_the_port_forward_must_be_running() -> None:
    text = _steps("ssh", "kuberde")
    assert "Keep this running:\n  kuberde port-forward demo 2022:22\n" in text
    assert "while it runs:\n  ssh -p 2022 " in text


def test_http_demo_is_forwarded_to_a_port_the_gateway_does_not_hold() -> None:
    text = _steps("http", "kuberde")
    assert "kuberde port-forward demo 8888:8080   # then open http://127.0.0.1:8888" in text
    assert "demo 8080:" not in text
