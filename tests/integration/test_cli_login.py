"""`kuberde login/logout/whoami` and token renewal, on real sockets.

The last tests run the CLI against the real provider (npm `oidc-provider`, started from
tests/oidc_provider) with approvals made on its own pages. The others use `IssuerPeer`, a
scriptable standards counterpart for what a real provider will not do on request: answer
`slow_down`, `expired_token` or `access_denied` at a chosen poll, or stop accepting a token
at the gateway. It plays an OAuth 2.0 / OIDC issuer (discovery, RFC 8628 device grant,
authorization code + PKCE S256, refresh with rotation, RFC 7009 revocation, path-prefixed
like a Keycloak realm) and a gateway that names it at `/api/auth/config` and accepts at
`/connect` and `/api/workspaces` only access tokens the issuer considers live. PKCE is
checked and codes and rotated refresh tokens are single-use, as the RFCs require.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import stat
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp import WSMsgType, web
from cryptography.hazmat.primitives.asymmetric import ec

from kuberde.cli.config import CliConfig, ClientSettings, load, save
from kuberde.cli.login import (
    Credentials,
    DeviceAuthorization,
    LoginError,
    LoginSession,
    browser_login,
    device_login,
    discover,
    http_session,
    refresh_grant,
    stored_session,
    unverified_claims,
    with_login,
)
from kuberde.testing.processes import reap
from tests.oidc_provider.harness import (
    Browser,
    OidcProviderProcess,
    approve_on_provider,
    running_provider,
)

CLIENT_ID = "kuberde-cli"
REALM = "/realms/kuberde"
STEP = 30.0  # seconds any single step may take before the test gives up

CLI_SCRIPT = """\
import typer

from kuberde.cli import auth_commands, commands, workspaces

app = typer.Typer()
auth_commands.register(app)
commands.register(app)
workspaces.register(app)
app()
"""

FAKE_BROWSER = """\
import json, sys, urllib.request

with open(sys.argv[1], "a") as log:
    log.write(json.dumps(sys.argv[2:]) + "\\n")
