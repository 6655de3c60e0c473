"""What the CLI says, against one real `kuberde up` (its demo workspace, real sshd): one
wording for a missing workspace, errors that name the fix, why a workspace is up in every
output format, `ls -w`, `version` and shell completion of workspace names."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.up_fixtures import (
    KUBERDE,
    WAIT,
    KubeRDE,
    free_port,
    running_demo,
    wait_for_text,
    workspace,
    write_documents,
)

MISSING = "kuberde: no workspace named 'dmeo'; `kuberde ls` lists yours\n"


@pytest.fixture(scope="module")
def rde(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeRDE]:
    with running_demo(tmp_path_factory.mktemp("messages")) as installation:
        yield installation


@pytest.mark.parametrize(
    "args",
    [
        ["stop", "dmeo"],
        ["wake", "dmeo"],
        ["delete", "dmeo"],
        ["logs", "dmeo"],
        ["ssh", "dmeo"],
        ["connect", "dmeo", "--port", "22"],
        ["port-forward", "dmeo", f"{free_port()}:22"],
    ],
)
def test_every_command_says_the_same_about_a_missing_workspace(
    rde: KubeRDE, args: list[str]
) -> None:
    result = rde.kuberde(*args)
    assert (result.returncode, result.stdout) == (1, "")
    # Nothing else: no "Forwarding from", no ssh noise such as kex_exchange_identification.
    assert result.stderr == MISSING


def test_ssh_and_port_forward_to_a_failing_workspace_say_why_and_nothing_else(
    rde: KubeRDE, tmp_path: Path
) -> None:
    failing = ["sh", "-c", "echo boom-marker >&2; exit 3"]
    file = write_documents(
        tmp_path / "broken.yaml",
        [workspace("broken", failing, ttl=0, local_port=free_port(), workspace_port=22)],
    )
    rde.ok("apply", "-f", str(file))
    rde.wait_for("broken", "Error", lambda row: row is not None and row["phase"] == "Error")
    for args in (["ssh", "broken"], ["port-forward", "broken", f"{free_port()}:22"]):
        result = rde.kuberde(*args)
        assert (result.returncode, result.stdout) == (1, ""), result.stderr
        [line] = result.stderr.splitlines()
        assert line.startswith("kuberde: broken is unavailable: "), line
        assert "boom-marker" in line
    rde.ok("delete", "broken")


def test_an_unreachable_local_gateway_says_how_to_start_it(rde: KubeRDE) -> None:
    port = free_port()
    env = rde.env | {"KUBERDE_SERVER": f"http://127.0.0.1:{port}", "KUBERDE_TOKEN": "t"}
    for args in (["ls"], ["connect", "demo"], ["version"]):
        result = subprocess.run(
            [KUBERDE, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert result.returncode == 1, result.stderr
        assert (
            f"cannot reach the gateway at http://127.0.0.1:{port} (connection refused); "
            "is `kuberde up` running? Start it with `make run`"
        ) in result.stderr
        assert "ssl:default" not in result.stderr


def test_an_empty_document_is_an_error(rde: KubeRDE, tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    result = rde.kuberde("apply", "-f", str(empty))
    assert result.returncode == 1
    assert result.stderr == f"kuberde: {empty}: holds no RDEAgent document (it is empty)\n"


def test_version_shows_the_client_and_the_gateway(rde: KubeRDE) -> None:
    from kuberde import __version__

    assert rde.ok("version").splitlines() == [
        f"Client version: {__version__}",
        f"Gateway version: {__version__} ({rde.url})",
    ]


def test_a_held_workspace_says_so_in_every_format(rde: KubeRDE, tmp_path: Path) -> None:
    port = free_port()
    with rde.client([KUBERDE, "port-forward", "demo", f"{port}:22"], tmp_path / "pf.log"):
        wait_for_text(tmp_path / "pf.log", "Forwarding from")
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as held:
            held.settimeout(WAIT)
            assert held.recv(64).startswith(b"SSH-2.0-")  # the stream is open end to end
            rde.wait_for("demo", "held", lambda row: row is not None and row["connections"] == 1)
            wide = rde.ok("ls", "-o", "wide")
            assert re.search(r"^demo\s.*\sheld by 1 connection\s", wide, re.MULTILINE), wide
            [item] = json.loads(rde.ok("ls", "-o", "json"))
            assert (item["connections"], item["idle"], item["idle_deadline"]) == (
                1,
                "held by 1 connection",
                None,
            )
            [item] = yaml.safe_load(rde.ok("ls", "-o", "yaml"))
            assert item["idle"] == "held by 1 connection"
            assert rde.ok("ls", "-o", "name") == "rdeagent/demo\n"
    rde.wait_for("demo", "released", lambda row: row is not None and row["connections"] == 0)
    [item] = json.loads(rde.ok("ls", "-o", "json"))
    assert item["idle_deadline"] is not None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", item["idle"]), item


def test_ls_watch_prints_each_change(rde: KubeRDE, tmp_path: Path) -> None:
    output = tmp_path / "watch.log"
    with rde.client([KUBERDE, "ls", "-w"], output) as watch:
        wait_for_text(output, r"NAME\s+STATUS\s+ONLINE\s+POD\s+AGE\ndemo\s+Running")
        rde.ok("stop", "demo")
        wait_for_text(output, r"\ndemo\s+ScaledDown\s+false\s+<none>")
        rde.ok("wake", "demo")
        wait_for_text(output, r"ScaledDown[^\n]*\n(.*\n)*demo\s+Running\s+true\s+\d+")
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=WAIT)
        assert watch.returncode == 0
    assert output.read_text().count("NAME") == 1


def test_completion_offers_workspace_names(rde: KubeRDE) -> None:
    script = rde.ok("completion", "bash")
    assert "_KUBERDE_COMPLETE" in script
    result = subprocess.run(
        [KUBERDE],
        env=rde.env
        | {
            "_KUBERDE_COMPLETE": "complete_bash",
            "COMP_WORDS": "kuberde stop de",
            "COMP_CWORD": "2",
        },
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["demo"]


def test_an_unknown_command_suggests_only_a_near_miss() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KUBERDE, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=WAIT
        )

    bogus = run("bogus")
    assert bogus.returncode == 2
    assert bogus.stderr == (
        "kuberde: unknown command 'bogus'\nRun 'kuberde --help' for the list of commands.\n"
    )
    assert "did you mean 'ls' or 'logs'?" in run("lgs").stderr
    assert "did you mean 'port-forward'?" in run("port").stderr
