"""`kuberde connect` (ssh's ProxyCommand) runs on the standard library alone.

Its start-up is on the critical path of every `ssh NAME.kuberde`; the heavy libraries
(aiohttp, Typer, Rich, PyJWT, pydantic, Kopf) and even asyncio stay unloaded. Checked with
`-X importtime` on the installed console script against a real gateway, agent and sshd.
"""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import AGENT_ID, KUBERDE, AgentFactory, Gateway, run

pytestmark = pytest.mark.timeout(120)

HEAVY = ("aiohttp", "typer", "click", "rich", "jwt", "pydantic", "kopf", "asyncio", "uvloop")


def imported_modules(importtime_log: str) -> set[str]:
    return set(re.findall(r"^import time:\s+\d+\s+\|\s+\d+\s+\|\s+(\S+)", importtime_log, re.M))


def test_connect_reaches_sshd_without_loading_heavy_modules(
    gateway: Gateway, start_agent: AgentFactory
) -> None:
    start_agent(gateway)
    env = {**gateway.client_env(gateway.user_token()), "PYTHONPROFILEIMPORTTIME": "1"}
    result = run([KUBERDE, "connect", AGENT_ID, "--port", "22", "--kind", "ssh"], env, input=b"")
    assert result.returncode == 0, result.explain()
    assert result.stdout.startswith(b"SSH-2.0-"), result.explain()
    modules = imported_modules(result.errors)
    assert "kuberde.cli.connect" in modules, "the importtime log is not what this test reads"
    loaded = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert loaded == [], f"the ProxyCommand path loaded {loaded}"


def test_other_commands_still_go_through_typer(gateway: Gateway) -> None:
    result = run([KUBERDE, "connect", "--help"], gateway.client_env(gateway.user_token()))
    assert result.returncode == 0, result.explain()
    assert "ProxyCommand" in result.text