urllib.request.urlopen(sys.argv[2], timeout=20).read()
"""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class _Device:
    user_code: str
    status: str = "pending"
    user: str | None = None


@dataclass
class IssuerPeer:
    access_lifetime: int = 3600
    interval: int = 1
    device_lifetime: int = 600
    browser_user: str = "alice"
    #: False: the gateway refuses access tokens issued from now on (say, a wrong audience).
    gateway_accepts_new: bool = True
    #: OAuth errors the token endpoint answers to device polls before the real answer.
    poll_script: list[str] = field(default_factory=list)
    port: int = 0
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    devices: dict[str, _Device] = field(default_factory=dict)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    live_access: dict[str, str] = field(default_factory=dict)
    live_refresh: dict[str, str] = field(default_factory=dict)
    issued: list[str] = field(default_factory=list)
    grants: list[str] = field(default_factory=list)
    revocations: list[dict[str, str]] = field(default_factory=list)
    seen_urls: list[str] = field(default_factory=list)
    gateway_auth: list[str | None] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return self.url + REALM

    async def start(self) -> None:
        app = web.Application(middlewares=[self._record])
        app.router.add_get(REALM + "/.well-known/openid-configuration", self.discovery)
        app.router.add_post(REALM + "/device", self.device_authorization)
        app.router.add_post(REALM + "/token", self.token)
        app.router.add_get(REALM + "/authorize", self.authorize)
        app.router.add_post(REALM + "/revoke", self.revoke)
        app.router.add_get("/api/auth/config", self.auth_config)
        app.router.add_get("/api/workspaces", self.workspaces)
        app.router.add_get("/connect/{agent}", self.connect)
        self._runner, self.port = await _serve(app)

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.seen_urls.append(request.path_qs)
        response: web.StreamResponse = await handler(request)
        return response

    # ---- scripting ----

    def approve(self, user_code: str, user: str = "alice") -> None:
        device = next(d for d in self.devices.values() if d.user_code == user_code)
        device.status, device.user = "approved", user

    def deny(self, user_code: str) -> None:
        next(d for d in self.devices.values() if d.user_code == user_code).status = "denied"

    def expire_access(self) -> None:
        """The gateway stops accepting every access token issued so far."""
        self.live_access.clear()

    def revoke_refresh(self) -> None:
        self.live_refresh.clear()

    # ---- the issuer ----

    def _issue(self, user: str) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": f"id-{user}",
            "aud": "kuberde",
            "azp": CLIENT_ID,
            "preferred_username": user,
            "realm_access": {"roles": ["admin"] if user == "root" else ["user"]},
            "iat": now,
            "exp": now + self.access_lifetime,
            "jti": secrets.token_urlsafe(8),
        }
        access = jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": "k1"})
        refresh = secrets.token_urlsafe(32)
        if self.gateway_accepts_new:
            self.live_access[access] = user
        self.live_refresh[refresh] = user
        self.issued += [access, refresh]
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.access_lifetime,
            "refresh_token": refresh,
            "scope": "openid profile offline_access",
        }

    async def discovery(self, request: web.Request) -> web.Response:
        base = self.issuer
        return web.json_response(
            {
                "issuer": base,
                "authorization_endpoint": base + "/authorize",
                "token_endpoint": base + "/token",
                "device_authorization_endpoint": base + "/device",
                "revocation_endpoint": base + "/revoke",
                "jwks_uri": base + "/jwks",
                "code_challenge_methods_supported": ["S256"],
                "grant_types_supported": [
                    "authorization_code",
                    "refresh_token",
                    "urn:ietf:params:oauth:grant-type:device_code",
                ],
            }
        )

    @staticmethod
    def _error(error: str, status: int = 400) -> web.Response:
        return web.json_response(
            {"error": error, "error_description": f"peer: {error}"}, status=status
        )

    async def device_authorization(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("client_id") != CLIENT_ID:
            return self._error("invalid_client", 401)
        device_code = secrets.token_urlsafe(24)
        user_code = "-".join(secrets.token_hex(2).upper() for _ in range(2))
        self.devices[device_code] = _Device(user_code)
        verification = self.issuer + "/device"
        return web.json_response(
            {
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": verification,
                "verification_uri_complete": verification
                + "?"
                + urlencode({"user_code": user_code}),
                "expires_in": self.device_lifetime,
                "interval": self.interval,
            }
        )

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        grant = form.get("grant_type", "")
        self.grants.append(grant)
        if form.get("client_id") != CLIENT_ID:
            return self._error("invalid_client", 401)
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            device = self.devices.get(form.get("device_code", ""))
            if device is None:
                return self._error("invalid_grant")
            if self.poll_script:
                return self._error(self.poll_script.pop(0))
            if device.status == "pending":
                return self._error("authorization_pending")
            if device.status == "denied":
                return self._error("access_denied")
            del self.devices[form["device_code"]]
            assert device.user is not None
            return web.json_response(self._issue(device.user))
        if grant == "authorization_code":
            code = self.codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "")
            if (
                code is None
                or code["redirect_uri"] != form.get("redirect_uri")
                or _b64(hashlib.sha256(verifier.encode()).digest()) != code["challenge"]
            ):
                return self._error("invalid_grant")
            return web.json_response(self._issue(code["user"]))
        if grant == "refresh_token":
            user = self.live_refresh.pop(form.get("refresh_token", ""), None)
            if user is None:
                return self._error("invalid_grant")
            return web.json_response(self._issue(user))
        return self._error("unsupported_grant_type")

    async def authorize(self, request: web.Request) -> web.Response:
        query = request.query
        redirect = query.get("redirect_uri", "")
        if (
            query.get("response_type") != "code"
            or query.get("client_id") != CLIENT_ID
            or query.get("code_challenge_method") != "S256"
            or not query.get("code_challenge")
            or not redirect.startswith("http://127.0.0.1:")
        ):
            return web.Response(status=400, text="bad authorization request")
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "user": self.browser_user,
            "challenge": query["code_challenge"],
            "redirect_uri": redirect,
        }
        params = {"code": code, "state": query.get("state", ""), "iss": self.issuer}
        raise web.HTTPFound(redirect + "?" + urlencode(params))

    async def revoke(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.revocations.append(form)
        self.live_refresh.pop(form.get("token", ""), None)
        return web.Response(status=200)

    # ---- the gateway ----

    async def auth_config(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"issuer": self.issuer, "client_id": CLIENT_ID, "audience": "kuberde"}
        )

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization")
        self.gateway_auth.append(header)
        scheme, _, token = (header or "").partition(" ")
        return scheme == "Bearer" and token in self.live_access

    async def workspaces(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "token expired"}, status=401)
        return web.json_response({"workspaces": []})

    async def connect(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.json_response({"error": "token expired"}, status=401)
        return await _echo(request)


async def _echo(request: web.Request) -> web.WebSocketResponse:
    """The workspace end of `/connect` (docs/protocol.md): `connected`, then an echo."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str('{"event":"connected"}')
    async for message in ws:
        if message.type is WSMsgType.BINARY:
            await ws.send_bytes(message.data)
        elif message.type is WSMsgType.TEXT and json.loads(message.data) == {"event": "eof"}:
            await ws.send_str('{"event":"eof"}')
            await ws.close()
    return ws


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    return runner, server.sockets[0].getsockname()[1]


