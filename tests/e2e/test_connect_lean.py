"""`kuberde connect` (ssh's ProxyCommand) runs on the standard library alone, and no
other command loads what it does not use.

Its start-up is on the critical path of every `ssh NAME.kuberde`; the heavy libraries
(aiohttp, Typer, Rich, PyJWT, pydantic, Kopf) and even asyncio stay unloaded. The other
commands pay for Typer; those that only ask the gateway's API (`ls`, `version`) add h11
and asyncio streams, not aiohttp, whose import alone costs more than the request. None
loads pydantic, PyJWT, `cryptography` (signing is the gateway's job), Kopf or Kubernetes
clients. Checked with
`-X importtime` on the installed console script against a real gateway, agent and sshd.
"""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import AGENT_ID, KUBERDE, AgentFactory, Gateway, run

pytestmark = pytest.mark.timeout(120)

HEAVY = ("aiohttp", "typer", "click", "rich", "jwt", "pydantic", "kopf", "asyncio", "uvloop")
#: What no command of a user's CLI needs (`kuberde server`, `operator`, `token` and `login`
#: aside).
NEVER = ("jwt", "cryptography", "aiohttp.web", "kopf", "kubernetes_asyncio", "prometheus_client")


def imported_modules(importtime_log: str) -> set[str]:
    return set(re.findall(r"^import time:\s+\d+\s+\|\s+\d+\s+\|\s+(\S+)", importtime_log, re.M))


def unwanted(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(f"{n}.") for n in names))


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
    assert unwanted(modules, HEAVY) == [], "the ProxyCommand path loaded these"


#: `ls` asks `/api/workspaces`, which a gateway without a runtime answers 404 (exit 1).
@pytest.mark.parametrize(
    ("argv", "talks_to_gateway"),
    [
        pytest.param(["--help"], False, id="--help"),
        pytest.param(["--version"], False, id="--version"),
        pytest.param(["ls", "--help"], False, id="ls --help"),
        pytest.param(["port-forward", "--help"], False, id="port-forward --help"),
        pytest.param(["ls"], True, id="ls"),
        pytest.param(["version"], True, id="version"),
    ],
)
def test_other_commands_load_only_what_they_use(
    gateway: Gateway, argv: list[str], talks_to_gateway: bool
) -> None:
    env = {**gateway.client_env(gateway.user_token()), "PYTHONPROFILEIMPORTTIME": "1"}
    result = run([KUBERDE, *argv], env, input=b"")
    modules = imported_modules(result.errors)
    assert result.returncode == (1 if argv == ["ls"] else 0), result.explain()
    assert "typer" in modules, "the importtime log is not what this test reads"
    assert unwanted(modules, NEVER) == [], result.explain()
    assert unwanted(modules, ("aiohttp", "pydantic")) == [], result.explain()
    assert ("h11" in modules) == talks_to_gateway, result.explain()


def test_other_commands_still_go_through_typer(gateway: Gateway) -> None:
    result = run([KUBERDE, "connect", "--help"], gateway.client_env(gateway.user_token()))
    assert result.returncode == 0, result.explain()
    assert "ProxyCommand" in result.text
