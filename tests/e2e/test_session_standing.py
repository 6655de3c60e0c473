"""A browser session ends when its user is removed or changes password, and demotion takes
effect at once, on the dashboard and on app hosts, also across a `kuberde up` restart; the
same holds for the command line's access tokens.

Browsers are plain HTTP clients with a cookie jar, signing in through the built-in issuer's
form as a person would; `*.localhost` app hosts resolve to loopback. Command-line tokens
come from the device flow, approved with the password on the verification form.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from kuberde.auth.issuer import DEVICE_CODE_GRANT
from kuberde.auth.users import set_user
from kuberde.files import write_private
from kuberde.naming import agent_id
from tests.e2e.up_fixtures import (
    KUBERDE,
    WAIT,
    WORKLOAD_ENV,
    WORKLOAD_PYTHON,
    KubeRDE,
    Loopback,
    current_owner,
    free_port,
    wait_for_text,
    write_documents,
)
from tests.oidc_provider.harness import forms_of

OWNER = current_owner()
PASSWORD = "owner-password-1"
REC = agent_id(OWNER, "rec")
RECORDER = Path(__file__).resolve().parent / "apps" / "recorder.py"
_SIGNED_IN = re.compile(r"Signed in as <strong>([^<]+)</strong>")

pytestmark = pytest.mark.timeout(300)


class Site:
    def __init__(self, kuberde: KubeRDE, port: int) -> None:
        self.kuberde = kuberde
        self.users = kuberde.state_dir / "users.yaml"
        #: The owner's workspace's app (and only allowed) port.
        self.port = port

    @property
    def url(self) -> str:
        assert self.kuberde.url is not None
        return self.kuberde.url

    @property
    def app(self) -> str:
        """The owner's app host (someone else's for everyone but the owner)."""
        return f"http://rec--{OWNER}.localhost:{self.url.rsplit(':', 1)[1]}/"

    def edit_users(self, change: Any) -> None:
        """Change users.yaml in place as an operator would (keeping every password hash)."""
        document = yaml.safe_load(self.users.read_text())
        change(document["users"])
        write_private(self.users, yaml.safe_dump(document))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("standing")
    with KubeRDE(root) as kuberde:
        port = free_port()
        record = root / "headers.jsonl"
        if kuberde.isolated:
            account = kuberde.account(OWNER)
            record = account.home / "headers.jsonl"
        files = write_documents(
            root / "workspaces.yaml",
            [
                {
                    "apiVersion": "kuberde.io/v1",
                    "kind": "RDEAgent",
                    "metadata": {"name": "rec"},
                    "spec": {
                        "owner": OWNER,
                        "ttl": "10m",
                        "localTarget": f"127.0.0.1:{port}",
                        "apps": [{"name": "rec", "port": port, "path": "/"}],
                        "workload": {
                            "command": [WORKLOAD_PYTHON, str(RECORDER), str(port), str(record)],
                            "env": WORKLOAD_ENV,
                        },
                    },
                }
            ],
        )
        set_user(kuberde.state_dir / "users.yaml", OWNER, PASSWORD)
        kuberde.start_up(files)
        try:
            kuberde.wait_phase("rec", "Running", timeout=60)
            yield Site(kuberde, port)
        finally:
            print(kuberde.diagnostics())


_addresses = itertools.count(2)


class Person:
    """One browser: a cookie jar that keeps 127.0.0.1's cookies, and `*.localhost`. Each
    connects from an address of its own, as people do: the issuer limits sign-ins per address.
    """

    def __init__(self, site: Site, name: str) -> None:
        self.site, self.name = site, name
        source = f"127.0.0.{next(_addresses)}"
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=WAIT),
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            headers={"Accept": "text/html"},  # page loads, which app hosts may redirect
            connector=aiohttp.TCPConnector(resolver=Loopback(), local_addr=(source, 0)),
        )

    async def sign_in(self, password: str) -> None:
        async with self.http.get(self.site.url + "/auth/login") as page:
            assert page.status == 200, await page.text()
            form = forms_of(await page.text())[0]
        data = {**form.fields, "username": self.name, "password": password, "action": "approve"}
        async with self.http.post(form.action, data=data) as done:
            assert _SIGNED_IN.findall(await done.text()) == [self.name]

    async def dashboard(self) -> tuple[str | None, bool]:
        """Who the dashboard says is signed in, and whether it lists the owner's workspace."""
        async with self.http.get(self.site.url + "/") as page:
            assert page.status == 200
            text = await page.text()
        names = _SIGNED_IN.findall(text)
        return (names[0] if names else None), '-title">rec</h2>' in text

    async def app(self) -> int:
        """The owner's app as this browser reaches it: 200 served, 404 not theirs,
        401 not signed in (the app host's hand-off found no session)."""
        async with self.http.get(self.site.app) as reply:
            if reply.status == 200 and "/oauth/authorize" in str(reply.url):
                return 401
            return reply.status

    async def echo(self, ws: aiohttp.ClientWebSocketResponse, text: str) -> str | int:
        """The app's echo of `text` over an open WebSocket, or the close code it got."""
        await ws.send_str(text)
        reply = await ws.receive(timeout=WAIT)
        return str(reply.data) if reply.type is aiohttp.WSMsgType.TEXT else int(ws.close_code or 0)

    async def sign_out(self) -> None:
        """The dashboard's sign-out button."""
        async with self.http.get(self.site.url + "/") as page:
            [form] = [f for f in forms_of(await page.text()) if f.action == "/auth/logout"]
        async with self.http.post(self.site.url + form.action, data=form.fields) as done:
            assert done.status == 200 and await self.dashboard() == (None, False)

    async def close(self) -> None:
        await self.http.close()