@pytest.fixture
async def peer() -> AsyncIterator[IssuerPeer]:
    issuer = IssuerPeer()
    await issuer.start()
    yield issuer
    with contextlib.suppress(AssertionError, RuntimeError):
        await issuer.stop()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return tmp_path / "kuberde" / "config.json"


@pytest.fixture
def cli(tmp_path: Path) -> list[str]:
    script = tmp_path / "kuberde_cli.py"
    script.write_text(CLI_SCRIPT)
    return [sys.executable, str(script)]


@pytest.fixture
def env(config_file: Path) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("KUBERDE_")}
    values.pop("BROWSER", None)
    values["KUBERDE_CONFIG"] = str(config_file)
    return values


@dataclass
class Ran:
    code: int
    out: str
    err: str


async def _run(argv: list[str], env: dict[str, str], stdin: bytes = b"") -> Ran:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), STEP)
    finally:
        await reap(proc)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


async def _login_by_device(
    cli: list[str], env: dict[str, str], peer: IssuerPeer, *extra: str
) -> Ran:
    """Run `kuberde login`, read the code it shows and approve it as alice in the peer."""
    proc = await asyncio.create_subprocess_exec(
        *cli,
        "login",
        "--server",
        peer.url,
        *extra,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    shown = ""
    try:
        while (match := re.search(r"enter code (\S+)", shown)) is None:
            line = await asyncio.wait_for(proc.stderr.readline(), STEP)
            assert line, f"login ended before showing a code: {shown}"
            shown += line.decode()
        peer.approve(match.group(1), "alice")
        out, err = await asyncio.wait_for(proc.communicate(), STEP)
    finally:
        await reap(proc)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), shown + err.decode())


def _assert_no_tokens(peer: IssuerPeer, *texts: str) -> None:
    for token in peer.issued:
        for text in texts:
            assert token not in text
        for url in peer.seen_urls:
            assert token not in url


def _store_login(peer: IssuerPeer, path: Path, user: str = "alice") -> dict[str, Any]:
    """A login as `kuberde login` leaves it, with tokens the peer issued directly."""
    answer = peer._issue(user)
    session = LoginSession(
        server=peer.url,
        issuer=peer.issuer,
        client_id=CLIENT_ID,
        subject=f"id-{user}",
        refresh_token=answer["refresh_token"],
        expires_at=time.time() + answer["expires_in"],
    )
    save(
        with_login(
            CliConfig(extra={"ssh": {"known_hosts": "/k"}}), session, answer["access_token"]
        ),
        path,
    )
    return answer


# ---- login ---------------------------------------------------------------------------------


