"""Browser sign-in against a real external OIDC provider (npm `oidc-provider`), as with
Keycloak: `kuberde server --oidc-issuer`, authorization code + PKCE, then the dashboard."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, UI_TIMEOUT, shot
from tests.e2e.up_fixtures import KUBERDE, free_port, wait_until
from tests.oidc_provider.harness import SERVER_SCRIPT, require_node

playwright_api = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[str]:
    config = tmp_path / "provider.json"
    config.write_text(json.dumps({"port": 0, "accessTokenTtl": 300, "admins": [], "agents": {}}))
    with (tmp_path / "provider.log").open("wb") as log:
        process = subprocess.Popen(
            [require_node(), str(SERVER_SCRIPT), str(config)],
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=SERVER_SCRIPT.parent,
        )
    try:
        assert process.stdout is not None
        yield str(json.loads(process.stdout.readline())["issuer"])
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextlib.contextmanager
def gateway_process(tmp_path: Path, provider: str, port: int) -> Iterator[str]:
    """`kuberde server` with the provider as its issuer; its state directory is `tmp_path`,
    so a second one on the same port is the same gateway restarted."""
    log = tmp_path / "gateway.log"
    offset = log.stat().st_size if log.exists() else 0
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [
                *(KUBERDE, "server", "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path)),
                *("--oidc-issuer", provider, "--apps-domain", "localhost"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
        )
    try:
        wait_until(
            lambda: "listening on" in log.read_bytes()[offset:].decode(errors="replace"),
            "the gateway to listen",
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        sys.stderr.write(log.read_text()[-4000:])


def test_sign_in_through_an_external_provider_survives_a_restart_and_signs_out(
    tmp_path: Path, provider: str
) -> None:
    """The session is kept on the server, on disk (only its hash): a restarted gateway still
    knows the browser; signing out ends it there, so the old cookie is worth nothing."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 860})
            page.set_default_timeout(UI_TIMEOUT)
            with gateway_process(tmp_path, provider, port) as gateway:
                page.goto(gateway + "/")
                page.get_by_role("link", name="Sign in").click()
                page.wait_for_selector("input[name=login]")
                page.fill("input[name=login]", "carol")
                page.fill("input[name=password]", "anything")
                shot(page, "20-external-provider-login")
                page.locator("button[type=submit]").first.click()
                if not page.url.startswith(gateway):
                    page.wait_for_selector("button[type=submit]")
                    shot(page, "21-external-provider-consent")
                    page.locator("button[type=submit]").first.click()
                page.wait_for_url(re.compile(re.escape(gateway) + r"/(\?.*)?$"))
                expect(page.get_by_text("Signed in as carol")).to_be_visible()
                expect(page.get_by_text("No workspaces yet.")).to_be_visible()
                shot(page, "22-external-provider-dashboard")
            [cookie] = [c for c in page.context.cookies() if c["name"] == "kuberde-session"]

            with gateway_process(tmp_path, provider, port) as gateway:
                page.goto(gateway + "/")
                expect(page.get_by_text("Signed in as carol")).to_be_visible()
                shot(page, "23-signed-in-after-a-gateway-restart")
                page.get_by_role("button", name="Sign out").click()
                expect(page.get_by_role("link", name="Sign in")).to_be_visible()
                assert not [c for c in page.context.cookies() if c["name"] == "kuberde-session"]

            with gateway_process(tmp_path, provider, port) as gateway:
                page.context.add_cookies([cookie])  # the signed-out handle, replayed
                page.goto(gateway + "/")
                expect(page.get_by_role("link", name="Sign in")).to_be_visible()
            stored = b"".join(path.read_bytes() for path in tmp_path.glob("browser-sessions.db*"))
            assert stored and cookie["value"].encode() not in stored
        finally:
            browser.close()