async def cli_token(site: Site, name: str, password: str) -> str:
    """An access token from the device flow (RFC 8628), approved with the password on the
    issuer's verification page as `kuberde login` has its user do."""
    source = f"127.0.0.{next(_addresses)}"
    timeout = aiohttp.ClientTimeout(total=WAIT)
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        client = {"client_id": "kuberde-cli"}
        async with http.post(site.url + "/oauth/device/code", data=client) as reply:
            assert reply.status == 200, await reply.text()
            grant = await reply.json()
        approval = {
            "user_code": grant["user_code"],
            "username": name,
            "password": password,
            "action": "approve",
        }
        async with http.post(grant["verification_uri"], data=approval) as reply:
            assert reply.status == 200, await reply.text()
        redeem = {**client, "grant_type": DEVICE_CODE_GRANT, "device_code": grant["device_code"]}
        async with http.post(site.url + "/oauth/token", data=redeem) as reply:
            assert reply.status == 200, await reply.text()
            return str((await reply.json())["access_token"])


async def find(site: Site, token: str) -> tuple[int, str]:
    """`GET /api/agents/ID` of the owner's workspace with a bearer token (as `kuberde ssh`
    asks before it starts): 200 for the owner and admins."""
    timeout = aiohttp.ClientTimeout(total=WAIT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(
            f"{site.url}/api/agents/{REC}", headers={"Authorization": f"Bearer {token}"}
        ) as reply,
    ):
        body = await reply.json()
        return reply.status, str(body.get("error", ""))


async def people(site: Site, admins: dict[str, bool]) -> dict[str, Person]:
    """Listed users, each signed in on the dashboard and (if allowed) on the owner's app."""
    signed_in = {}
    for name, admin in admins.items():
        set_user(site.users, name, f"{name}-password", admin=admin)
        person = Person(site, name)
        await person.sign_in(f"{name}-password")
        signed_in[name] = person
    return signed_in


async def app_sockets(
    site: Site, crowd: dict[str, Person]
) -> dict[str, aiohttp.ClientWebSocketResponse]:
    """Each person's WebSocket to the owner's echo app, each answering."""
    origin = site.app.rstrip("/")
    sockets = {}
    for name, person in crowd.items():
        assert await person.app() == 200  # the app ticket
        sockets[name] = await person.http.ws_connect(
            origin.replace("http", "ws", 1) + "/ws", origin=origin, protocols=["echo.v1"]
        )
        assert await person.echo(sockets[name], "hi") == "echo:hi"
    return sockets


async def test_the_fixture_browsers_work(site: Site) -> None:
    """What the other tests take away: an admin sees and reaches the owner's app, a user
    neither, the owner theirs."""
    crowd = await people(site, {"ada": True, "ben": False})
    owner = Person(site, OWNER)
    try:
        await owner.sign_in(PASSWORD)
        assert await owner.dashboard() == (OWNER, True) and await owner.app() == 200
        assert await crowd["ada"].dashboard() == ("ada", True)
        assert await crowd["ada"].app() == 200
        assert await crowd["ben"].dashboard() == ("ben", False)
        assert await crowd["ben"].app() == 404
    finally:
        for person in [owner, *crowd.values()]:
            await person.close()


