"""What `kuberde up` tells a newcomer to type next must work when pasted into a shell."""

from __future__ import annotations

from pathlib import Path

import pytest

from kuberde.local.demo import DemoWorkspace
from kuberde.local.up import cli_program, next_steps


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
    return DemoWorkspace({}, kind, port, 40000, None, None)


def test_ssh_demo_steps_use_the_program_and_the_runbook_check() -> None:
    text = next_steps("http://127.0.0.1:8080", _demo("ssh"), Path("/c.json"), ".venv/bin/kuberde")
    assert "  .venv/bin/kuberde ssh demo" in text
    forward = ".venv/bin/kuberde port-forward demo 2022:22   # then: ssh -p 2022 $USER@127.0.0.1"
    assert forward in text


def test_http_demo_is_forwarded_to_a_port_the_gateway_does_not_hold() -> None:
    text = next_steps("http://127.0.0.1:8080", _demo("http"), Path("/c.json"), "kuberde")
    assert "kuberde port-forward demo 8888:8080   # then open http://127.0.0.1:8888" in text
    assert "demo 8080:" not in text
