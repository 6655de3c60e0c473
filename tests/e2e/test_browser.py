"""A real browser against `kuberde up`: sign-in, the dashboard, JupyterLab woken through the
app proxy, and the browser-side security rules.

Headless Chromium from Debian (`scripts/system-deps.sh --tests`) driven by Playwright; every
step leaves a screenshot in tests/artifacts/browser/. Workspaces: `lab` runs a real
JupyterLab, `rec` a small app that records every header it receives (tests/e2e/apps).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from kuberde.auth.users import set_user
from kuberde.gateway.upstreams import IDLE_TIMEOUT
from tests.e2e.up_fixtures import (
    WORKLOAD_ENV,
    WORKLOAD_PYTHON,
    KubeRDE,
    Loopback,
    current_owner,
    free_port,
    wait_until,
    write_documents,
)

playwright_api = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Browser, BrowserContext, Page, expect  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-gpu",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "browser"
RECORDER = Path(__file__).resolve().parent / "apps" / "recorder.py"
OWNER = current_owner()
PASSWORD = "owner-password-1"
BOB_PASSWORD = "bob-password-1"
UI_TIMEOUT = 60_000  # ms: JupyterLab's first load on a loaded 2-core machine
TIMEOUT = aiohttp.ClientTimeout(total=30)

pytestmark = pytest.mark.timeout(300)


def jupyter_command(port: int, root: Path) -> list[str]:
    return [
        WORKLOAD_PYTHON,
        "-m",
        "jupyterlab",
        "--allow-root",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--ServerApp.root_dir={root}",
        "--IdentityProvider.token=",
        "--ServerApp.password=",
        "--ServerApp.allow_remote_access=True",
        # Nothing may leave the machine: no extension manager, news or update checks.
        "--LabApp.extension_manager=readonly",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]


T = TypeVar("T")


def document(name: str, port: int, command: list[str], app: str, path: str = "/") -> Any:
    return {
        "apiVersion": "kuberde.io/v1",
        "kind": "RDEAgent",
        "metadata": {"name": name},
        "spec": {
            "owner": OWNER,
            "ttl": "10m",
            "localTarget": f"127.0.0.1:{port}",
            "apps": [{"name": app, "port": port, "path": path}],
            "workload": {"command": command, "env": WORKLOAD_ENV},
        },
    }


class Site:
    """The installation under test and what the tests need to know about it."""

    def __init__(self, kuberde: KubeRDE, url: str, record: Path) -> None:
        self.kuberde = kuberde
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])
        self.record = record

    def app(self, label: str, path: str = "/") -> str:
        return f"http://{label}.localhost:{self.port}{path}"

    @property
    def token(self) -> str:
        config = json.loads(Path(self.kuberde.env["KUBERDE_CONFIG"]).read_text())
        return str(config["token"])

    def records(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("browser")
    with KubeRDE(root) as kuberde:
        # The workloads' files are their account's (in its home, as root): they write them.
        account = kuberde.account(OWNER)
        data = account.home / "browser" if kuberde.isolated else root
        notebooks = data / "notebooks"
        notebooks.mkdir(parents=True)
        for directory in (data, notebooks):
            os.chown(directory, account.uid, account.gid)
        record = data / "headers.jsonl"
        lab_port, rec_port = free_port(), free_port()
        recorder = [WORKLOAD_PYTHON, str(RECORDER), str(rec_port), str(record)]
        files = write_documents(
            root / "workspaces.yaml",
            [
                document(
                    "lab", lab_port, jupyter_command(lab_port, notebooks), "jupyterlab", "/lab"
                ),
                document("rec", rec_port, recorder, "rec"),
            ],
        )
        set_user(kuberde.state_dir / "users.yaml", OWNER, PASSWORD)
        set_user(kuberde.state_dir / "users.yaml", "bob", BOB_PASSWORD)
        url = kuberde.start_up(files)
        try:
            kuberde.wait_phase("lab", "Running", timeout=60)
            kuberde.wait_phase("rec", "Running", timeout=60)
            yield Site(kuberde, url, record)
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / "diagnostics.txt").write_text(kuberde.diagnostics())


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1200, "height": 860})
    context.set_default_timeout(UI_TIMEOUT)
    yield context
    context.close()


def arun(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run async client code beside Playwright's own event loop (its sync API holds one)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, site: Site, user: str, password: str, step: str) -> None:
    page.goto(site.url + "/")
    shot(page, f"{step}-1-signin-page")
    page.get_by_role("link", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/oauth/authorize.*"))
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    shot(page, f"{step}-2-issuer")
    page.click("button[value=approve]")
    page.wait_for_url(site.url + "/")
    expect(page.get_by_text(f"Signed in as {user}")).to_be_visible()


#: The status bar's kernel item once the notebook's session has a connected, idle kernel.
KERNEL_IDLE = re.compile(r"^Python 3 \(ipykernel\) \| Idle$")


def run_cell(app: Page, code: str, step: str) -> None:
    """Type `code` into the notebook's last cell and run it (the kernel WebSocket is proxied).

    Waits for the status bar to say the kernel is connected and idle first. The toolbar's
    execution indicator says `idle` earlier, while the session is still "Initializing" (no
    kernel yet): a cell run then is silently not executed, which is what made this test
    flaky (never the proxy: every kernel message went through, in order).
    """
    expect(app.get_by_text(KERNEL_IDLE)).to_be_visible(timeout=UI_TIMEOUT)
    editor = app.locator(".jp-Notebook .jp-Cell .cm-content").last
    editor.click()
    expect(editor).to_be_focused()
    app.keyboard.type(code)
    expect(editor).to_contain_text(code)
    shot(app, step)
    app.keyboard.press("Shift+Enter")


def card(page: Page, name: str) -> Any:
    return page.locator("article.card", has=page.get_by_role("heading", name=name, exact=True))


def test_jupyterlab_is_woken_from_the_dashboard_and_runs_a_cell(
    site: Site, context: BrowserContext
) -> None:
    page = context.new_page()
    sign_in(page, site, OWNER, PASSWORD, "01")
    lab = card(page, "lab")
    expect(lab.locator(".badge")).to_have_text("Running")
    app_url = lab.get_by_role("link", name="jupyterlab").get_attribute("href")
    assert app_url == site.app("lab--" + OWNER, "/lab")
    expect(lab.get_by_text("kuberde ssh lab")).to_be_visible()
    expect(lab.get_by_text("ssh lab.kuberde")).to_be_visible()
    shot(page, "03-dashboard")

    lab.get_by_role("button", name="Stop").click()
    expect(page.get_by_role("status")).to_contain_text("lab is scaled down")
    expect(card(page, "lab").locator(".badge")).to_have_text("ScaledDown")
    shot(page, "04-stopped")

    app = context.new_page()
    app.goto(app_url)
    expect(app.get_by_role("heading", name="Starting lab")).to_be_visible()
    shot(app, "05-waiting-page")
    # The waiting page turns into JupyterLab by itself.
    app.wait_for_selector("#jp-main-dock-panel", timeout=UI_TIMEOUT)
    assert app.url == app_url
    shot(app, "06-jupyterlab")

    app.locator(".jp-LauncherCard[data-category='Notebook']").first.click()
    run_cell(app, "print(6 * 7, 'through the proxy')", "07-cell-typed")
    output = app.locator(".jp-OutputArea-output").first
    expect(output).to_contain_text("42 through the proxy", timeout=UI_TIMEOUT)
    shot(app, "08-cell-output")

    page.bring_to_front()
    page.reload()
    lab = card(page, "lab")
    expect(lab.locator(".badge")).to_have_text("Running")
    lab.get_by_label("Keep up for").select_option("1h")
    lab.get_by_role("button", name="Extend").click()
    expect(page.get_by_role("status")).to_contain_text("lab stays up until at least")
    shot(page, "09-extended")
    row = site.kuberde.ls()["lab"]
    assert row["last_activity_source"] in ("extend", "http")

    # An open JupyterLab keeps talking to its server, and that would wake it again at once.
    app.close()
    card(page, "lab").get_by_role("button", name="Stop").click()
    expect(card(page, "lab").locator(".badge")).to_have_text("ScaledDown")
    shot(page, "10-stopped-again")


def test_someone_elses_app_looks_missing_and_apps_cannot_reach_the_session(
    site: Site, context: BrowserContext, browser: Browser
) -> None:
    page = context.new_page()
    sign_in(page, site, OWNER, PASSWORD, "10")
    session = next(c for c in context.cookies() if c["name"] == "kuberde-session")
    assert session["httpOnly"] and session["sameSite"] == "Lax" and session["domain"] == "127.0.0.1"

    app = context.new_page()
    app.goto(site.app("rec--" + OWNER, "/setcookie"))
    expect(app.get_by_role("heading", name="recorder app")).to_be_visible()
    # Platform cookies are HttpOnly (and the dashboard's live on another site altogether).
    assert set(app.evaluate("document.cookie").split("; ")) == {"own=1", "tossed=1"}
    # Cookie tossing from the app's JavaScript cannot reach the dashboard's site either.
    app.evaluate("document.cookie = 'kuberde-session=js; domain=localhost; path=/'")
    blocked = app.evaluate(
        """async (url) => {
            try { await fetch(url, {credentials: 'include'}); return 'read'; }
            catch (error) { return 'blocked'; }
        }""",
        site.url + "/api/workspaces",
    )
    assert blocked == "blocked"
    shot(app, "11-app-page")
    cookies = {(c["name"], c["domain"], c["value"]) for c in context.cookies()}
    assert ("kuberde-session", "127.0.0.1", session["value"]) in cookies
    assert not any(value == "planted" for _, _, value in cookies)
    # `Domain=localhost` was taken off: the app's cookie stays on the app's own host.
    assert ("tossed", f"rec--{OWNER}.localhost", "1") in cookies
    app_cookie = next(c for c in context.cookies() if c["name"] == "kuberde-app")
    assert app_cookie["domain"] == f"rec--{OWNER}.localhost" and app_cookie["httpOnly"]
    page.reload()
    expect(page.get_by_text(f"Signed in as {OWNER}")).to_be_visible()

    # Nothing of the platform's reached the workload: no token, ticket or session cookie.
    seen = json.dumps(site.records())
    for secret in (session["value"], app_cookie["value"], site.token):
        assert secret not in seen
    assert "own=1" in seen

    bob_context = browser.new_context(viewport={"width": 1200, "height": 860})
    try:
        bob = bob_context.new_page()
        sign_in(bob, site, "bob", BOB_PASSWORD, "12")
        expect(bob.get_by_text("No workspaces yet.")).to_be_visible()
        theirs = bob.goto(site.app("rec--" + OWNER))
        assert theirs is not None
        answer = (theirs.status, theirs.text())
        shot(bob, "13-bob-someone-elses-app")
        missing = bob.goto(site.app("nothing--bob"))
        assert missing is not None
        assert answer == (missing.status, missing.text())
        assert answer[0] == 404
    finally:
        bob_context.close()


def client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=TIMEOUT, connector=aiohttp.TCPConnector(resolver=Loopback())
    )


async def _ws_status(url: str, origin: str, headers: dict[str, str]) -> int | str:
    async with client() as http:
        try:
            async with http.ws_connect(
                url, headers={**headers, "Origin": origin}, protocols=["echo.v1"]
            ) as ws:
                await ws.send_str("hi")
                reply = await ws.receive(timeout=10)
                return str(reply.data)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


def test_websocket_origin_and_csrf_are_checked(site: Site, context: BrowserContext) -> None:
    page = context.new_page()
    sign_in(page, site, OWNER, PASSWORD, "14")
    bearer = {"Authorization": f"Bearer {site.token}"}
    own = f"http://rec--{OWNER}.localhost:{site.port}"
    url = own.replace("http", "ws", 1) + "/ws"
    assert arun(_ws_status(url, own, bearer)) == "echo:hi"
    assert arun(_ws_status(url, f"http://evil--{OWNER}.localhost:{site.port}", bearer)) == 403
    assert arun(_ws_status(url, "http://127.0.0.1:1", bearer)) == 403

    cookie = next(c for c in context.cookies() if c["name"] == "kuberde-session")
    assert cookie["value"]
    forged = page.request.post(
        site.url + "/dashboard/workspaces/rec/stop", form={"csrf": "not-the-token"}
    )
    assert forged.status == 403
    missing = page.request.post(site.url + "/dashboard/workspaces/rec/stop", form={})
    assert missing.status == 403
    assert site.kuberde.ls()["rec"]["phase"] == "Running"


async def _raw_request(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 10)
    finally:
        writer.close()


def _rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) * 1024


async def _slow_reader(site: Site, megabytes: int) -> tuple[int, int]:
    """Request a large download and stop reading; returns (bytes the app sent, RSS growth)."""
    gateway = site.kuberde.up_pid
    before = _rss(gateway)
    reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
    writer.transport.set_write_buffer_limits(0)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    writer.write(
        f"GET /big?mb={megabytes} HTTP/1.1\r\nHost: rec--{OWNER}.localhost:{site.port}\r\n"
        f"Authorization: Bearer {site.token}\r\n\r\n".encode()
    )
    await writer.drain()
    blocked = site.record.with_suffix(".blocked")
    # The app gets ahead by the stream window and the sockets' buffers, then has to wait.
    wait_until(blocked.exists, "the app to be held back by the reader")
    stalled = int(blocked.read_text())
    growth = _rss(gateway) - before
    received = 0
    while chunk := await asyncio.wait_for(reader.read(1 << 20), 30):
        received += len(chunk)
        if received >= megabytes * 1024 * 1024:
            break
    writer.close()
    assert received >= megabytes * 1024 * 1024
    return stalled, growth


def test_bad_input_gets_clear_errors_and_everyone_else_is_served(site: Site) -> None:
    async def run() -> None:
        bearer = {"Authorization": f"Bearer {site.token}"}
        async with client() as http:

            async def get(url: str, **headers: str) -> tuple[int, str]:
                async with http.get(url, headers={**bearer, **headers}) as reply:
                    return reply.status, await reply.text()

            assert (await get(site.app("nothing--" + OWNER)))[0] == 404
            status, text = await get(site.app(f"22--rec--{OWNER}"))
            assert status == 403 and "Port 22 is not an app or allowed port" in text
            status, text = await get(site.app(f"rec--{OWNER}"), Host="bad_host!")
            assert status == 400 and "malformed Host" in text
            status, _ = await get(site.app(f"rec--{OWNER}"), **{"X-Huge": "x" * 20_000})
            assert status in (400, 431)
            unsigned = await http.get(site.app(f"rec--{OWNER}"))
            assert unsigned.status == 401
            unsigned.release()
            assert (await get(site.app(f"rec--{OWNER}")))[0] == 200

    arun(run())
    reply = arun(_raw_request(site.port, b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"))
    assert reply.startswith(b"HTTP/1.1 400")

    stalled, growth = arun(_slow_reader(site, 64))
    # A client that stops reading holds back the app; the gateway keeps about one window.
    assert stalled < 48 * 1024 * 1024
    assert growth < 32 * 1024 * 1024


def test_cli_opens_lists_and_extends_apps(site: Site) -> None:
    url = site.app("rec--" + OWNER)
    opened = site.kuberde.kuberde("open", "rec")
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout.strip() == url and "no browser was opened" in opened.stderr
    missing = site.kuberde.kuberde("open", "rec", "nope")
    assert missing.returncode == 1 and "no app named 'nope' (it has: rec)" in missing.stderr
    assert url in site.kuberde.ok("ls", "-o", "wide")
    extended = site.kuberde.ok("extend", "rec", "2h")
    assert extended.startswith("rdeagent/rec extended until ")
    assert site.kuberde.ls()["rec"]["last_activity_source"] in ("extend", "http")
    refused = site.kuberde.kuberde("extend", "rec", "soon")
    assert refused.returncode == 1 and "cannot extend rec" in refused.stderr


def test_app_connections_are_kept_alive_and_an_app_closing_one_loses_no_request(
    site: Site,
) -> None:
    bearer = {"Authorization": f"Bearer {site.token}"}

    async def get(path: str) -> None:
        # A new client each time: only the gateway's connection to the app can be reused.
        async with client() as http, http.get(site.app(f"rec--{OWNER}", path), headers=bearer) as r:
            assert r.status == 200, await r.text()
            await r.read()

    def peers(path: str) -> list[int]:
        return [entry["peer"] for entry in site.records() if entry["path"] == path]

    async def run() -> None:
        await get("/?keep=1")
        await get("/?keep=2")
        assert peers("/?keep=1") == peers("/?keep=2")
        await get("/close?keep=3")
        await get("/?keep=4")
        assert peers("/?keep=4") != peers("/close?keep=3")
        # The app drops the next request on this connection unanswered: it is sent again on a
        # new one and the user never notices.
        await get("/drop-next?keep=5")
        await get("/?keep=6")
        first, second = peers("/?keep=6")
        assert first == peers("/drop-next?keep=5")[0] and second != first
        await asyncio.sleep(IDLE_TIMEOUT + 1)
        await get("/?keep=7")
        assert peers("/?keep=7") != [second]

    arun(run())