async def test_removal_a_new_password_and_demotion_take_effect_at_once(site: Site) -> None:
    crowd = await people(
        site, {"removed": False, "repassed": False, "demoted": True, "bystander": True}
    )
    try:
        assert await crowd["demoted"].app() == 200  # holds an app ticket, minted as admin
        assert await crowd["bystander"].app() == 200
        site.edit_users(lambda users: users.pop("removed"))
        set_user(site.users, "repassed", "a-new-password")
        site.edit_users(lambda users: users["demoted"].update(admin=False))

        for gone in ("removed", "repassed"):
            assert await crowd[gone].dashboard() == (None, False), gone
            assert await crowd[gone].app() == 401, gone
        assert await crowd["demoted"].dashboard() == ("demoted", False)
        assert await crowd["demoted"].app() == 404
        assert await crowd["bystander"].dashboard() == ("bystander", True)
        assert await crowd["bystander"].app() == 200
        # Put back as they were, the ended sessions stay ended: a new sign-in is needed.
        set_user(site.users, "removed", "removed-password")
        assert await crowd["removed"].dashboard() == (None, False)
    finally:
        for person in crowd.values():
            await person.close()


async def test_a_restart_does_not_bring_back_a_session_that_lost_its_standing(
    site: Site,
) -> None:
    crowd = await people(
        site, {"r-removed": False, "r-repassed": False, "r-demoted": True, "r-kept": True}
    )
    try:
        for person in crowd.values():
            await person.app()
        site.kuberde.stop_up()
        site.edit_users(lambda users: users.pop("r-removed"))
        set_user(site.users, "r-repassed", "a-new-password")
        site.edit_users(lambda users: users["r-demoted"].update(admin=False))
        site.kuberde.start_up(site.kuberde.root / "workspaces.yaml")
        site.kuberde.wait_phase("rec", "Running", timeout=60)

        for gone in ("r-removed", "r-repassed"):
            assert await crowd[gone].dashboard() == (None, False), gone
            assert await crowd[gone].app() == 401, gone
        assert await crowd["r-demoted"].dashboard() == ("r-demoted", False)
        assert await crowd["r-demoted"].app() == 404
        assert await crowd["r-kept"].dashboard() == ("r-kept", True), "sessions do persist"
    finally:
        for person in crowd.values():
            await person.close()


async def test_an_open_app_websocket_ends_at_the_next_message_once_demoted(site: Site) -> None:
    crowd = await people(site, {"ws-admin": True, "ws-kept": True})
    try:
        sockets = await app_sockets(site, crowd)
        site.edit_users(lambda users: users["ws-admin"].update(admin=False))
        assert await crowd["ws-admin"].echo(sockets["ws-admin"], "again") == 1008
        assert await crowd["ws-kept"].echo(sockets["ws-kept"], "again") == "echo:again"
        for ws in sockets.values():
            await ws.close()
    finally:
        for person in crowd.values():
            await person.close()


async def test_a_token_is_refused_once_its_user_is_removed_or_changes_password(
    site: Site,
) -> None:
    names = ("t-removed", "t-repassed", "t-demoted", "t-kept")
    for name in names:
        set_user(site.users, name, f"{name}-password", admin=True)
    tokens = {name: await cli_token(site, name, f"{name}-password") for name in names}
    for name in names:
        assert (await find(site, tokens[name]))[0] == 200, name
    site.edit_users(lambda users: users.pop("t-removed"))
    set_user(site.users, "t-repassed", "a-new-password", admin=True)
    site.edit_users(lambda users: users["t-demoted"].update(admin=False))

    status, message = await find(site, tokens["t-removed"])
    assert (status, message) == (401, "the token is no longer valid: user t-removed was removed")
    status, message = await find(site, tokens["t-repassed"])
    assert status == 401 and "password of t-repassed changed" in message, message
    assert (await find(site, tokens["t-demoted"]))[0] == 404, "no longer an admin"
    assert await find(site, tokens["t-kept"]) == (200, "")
    # Put back as they were, the refused tokens stay refused: a new sign-in is needed.
    set_user(site.users, "t-removed", "t-removed-password", admin=True)
    assert (await find(site, tokens["t-removed"]))[0] == 401


