"""Browser sign-in against a real external OIDC provider (npm `oidc-provider`), as with
Keycloak: `kuberde server --oidc-issuer`, authorization code + PKCE, then the dashboard."""

from __future__ import annotations

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


@pytest.fixture
def gateway(tmp_path: Path, provider: str) -> Iterator[str]:
    port = free_port()
    log = tmp_path / "gateway.log"
    with log.open("wb") as sink:
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
        wait_until(lambda: "listening on" in log.read_text(), "the gateway to listen")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        sys.stderr.write(log.read_text()[-4000:])


def test_sign_in_through_an_external_provider_and_out_again(gateway: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 860})
            page.set_default_timeout(UI_TIMEOUT)
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
            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_role("link", name="Sign in")).to_be_visible()
            assert not [c for c in page.context.cookies() if c["name"] == "kuberde-session"]
        finally:
            browser.close()
