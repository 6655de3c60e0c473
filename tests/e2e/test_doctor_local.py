"""`kuberde doctor` against a real local `kuberde up`: healthy, then with red flags injected
(an Error workspace, an agent dialling in with a bad credential)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.up_fixtures import (
    KUBERDE,
    WAIT,
    KubeRDE,
    free_port,
    running_demo,
    wait_until,
    workspace,
    write_documents,
)


@pytest.fixture(scope="module")
def rde(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeRDE]:
    with running_demo(tmp_path_factory.mktemp("doctor")) as installation:
        yield installation


def _findings(rde: KubeRDE, *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    result = rde.kuberde("doctor", "-o", "json", *args)
    document = json.loads(result.stdout)
    assert document["ok"] is (result.returncode == 0), result.stderr
    return result.returncode, {item["check"]: item for item in document["findings"]}


def test_a_healthy_kuberde_up_passes_and_says_what_does_not_apply(rde: KubeRDE) -> None:
    # The first sweep may still be ahead of a just-started `kuberde up`.
    wait_until(lambda: rde.kuberde("doctor").returncode == 0, "a healthy doctor run")
    result = rde.kuberde("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "✅ operator pod: n/a locally: `kuberde up` runs the lifecycle itself" in lines
    assert "✅ deployment stability: n/a locally: `kuberde up` runs the lifecycle itself" in lines
    for check in (
        f"gateway reachable: GET {rde.url}/healthz: ok",
        "workspace demo: STATUS=Running ONLINE=true POD=",
        "TTL values: demo=",
        "TTL loop alive: last sweep ",
        "sweep timing: median ",
        "agent authentication: no agent credential refused in 10m",
    ):
        assert any(line.startswith(f"✅ {check}") for line in lines), (check, lines)
    assert "❌" not in result.stdout
    code, findings = _findings(rde, "--local")
    assert code == 0 and findings["workspace demo"]["ok"]


def test_an_error_workspace_fails_its_check_with_the_fix(rde: KubeRDE, tmp_path: Path) -> None:
    failing = ["sh", "-c", "exit 3"]
    file = write_documents(
        tmp_path / "broken.yaml",
        [workspace("broken", failing, ttl="5m", local_port=free_port(), workspace_port=22)],
    )
    rde.ok("apply", "-f", str(file))
    try:
        rde.wait_for("broken", "Error", lambda row: row is not None and row["phase"] == "Error")
        code, findings = _findings(rde)
        assert code == 1
        broken = findings["workspace broken"]
        assert not broken["ok"] and broken["measured"].startswith("STATUS=Error ONLINE=false")
        assert broken["fix"].startswith("kuberde logs broken")
        assert findings["workspace demo"]["ok"]
        text = rde.kuberde("doctor")
        assert text.returncode == 1
        assert "❌ workspace broken: STATUS=Error" in text.stdout
        assert "   fix: kuberde logs broken" in text.stdout
    finally:
        rde.ok("delete", "broken")


def test_an_agent_with_a_bad_credential_fails_authentication(rde: KubeRDE) -> None:
    assert rde.url is not None
    env = rde.env | {
        "SERVER_URL": rde.url.replace("http", "ws", 1) + "/ws",
        "AGENT_TOKEN": "not-a-credential",
        "LOCAL_TARGET": "127.0.0.1:22",
    }
    agent = subprocess.Popen(
        [KUBERDE, "agent"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: rde.kuberde("doctor").returncode == 1, "doctor sees the refusal")
    finally:
        agent.kill()
        agent.wait(timeout=WAIT)
    code, findings = _findings(rde)
    auth = findings["agent authentication"]
    assert code == 1 and not auth["ok"], auth
    assert re.match(r"\d+ agent credentials refused in the last 10m: \w+ \(\d+\)", auth["measured"])
    assert "fresh one at each start" in auth["fix"]
    assert all(item["ok"] for name, item in findings.items() if name != "agent authentication")