async def test_device_login_then_whoami_and_connect(cli, env, peer, config_file):
    ran = await _login_by_device(cli, env, peer)
    assert ran.code == 0, ran.err
    assert ran.out == ""
    assert f"To sign in, open {peer.issuer}/device and enter code" in ran.err
    assert f"(or open {peer.issuer}/device?user_code=" in ran.err
    assert f"Logged in to {peer.url} as alice." in ran.err
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    config = load(config_file)
    assert config.server == peer.url
    assert config.token in peer.live_access
    session = stored_session(config)
    assert session is not None
    assert (session.issuer, session.client_id, session.subject) == (
        peer.issuer,
        CLIENT_ID,
        "id-alice",
    )
    assert session.refresh_token in peer.live_refresh
    assert session.expires_at is not None and session.expires_at > time.time() + 3000

    who = await _run([*cli, "whoami"], env)
    assert who.code == 0, who.err
    lines = dict(line.split(":", 1) for line in who.out.splitlines())
    assert {k: v.strip() for k, v in lines.items() if k != "expires"} == {
        "user": "alice",
        "admin": "no",
        "issuer": peer.issuer,
        "server": peer.url,
    }
    assert re.fullmatch(r" *\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in (59m\d+s|1h)\)", lines["expires"])

    connected = await _run([*cli, "connect", "echo"], env, b"hello through the login")
    assert (connected.code, connected.out) == (0, "hello through the login"), connected.err
    assert peer.gateway_auth[-1] == f"Bearer {config.token}"
    _assert_no_tokens(peer, ran.out, ran.err, who.out, who.err, connected.err)


async def test_login_with_a_token_replaces_the_stored_login(cli, env, peer, config_file):
    _store_login(peer, config_file, "alice")
    given = peer._issue("bob")["access_token"]
    saved = await _run([*cli, "login", "--server", peer.url, "--token", given], env)
    assert saved.code == 0, saved.err
    assert saved.err == f"Saved the token for {peer.url} in {config_file}.\n"
    config = load(config_file)
    assert (config.server, config.token, stored_session(config)) == (peer.url, given, None)
    assert config.extra == {"ssh": {"known_hosts": "/k"}}

    who = await _run([*cli, "whoami", "--log-level", "debug"], env)
    assert who.code == 0, who.err
    assert "user:    bob" in who.out.splitlines()
    other = peer._issue("carol")["access_token"]
    asked = await _run([*cli, "whoami", "--token", other], env)
    assert "user:    carol" in asked.out.splitlines(), asked.err
    _assert_no_tokens(peer, saved.out, saved.err, who.out, who.err, asked.out, asked.err)


async def test_device_login_refused_by_the_user(cli, env, peer, config_file):
    peer.poll_script = ["authorization_pending"]
    proc = await asyncio.create_subprocess_exec(
        *cli,
        "login",
        "--server",
        peer.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stderr.readline(), STEP)
    match = re.search(r"enter code (\S+)", line.decode())
    assert match is not None
    peer.deny(match.group(1))
    _, err = await asyncio.wait_for(proc.communicate(), STEP)
    assert proc.returncode == 1
    assert "kuberde: the sign-in was denied" in err.decode()
    assert not config_file.exists()


async def test_device_flow_honours_pending_and_slow_down(peer):
    peer.interval = 2
    peer.poll_script = ["authorization_pending", "slow_down", "authorization_pending"]
    slept: list[float] = []
    shown: list[DeviceAuthorization] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    def notify(authorization: DeviceAuthorization) -> None:
        shown.append(authorization)
        peer.approve(authorization.user_code, "alice")

    async with http_session(None) as http:
        metadata = await discover(http, peer.issuer)
        grant = await asyncio.wait_for(
            device_login(http, metadata, CLIENT_ID, "openid", notify=notify, sleep=sleep), STEP
        )
    assert slept == [2, 2, 7, 7]
    assert [g for g in peer.grants if g.endswith("device_code")] == [
        "urn:ietf:params:oauth:grant-type:device_code"
    ] * 4
    assert grant.access_token in peer.live_access
    assert grant.refresh_token in peer.live_refresh
    assert shown[0].interval == 2


