"""code-server (the npm package) as a real second workspace app behind the app proxy.

`kuberde up` runs `code-server --auth none` as a workspace's workload and lists it in
`spec.apps`; a client that is not a browser (a bearer user token, the app's host name on
the gateway's port) loads its workbench page through the gateway and opens a WebSocket to
its server the way the workbench does, through the proxy.

Opt-in: code-server does not install from npm on a machine that reaches only the package
registries (its postinstall downloads ripgrep from GitHub), so CI does not install it.
`scripts/install-code-server.sh` installs it with Debian's ripgrep instead; the test runs
when `code-server` is on PATH or `KUBERDE_TEST_CODE_SERVER` names it, and skips otherwise.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import urljoin

import aiohttp
import pytest

from kuberde.cli.config import load
from kuberde.gateway.apphost import app_host
from tests.e2e.up_fixtures import (
    WAIT,
    KubeRDE,
    current_owner,
    free_port,
    workspace,
    write_documents,
)

CODE_SERVER = os.environ.get("KUBERDE_TEST_CODE_SERVER") or shutil.which("code-server")
#: code-server compiles nothing at start, but a loaded 2-core machine takes its time.
START = 90.0

pytestmark = pytest.mark.skipif(
    CODE_SERVER is None,
    reason="code-server is not installed (opt-in: scripts/install-code-server.sh, "
    "or set KUBERDE_TEST_CODE_SERVER to its path)",
)


async def _page(url: str, headers: dict[str, str]) -> tuple[int, str, str]:
    """GET `url` through the proxy, following code-server's redirects; (status, type, body)."""
    timeout = aiohttp.ClientTimeout(total=WAIT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(5):
            async with session.get(url, headers=headers, allow_redirects=False) as reply:
                if reply.status in (301, 302, 303, 307, 308):
                    url = urljoin(url, reply.headers["Location"])
                    continue
                return reply.status, reply.content_type, await reply.text()
    raise AssertionError(f"too many redirects, last to {url}")


async def _wait_for_page(url: str, headers: dict[str, str]) -> tuple[int, str, str]:
    """The page once code-server answers; until then the proxy says 502 (nothing listens)."""
    deadline = asyncio.get_running_loop().time() + START
    while True:
        status, kind, body = await _page(url, headers)
        if status != 502 or asyncio.get_running_loop().time() > deadline:
            return status, kind, body
        await asyncio.sleep(0.5)


async def _websocket(url: str, headers: dict[str, str]) -> None:
    """Open the workbench's kind of WebSocket (its server answers 101) and close it again;
    ws_connect raises unless the upgrade went through the proxy."""
    timeout = aiohttp.ClientTimeout(total=WAIT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.ws_connect(url, headers=headers) as ws,
    ):
        assert not ws.closed
        await ws.close()


@pytest.mark.timeout(180)
def test_code_server_loads_and_upgrades_a_websocket_through_the_app_proxy(
    rde: KubeRDE, tmp_path: Path
) -> None:
    assert CODE_SERVER is not None
    port = free_port()
    project = tmp_path / "project"
    project.mkdir()
    (project / "hello.txt").write_text("hello from the workspace\n")
    command = [
        CODE_SERVER,
        "--auth",
        "none",
        "--bind-addr",
        f"127.0.0.1:{port}",
        "--disable-telemetry",
        "--disable-update-check",
        "--user-data-dir",
        str(tmp_path / "code-data"),
        "--extensions-dir",
        str(tmp_path / "code-extensions"),
        str(project),
    ]
    file = write_documents(
        tmp_path / "code.yaml",
        [workspace("code", command, workspace_port=port, apps=[{"name": "code", "port": port}])],
    )
    url = rde.start_up(file)
    token = load(rde.root / "cli-config.json").token
    host = f"{app_host('code', current_owner(), None, 'localhost')}:{url.rsplit(':', 1)[1]}"
    headers = {"Host": host, "Authorization": f"Bearer {token}"}

    status, kind, body = asyncio.run(_wait_for_page(f"{url}/", headers))
    assert status == 200, body[:500]
    assert kind == "text/html"
    assert "vscode-workbench-web-configuration" in body, body[:500]

    ws_url = f"{url.replace('http', 'ws', 1)}/?reconnectionToken={uuid.uuid4()}"
    ws_url += "&reconnection=false&skipWebSocketFrames=false"
    asyncio.run(_websocket(ws_url, {**headers, "Origin": f"http://{host}"}))
