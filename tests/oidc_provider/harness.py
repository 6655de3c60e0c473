"""Start the real `oidc-provider` (server.mjs) and play a user's browser against it.

`OidcProviderProcess` runs the Node.js provider on a free loopback port; `restart()` keeps
the port and generates a new signing key (a key rotation). `Browser` submits HTML forms the
way a person would, so device-flow approvals go through the provider's own pages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp

from kuberde.testing.processes import reap

HERE = Path(__file__).resolve().parent
SERVER_SCRIPT = HERE / "server.mjs"
START_TIMEOUT = 30.0
REQUEST_TIMEOUT = 10.0
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
CLI_CLIENT_ID = "kuberde-cli"


def require_node() -> str:
    """The `node` binary, failing (not skipping) with the fix when the harness is missing."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("Node.js is required for the OIDC provider tests (apt install nodejs)")
    if not (HERE / "node_modules" / "oidc-provider").is_dir():
        raise RuntimeError(f"oidc-provider is not installed: run `npm ci --prefix {HERE}`")
    return node


class OidcProviderProcess:
    """One Node.js process serving a provider at `issuer`."""

    def __init__(self, config_file: Path, log_file: Path) -> None:
        self._config_file = config_file
        self._log_file = log_file
        self._process: asyncio.subprocess.Process | None = None
        self.issuer = ""
        self.port = 0

    async def start(self) -> None:
        config = json.loads(self._config_file.read_text())
        config["port"] = self.port
        self._config_file.write_text(json.dumps(config))
        with self._log_file.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                require_node(),
                str(SERVER_SCRIPT),
                str(self._config_file),
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=HERE,
            )
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), START_TIMEOUT)
        if not line:
            raise RuntimeError(f"oidc-provider exited; see {self._log_file}")
        self.issuer = json.loads(line)["issuer"]
        self.port = int(self.issuer.rsplit(":", 1)[1])

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10.0)
        except TimeoutError:
            await reap(process)

    async def restart(self) -> None:
        """Same port and issuer, a newly generated signing key."""
        await self.stop()
        await self.start()


@contextlib.asynccontextmanager
async def running_provider(
    directory: Path,
    *,
    access_token_ttl: int = 300,
    admins: tuple[str, ...] = (),
    agents: Mapping[str, Mapping[str, str]] | None = None,
    name: str = "provider",
) -> AsyncIterator[OidcProviderProcess]:
    config_file = directory / f"{name}.json"
    config_file.write_text(
        json.dumps(
            {"accessTokenTtl": access_token_ttl, "admins": list(admins), "agents": agents or {}}
        )
    )
    provider = OidcProviderProcess(config_file, directory / f"{name}.log")
    await provider.start()
    try:
        yield provider
    finally:
        await provider.stop()


# ---- a scripted browser ----------------------------------------------------------------------


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._current: Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {key: value or "" for key, value in attrs}
        if tag == "form":
            self._current = Form(attributes.get("action", ""), attributes.get("method", "get"))
            self.forms.append(self._current)
        elif tag == "input" and self._current is not None and attributes.get("name"):
            self._current.fields[attributes["name"]] = attributes.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def forms_of(page: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(page)
    return parser.forms


@dataclass
class Page:
    url: str
    status: int
    text: str


class Browser:
    """Follows redirects and submits each page's first POST form, filling named fields."""

    def __init__(self, source: str | None = None) -> None:
        """`source`: the local address to connect from (127.0.0.0/8 has many on Linux)."""
        # unsafe=True: keep cookies for IP-address hosts such as 127.0.0.1.
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=(source, 0) if source else None),
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        )

    async def close(self) -> None:
        await self.http.close()

    async def get(self, url: str) -> Page:
        async with self.http.get(url) as response:
            return Page(str(response.url), response.status, await response.text())

    async def submit(self, page: Page, values: Mapping[str, str]) -> Page:
        posts = [form for form in forms_of(page.text) if form.method.lower() == "post"]
        if not posts:
            raise AssertionError(f"no form to submit on {page.url}: {page.text[:300]!r}")
        form = posts[0]
        data = dict(form.fields)
        data.update({key: value for key, value in values.items() if key in data or key in values})
        async with self.http.post(urljoin(page.url, form.action), data=data) as response:
            return Page(str(response.url), response.status, await response.text())

    async def complete(
        self, url: str, values: Mapping[str, str], *, done: str, max_steps: int = 10
    ) -> Page:
        """Submit forms from `url` on until a page contains `done`."""
        page = await self.get(url)
        for _ in range(max_steps):
            if done in page.text:
                return page
            page = await self.submit(page, values)
        raise AssertionError(f"{done!r} not reached; last page {page.url}: {page.text[:300]!r}")


async def approve_on_provider(verification_uri_complete: str, username: str) -> None:
    """Sign in as `username` on the provider's pages and confirm the device."""
    browser = Browser()
    try:
        await asyncio.wait_for(
            browser.complete(
                verification_uri_complete,
                {"login": username, "password": "any"},
                done="Sign-in Success",
            ),
            REQUEST_TIMEOUT * 4,
        )
    finally:
        await browser.close()


async def post_form(
    http: aiohttp.ClientSession, url: str, data: Mapping[str, str], **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    async with asyncio.timeout(REQUEST_TIMEOUT), http.post(url, data=data, **kwargs) as response:
        body = await response.text()
        return response.status, json.loads(body) if body else {}


async def discover(http: aiohttp.ClientSession, issuer: str) -> dict[str, Any]:
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    async with asyncio.timeout(REQUEST_TIMEOUT), http.get(url) as response:
        assert response.status == 200, response.status
        document: dict[str, Any] = await response.json()
        return document


async def device_login(
    http: aiohttp.ClientSession,
    issuer: str,
    username: str,
    *,
    scope: str = "openid offline_access",
) -> dict[str, Any]:
    """A whole RFC 8628 sign-in against the provider, approved through its pages."""
    metadata = await discover(http, issuer)
    status, started = await post_form(
        http,
        metadata["device_authorization_endpoint"],
        {"client_id": CLI_CLIENT_ID, "scope": scope},
    )
    assert status == 200, started
    poll = {
        "grant_type": DEVICE_CODE_GRANT,
        "device_code": started["device_code"],
        "client_id": CLI_CLIENT_ID,
    }
    status, pending = await post_form(
        http,
        metadata["token_endpoint"],
        poll,
    )
    assert (status, pending["error"]) == (400, "authorization_pending"), pending
    await approve_on_provider(started["verification_uri_complete"], username)
    status, tokens = await post_form(
        http,
        metadata["token_endpoint"],
        poll,
    )
    assert status == 200, tokens
    return tokens