@pytest.mark.parametrize(
    ("error", "message"),
    [
        ("access_denied", "the sign-in was denied"),
        ("expired_token", "the code expired before the sign-in was finished"),
        ("invalid_grant", "the token request was refused: invalid_grant (peer: invalid_grant)"),
    ],
)
async def test_device_flow_ends_on_terminal_errors(peer, error, message):
    peer.poll_script = ["authorization_pending", error]

    async def sleep(seconds: float) -> None:
        return None

    async with http_session(None) as http:
        metadata = await discover(http, peer.issuer)
        with pytest.raises(LoginError, match=re.escape(message)):
            await asyncio.wait_for(
                device_login(
                    http, metadata, CLIENT_ID, "openid", notify=lambda a: None, sleep=sleep
                ),
                STEP,
            )


async def test_device_flow_gives_up_when_the_code_expires_unanswered(peer):
    peer.interval, peer.device_lifetime = 3, 10
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    async with http_session(None) as http:
        metadata = await discover(http, peer.issuer)
        with pytest.raises(LoginError, match="the code expired"):
            await asyncio.wait_for(
                device_login(
                    http,
                    metadata,
                    CLIENT_ID,
                    "openid",
                    notify=lambda a: None,
                    sleep=sleep,
                    clock=lambda: now[0],
                ),
                STEP,
            )
    assert peer.grants.count("urn:ietf:params:oauth:grant-type:device_code") == 3


