"""One answer for missing and forbidden, everywhere: bob's view of another user's workspace
is byte for byte his view of a workspace that does not exist — on every HTTP route of a real
`kuberde up` (API, `/connect`, `/session`, the app proxy) and in every CLI command's
message — and applying a taken name does not say whose it is."""

from __future__ import annotations

import base64
import http.client
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.up_fixtures import (
    KUBERDE,
    WAIT,
    KubeRDE,
    current_owner,
    free_port,
    running_demo,
    user_token,
    workspace,
    write_documents,
)

THEIRS, MISSING = "demo", "dmeo"  # the same length: Content-Length is compared too


@pytest.fixture(scope="module")
def rde(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeRDE]:
    with running_demo(tmp_path_factory.mktemp("someone-elses")) as installation:
        yield installation


@pytest.fixture(scope="module")
def bob(rde: KubeRDE) -> str:
    return user_token(rde, "bob")


def _answer(rde: KubeRDE, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """Status and body, with `Date` the only header left out of the comparison."""
    assert rde.url is not None
    parts = urlsplit(rde.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=WAIT)
    try:
        connection.request(method, path, headers=headers)
        reply = connection.getresponse()
        shown = sorted((k, v) for k, v in reply.getheaders() if k.lower() != "date")
        return reply.status, repr(shown).encode() + b"\n" + reply.read()
    finally:
        connection.close()


UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
}
ROUTES = [
    ("GET", "/api/agents/{}", {}),
    ("GET", "/api/workspaces/{}", {}),
    ("DELETE", "/api/workspaces/{}", {}),
    ("POST", "/api/workspaces/{}/wake", {}),
    ("POST", "/api/workspaces/{}/stop", {}),
    ("POST", "/api/workspaces/{}/extend", {}),
    ("GET", "/api/workspaces/{}/logs", {}),
    ("GET", "/connect/{}?port=22&kind=ssh", UPGRADE),
    ("GET", "/session/{}", UPGRADE),
]


@pytest.mark.parametrize(("method", "path", "extra"), ROUTES, ids=[r[1] for r in ROUTES])
def test_every_route_answers_the_same_for_someone_elses_and_a_missing_workspace(
    rde: KubeRDE, bob: str, method: str, path: str, extra: dict[str, str]
) -> None:
    headers = {"Authorization": f"Bearer {bob}", **extra}
    theirs = _answer(rde, method, path.format(THEIRS), headers)
    missing = _answer(rde, method, path.format(MISSING), headers)
    assert theirs[0] == 404, theirs
    assert theirs[1].replace(THEIRS.encode(), b"NAME") == missing[1].replace(
        MISSING.encode(), b"NAME"
    )
    assert current_owner().encode() not in theirs[1].replace(b"kuberde", b"")


def test_the_app_proxy_answers_the_same(rde: KubeRDE, bob: str) -> None:
    assert rde.url is not None
    port = urlsplit(rde.url).port
    answers = []
    for name in (THEIRS, MISSING):
        host = f"{name}--{current_owner()}.localhost:{port}"
        status, body = _answer(rde, "GET", "/", {"Host": host, "Authorization": f"Bearer {bob}"})
        answers.append((status, body.replace(name.encode(), b"NAME")))
    assert answers[0] == answers[1]


def _as_bob(rde: KubeRDE, bob: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBERDE, *args],
        env=rde.env | {"KUBERDE_TOKEN": bob},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["stop", "{}"],
        ["wake", "{}"],
        ["delete", "{}"],
        ["logs", "{}"],
        ["extend", "{}"],
        ["open", "{}"],
        ["ssh", "{}"],
        ["connect", "{}", "--port", "22"],
        ["port-forward", "{}", "0:22"],
    ],
    ids=lambda args: args[0],
)
def test_every_command_says_the_same(rde: KubeRDE, bob: str, args: list[str]) -> None:
    said = []
    for name in (THEIRS, MISSING):
        result = _as_bob(rde, bob, *[arg.format(name) for arg in args])
        said.append((result.returncode, result.stdout, result.stderr.replace(name, "NAME")))
    assert said[0] == said[1]
    assert said[0][0] == 1 and "no workspace named 'NAME'" in said[0][2], said[0]


def test_applying_a_taken_name_does_not_say_whose_it_is(
    rde: KubeRDE, bob: str, tmp_path: Path
) -> None:
    port = free_port()
    document = workspace(THEIRS, ["sleep", "60"], local_port=port, owner="bob")
    result = _as_bob(rde, bob, "apply", "-f", str(write_documents(tmp_path / "d.yaml", [document])))
    assert result.returncode == 1
    assert "workspace name 'demo' is taken; choose another name" in result.stderr, result.stderr
    assert repr(current_owner()) not in result.stderr
    assert rde.ls()[THEIRS]["owner"] == current_owner()