_GET = b"GET / HTTP/1.1\r\nHost: rec\r\n\r\n"


async def page_over_tunnel(ws: aiohttp.ClientWebSocketResponse) -> None:
    """One keep-alive request to the app over an open `/connect` tunnel."""
    await ws.send_bytes(_GET)
    received = b""
    while b"recorder app" not in received:
        message = await ws.receive(timeout=WAIT)
        assert message.type is aiohttp.WSMsgType.BINARY, message
        received += message.data


async def page_over_socket(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One keep-alive request to the app over a forwarded TCP connection."""
    writer.write(_GET)
    received = b""
    while b"recorder app" not in received:
        data = await asyncio.wait_for(reader.read(65536), WAIT)
        assert data, f"the connection closed: {received!r}"
        received += data


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
    """The close code and the last error event of a tunnel the gateway closes."""
    error = ""
    while True:
        message = await ws.receive(timeout=WAIT)
        if message.type is aiohttp.WSMsgType.TEXT:
            error = json.loads(message.data).get("message", error)
        elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return ws.close_code, error


async def test_open_tunnels_and_port_forwards_close_once_their_user_is_removed(
    site: Site, tmp_path: Path
) -> None:
    """An idle ssh-style tunnel (`/connect`) and a port-forward's connection (`/session`) of
    a removed user are closed by the gateway without any traffic; another user's stay."""
    names = ("o-removed", "o-kept")
    for name in names:
        set_user(site.users, name, f"{name}-password", admin=True)
    tokens = {name: await cli_token(site, name, f"{name}-password") for name in names}
    url = site.url.replace("http", "ws", 1) + f"/connect/{REC}?port={site.port}"
    with contextlib.ExitStack() as processes:
        async with contextlib.AsyncExitStack() as stack:
            tunnels, forwarded = {}, {}
            for name, token in tokens.items():
                http = await stack.enter_async_context(
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT))
                )
                tunnels[name] = await stack.enter_async_context(
                    http.ws_connect(url, headers={"Authorization": f"Bearer {token}"})
                )
                assert json.loads(await tunnels[name].receive_str(timeout=WAIT)) == {
                    "event": "connected"
                }
                await page_over_tunnel(tunnels[name])
                local, log = free_port(), tmp_path / f"{name}.log"
                processes.enter_context(
                    site.kuberde.client(
                        [KUBERDE, "port-forward", REC, f"{local}:{site.port}"],
                        log,
                        env={"KUBERDE_TOKEN": token},
                    )
                )
                wait_for_text(log, "Forwarding from")
                forwarded[name] = await asyncio.open_connection("127.0.0.1", local)
                await page_over_socket(*forwarded[name])

            site.edit_users(lambda users: users.pop("o-removed"))

            code, error = await closed_with(tunnels["o-removed"])
            assert code == 4401 and error.endswith("user o-removed was removed"), (code, error)
            reader, writer = forwarded["o-removed"]
            assert await asyncio.wait_for(reader.read(65536), WAIT) == b"", "not closed"
            writer.close()
            await page_over_tunnel(tunnels["o-kept"])
            await page_over_socket(*forwarded["o-kept"])
            forwarded["o-kept"][1].close()


async def test_an_app_websocket_with_no_browser_traffic_closes_at_sign_out_or_removal(
    site: Site,
) -> None:
    crowd = await people(site, {"push-out": True, "push-gone": True, "push-kept": True})
    try:
        sockets = await app_sockets(site, crowd)
        await crowd["push-out"].sign_out()
        site.edit_users(lambda users: users.pop("push-gone"))
        for gone in ("push-out", "push-gone"):
            message = await sockets[gone].receive(timeout=WAIT)  # the browser sends nothing
            assert message.type is aiohttp.WSMsgType.CLOSE, (gone, message)
            assert (message.data, message.extra) == (1008, "signed out"), gone
        assert await crowd["push-kept"].echo(sockets["push-kept"], "again") == "echo:again"
        for ws in sockets.values():
            await ws.close()
    finally:
        for person in crowd.values():
            await person.close()