async def test_browser_login_with_pkce_ignores_a_forged_callback(peer):
    opened: list[str] = []

    def open_url(url: str) -> None:
        opened.append(url)
        asyncio.get_running_loop().create_task(_browse(url))

    async def _browse(url: str) -> None:
        redirect = parse_qs(urlsplit(url).query)["redirect_uri"][0]
        async with aiohttp.ClientSession() as browser:
            async with browser.get(redirect + "?code=forged&state=wrong") as forged:
                assert forged.status == 400
            async with browser.get(url) as reply:
                assert reply.status == 200
                assert "Signed in to KubeRDE" in await reply.text()

    async with http_session(None) as http:
        metadata = await discover(http, peer.issuer)
        grant = await asyncio.wait_for(
            browser_login(http, metadata, CLIENT_ID, "openid offline_access", open_url=open_url),
            STEP,
        )
    assert grant.access_token in peer.live_access
    query = parse_qs(urlsplit(opened[0]).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["prompt"] == ["consent"]
    assert "code_verifier" not in query
    assert peer.grants == ["authorization_code"]


async def test_browser_login_reports_an_error_redirect(peer):
    def open_url(url: str) -> None:
        query = parse_qs(urlsplit(url).query)
        target = (
            query["redirect_uri"][0]
            + "?"
            + urlencode(
                {"error": "access_denied", "error_description": "nope", "state": query["state"][0]}
            )
        )
        asyncio.get_running_loop().create_task(_get(target))

    async def _get(url: str) -> None:
        async with aiohttp.ClientSession() as browser, browser.get(url) as reply:
            await reply.read()

    async with http_session(None) as http:
        metadata = await discover(http, peer.issuer)
        with pytest.raises(LoginError, match=re.escape("access_denied (nope)")):
            await asyncio.wait_for(
                browser_login(http, metadata, CLIENT_ID, "openid", open_url=open_url), STEP
            )
    assert peer.grants == []


async def test_browser_login_cli_no_open_prints_the_url(cli, env, peer, config_file):
    proc = await asyncio.create_subprocess_exec(
        *cli,
        "login",
        "--server",
        peer.url,
        "--browser",
        "--no-open",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    shown = ""
    while (match := re.search(r"^  (http://\S+)$", shown, re.M)) is None:
        line = await asyncio.wait_for(proc.stderr.readline(), STEP)
        assert line, shown
        shown += line.decode()
    async with aiohttp.ClientSession() as browser, browser.get(match.group(1)) as reply:
        assert reply.status == 200
    out, err = await asyncio.wait_for(proc.communicate(), STEP)
    assert proc.returncode == 0, shown + err.decode()
    assert load(config_file).token in peer.live_access
    _assert_no_tokens(peer, out.decode(), shown, err.decode())


async def test_browser_login_cli_opens_the_browser(cli, env, peer, config_file, tmp_path):
    browser = tmp_path / "browser.py"
    browser.write_text(FAKE_BROWSER)
    argv_log = tmp_path / "browser-argv.jsonl"
    env["BROWSER"] = f"{sys.executable} {browser} {argv_log} %s"
    ran = await _run([*cli, "login", "--server", peer.url, "--browser"], env)
    assert ran.code == 0, ran.err
    assert "Opening a browser to sign in" in ran.err
    assert load(config_file).token in peer.live_access
    argv = argv_log.read_text()
    assert "code_challenge=" in argv
    _assert_no_tokens(peer, ran.out, ran.err, argv)


async def test_login_needs_a_server(cli, env):
    ran = await _run([*cli, "login"], env)
    assert ran.code == 2
    assert "no server: pass --server URL" in ran.err


async def test_login_with_explicit_issuer_skips_the_gateway(cli, env, peer, config_file):
    ran = await _login_by_device(cli, env, peer, "--issuer", peer.issuer, "--client-id", CLIENT_ID)
    assert ran.code == 0, ran.err
    assert "/api/auth/config" not in peer.seen_urls


# ---- renewal -------------------------------------------------------------------------------


async def test_refresh_before_expiry_rotates_and_persists(peer, config_file):
    peer.access_lifetime = 30  # less than the 60 s margin: every use renews it
    first = _store_login(peer, config_file)
    credentials = Credentials(ClientSettings(peer.url, first["access_token"]), path=config_file)
    settings = await asyncio.wait_for(credentials.fresh(), STEP)
    assert peer.grants == ["refresh_token"]
    config = load(config_file)
    session = stored_session(config)
    assert session is not None
    assert settings.token == config.token != first["access_token"]
    assert config.token in peer.live_access
    assert session.refresh_token in peer.live_refresh
    assert session.refresh_token != first["refresh_token"]
    assert first["refresh_token"] not in peer.live_refresh  # rotated: the old one is spent
    assert config.extra["ssh"] == {"known_hosts": "/k"}
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600


async def test_a_token_with_time_left_is_not_refreshed(peer, config_file):
    first = _store_login(peer, config_file)
    credentials = Credentials(ClientSettings(peer.url, first["access_token"]), path=config_file)
    assert (await credentials.fresh()).token == first["access_token"]
    assert peer.grants == []


async def test_concurrent_renewals_use_the_refresh_token_once(peer, config_file):
    """Two processes (two Credentials) hit 401 at once: one refresh, both get its token."""
    first = _store_login(peer, config_file)
    rejected = ClientSettings(peer.url, first["access_token"])
    renewed = await asyncio.wait_for(
        asyncio.gather(
            Credentials(rejected, path=config_file).renew(rejected),
            Credentials(rejected, path=config_file).renew(rejected),
        ),
        STEP,
    )
    assert peer.grants == ["refresh_token"]
    assert renewed[0] == renewed[1] == ClientSettings(peer.url, load(config_file).token or "")


async def test_connect_after_401_refreshes_once_and_retries(cli, env, peer, config_file):
    first = _store_login(peer, config_file)
    peer.expire_access()
    ran = await _run([*cli, "connect", "echo"], env, b"after renewal")
    assert (ran.code, ran.out) == (0, "after renewal"), ran.err
    assert peer.grants == ["refresh_token"]
    assert peer.gateway_auth[0] == f"Bearer {first['access_token']}"
    assert peer.gateway_auth[1] == f"Bearer {load(config_file).token}"
    assert len(peer.gateway_auth) == 2
    _assert_no_tokens(peer, ran.out, ran.err)


async def test_workspace_command_after_401_refreshes_and_retries(cli, env, peer, config_file):
    _store_login(peer, config_file)
    peer.expire_access()
    ran = await _run([*cli, "ls"], env)
    assert ran.code == 0, ran.err
    assert "No workspaces." in ran.err
    assert peer.grants == ["refresh_token"]
    assert len(peer.gateway_auth) == 2


async def test_token_in_environment_of_the_same_login_is_renewed(cli, env, peer, config_file):
    """`kuberde ssh` hands the ProxyCommand the token in $KUBERDE_TOKEN."""
    first = _store_login(peer, config_file)
    peer.expire_access()
    env["KUBERDE_TOKEN"] = first["access_token"]
    env["KUBERDE_SERVER"] = peer.url
    ran = await _run([*cli, "connect", "echo"], env, b"ssh bytes")
    assert (ran.code, ran.out) == (0, "ssh bytes"), ran.err
    assert peer.grants == ["refresh_token"]


@pytest.mark.parametrize("command", [["connect", "echo"], ["ls"]])
async def test_failed_renewal_says_to_log_in(cli, env, peer, config_file, command):
    _store_login(peer, config_file)
    peer.expire_access()
    peer.revoke_refresh()
    ran = await _run([*cli, *command], env, b"x")
    assert ran.code == 1
    assert "could not renew the login: the refresh request was refused: invalid_grant" in ran.err
    assert "run `kuberde login`" in ran.err
    assert peer.grants == ["refresh_token"]
    assert len(peer.gateway_auth) == 1
    _assert_no_tokens(peer, ran.out, ran.err)


async def test_a_refreshed_token_the_gateway_still_refuses_says_to_log_in(
    cli, env, peer, config_file
):
    _store_login(peer, config_file)
    peer.expire_access()
    peer.gateway_accepts_new = False
    ran = await _run([*cli, "connect", "echo"], env, b"x")
    assert ran.code == 1
    assert "not authorized: token expired — run `kuberde login`" in ran.err
    assert peer.grants == ["refresh_token"]
    assert len(peer.gateway_auth) == 2


# ---- logout ------------------------------------------------------------------------------


async def test_logout_revokes_and_forgets_the_tokens(cli, env, peer, config_file):
    first = _store_login(peer, config_file)
    ran = await _run([*cli, "logout"], env)
    assert ran.code == 0, ran.err
    assert f"Logged out of {peer.url}." in ran.err
    assert peer.revocations == [
        {
            "token": first["refresh_token"],
            "token_type_hint": "refresh_token",
            "client_id": CLIENT_ID,
        }
    ]
    assert first["refresh_token"] not in peer.live_refresh
    raw = config_file.read_text()
    assert first["access_token"] not in raw and first["refresh_token"] not in raw
    config = load(config_file)
    assert config.token is None
    assert stored_session(config) is None
    assert config.extra["ssh"] == {"known_hosts": "/k"}
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600

    again = await _run([*cli, "logout"], env)
    assert again.code == 0
    assert f"Not logged in to {peer.url}." in again.err
    assert len(peer.revocations) == 1

    who = await _run([*cli, "whoami"], env)
    assert who.code == 2
    assert "not logged in" in who.err
    _assert_no_tokens(peer, ran.err, again.err, who.err)


async def test_whoami_shows_an_expired_token_as_renewable(cli, env, peer, config_file):
    peer.access_lifetime = -120
    _store_login(peer, config_file, user="root")
    ran = await _run([*cli, "whoami"], env)
    assert ran.code == 0, ran.err
    assert "admin:   yes" in ran.out
    assert "(expired 2m" in ran.out and "renewed on the next connection" in ran.out
    assert peer.grants == []


# ---- against the real provider (npm oidc-provider, tests/oidc_provider) ----------------------


class ProviderGateway:
    """A gateway in front of the real provider: names it at `/api/auth/config` and verifies
    access tokens with its JWKS (issuer, audience `kuberde`, expiry) at `/connect`.
    `refuse(jti)` makes it answer 401 to one token, as it would once that token expired."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self.refused: set[str] = set()
        self.accepted: list[dict[str, Any]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/auth/config", self.auth_config)
        app.router.add_get("/connect/{agent}", self.connect)
        self._runner, self.port = await _serve(app)

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def auth_config(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"issuer": self.issuer, "client_id": CLIENT_ID, "audience": "kuberde"}
        )

    async def _claims(self, token: str) -> dict[str, Any] | None:
        async with aiohttp.ClientSession() as http, http.get(self.issuer + "/jwks") as reply:
            keys = jwt.PyJWKSet.from_dict(await reply.json())
        try:
            key = keys[jwt.get_unverified_header(token)["kid"]]
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=["ES256"], audience="kuberde", issuer=self.issuer
            )
        except (jwt.InvalidTokenError, KeyError):
            return None
        return None if claims["jti"] in self.refused else claims

    async def connect(self, request: web.Request) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        claims = await self._claims(token) if scheme == "Bearer" else None
        if claims is None:
            return web.json_response({"error": "token expired"}, status=401)
        self.accepted.append(claims)
        return await _echo(request)


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[OidcProviderProcess]:
    async with running_provider(tmp_path, admins=("root",)) as running:
        yield running


@pytest.fixture
async def provider_gateway(provider: OidcProviderProcess) -> AsyncIterator[ProviderGateway]:
    gateway = ProviderGateway(provider.issuer)
    await gateway.start()
    yield gateway
    with contextlib.suppress(AssertionError, RuntimeError):
        await gateway.stop()


async def test_real_provider_device_login_refresh_after_401_and_logout(
    cli, env, provider, provider_gateway, config_file
):
    proc = await asyncio.create_subprocess_exec(
        *cli,
        "login",
        "--server",
        provider_gateway.url,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    shown = ""
    try:
        while (match := re.search(r"\(or open (\S+)\)", shown)) is None:
            line = await asyncio.wait_for(proc.stderr.readline(), STEP)
            assert line, shown
            shown += line.decode()
        await approve_on_provider(match.group(1), "alice")
        out, err = await asyncio.wait_for(proc.communicate(), STEP)
    finally:
        await reap(proc)
    assert proc.returncode == 0, shown + err.decode()
    assert f"Logged in to {provider_gateway.url} as alice." in err.decode()
    first = load(config_file)
    session = stored_session(first)
    assert session is not None and session.refresh_token is not None
    assert (session.issuer, session.subject) == (provider.issuer, "alice")
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600

    who = await _run([*cli, "whoami"], env)
    assert who.code == 0, who.err
    assert "user:    alice\nadmin:   no\n" in who.out

    # The gateway now refuses the first token: the CLI refreshes once and gets through.
    first_claims = unverified_claims(first.token or "")
    assert first_claims is not None
    provider_gateway.refused.add(first_claims["jti"])
    connected = await _run([*cli, "connect", "echo"], env, b"via the real provider")
    assert (connected.code, connected.out) == (0, "via the real provider"), connected.err
    renewed = load(config_file)
    renewed_session = stored_session(renewed)
    assert renewed_session is not None
    assert renewed.token != first.token
    assert renewed_session.refresh_token != session.refresh_token  # rotated, and persisted
    assert provider_gateway.accepted[-1]["sub"] == "alice"

    # Logout revokes at the provider: the stored refresh token no longer works anywhere.
    out_ran = await _run([*cli, "logout"], env)
    assert out_ran.code == 0, out_ran.err
    assert load(config_file).token is None
    async with http_session(None) as http:
        metadata = await discover(http, provider.issuer)
        assert renewed_session.refresh_token is not None
        with pytest.raises(LoginError, match="invalid_grant"):
            await refresh_grant(http, metadata, CLIENT_ID, renewed_session.refresh_token)
    texts = [shown, out.decode(), err.decode(), who.out, connected.out, connected.err]
    for token in (first.token, renewed.token, session.refresh_token):
        assert token is not None
        assert all(token not in text for text in [*texts, out_ran.out, out_ran.err])


async def test_real_provider_browser_login_with_pkce(cli, env, provider, provider_gateway):
    proc = await asyncio.create_subprocess_exec(
        *cli,
        "login",
        "--server",
        provider_gateway.url,
        "--browser",
        "--no-open",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    shown = ""
    browser = Browser()
    try:
        while (match := re.search(r"^  (http://\S+)$", shown, re.M)) is None:
            line = await asyncio.wait_for(proc.stderr.readline(), STEP)
            assert line, shown
            shown += line.decode()
        page = await asyncio.wait_for(
            browser.complete(
                match.group(1), {"login": "root", "password": "any"}, done="Signed in to KubeRDE"
            ),
            STEP,
        )
        assert page.url.startswith("http://127.0.0.1:")
        _, err = await asyncio.wait_for(proc.communicate(), STEP)
    finally:
        await browser.close()
        await reap(proc)
    assert proc.returncode == 0, shown + err.decode()
    who = await _run([*cli, "whoami"], env)
    assert "user:    root\nadmin:   yes\n" in who.out
