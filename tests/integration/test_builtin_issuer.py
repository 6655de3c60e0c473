"""The built-in issuer of `kuberde up`, driven over HTTP like any OAuth client would.

The gateway here is wired as `kuberde up` wires it: users verified by `OidcProvider` pointed
at the gateway's own URL (so every token goes through discovery and JWKS over loopback),
agents and `/mgmt` by the local key. Sign-ins are approved through the HTML pages with a
scripted browser, or with a bearer token at `/oauth/device/approve`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp import web

from kuberde.auth import LocalTokenVerifier, SigningKey, TokenIssuer, TokenVerifier
from kuberde.auth.issuer import (
    BUILTIN_CLIENT_ID,
    BUILTIN_USER_CLAIMS,
    DEFAULT_SCOPE,
    DEVICE_CODE_GRANT,
    REFRESH_TOKENS_FILE,
    BuiltinIssuer,
    IssuerSettings,
)
from kuberde.auth.issuer.lockout import SignInLimits
from kuberde.auth.oidc import CompositeVerifier, OidcProvider, OidcUserVerifier, auth_config_route
from kuberde.auth.users import UsersFile, set_user
from kuberde.gateway.server import ListenAddress, bind_socket, socket_url, start_site
from tests.oidc_provider.gateway import GatewayUnderTest, captured_logs, running_gateway
from tests.oidc_provider.harness import Browser, Page, forms_of

ALICE_PASSWORD = "alice-correct-horse"
ROOT_PASSWORD = "root-battery-staple"
WAIT = 10.0


class Clock:
    """Wall-clock time plus an offset a test can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Setup:
    gateway: GatewayUnderTest
    issuer: BuiltinIssuer
    clock: Clock
    state_dir: Path
    users_file: Path

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def http(self) -> aiohttp.ClientSession:
        return self.gateway.http

    async def post(
        self, path: str, data: dict[str, str], headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        async with (
            asyncio.timeout(WAIT),
            self.http.post(self.url + path, data=data, headers=headers) as response,
        ):
            assert response.headers.get("Cache-Control") == "no-store"
            return response.status, await response.json()

    async def start_device(self, scope: str | None = None) -> dict[str, Any]:
        data = {"client_id": BUILTIN_CLIENT_ID}
        if scope is not None:
            data["scope"] = scope
        status, body = await self.post("/oauth/device/code", data)
        assert status == 200, body
        return body

    async def poll(self, device_code: str) -> tuple[int, dict[str, Any]]:
        return await self.post(
            "/oauth/token",
            {
                "grant_type": DEVICE_CODE_GRANT,
                "device_code": device_code,
                "client_id": BUILTIN_CLIENT_ID,
            },
        )

    async def refresh(self, refresh_token: str) -> tuple[int, dict[str, Any]]:
        return await self.post(
            "/oauth/token",
            {
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": BUILTIN_CLIENT_ID,
            },
        )

    async def approve_with_password(
        self,
        started: dict[str, Any],
        username: str,
        password: str,
        action: str = "approve",
        source: str | None = None,
    ) -> Page:
        browser = Browser(source=source)
        try:
            page = await browser.get(started["verification_uri_complete"])
            assert page.status == 200
            return await browser.submit(
                page, {"username": username, "password": password, "action": action}
            )
        finally:
            await browser.close()

    async def device_login(self, username: str, password: str) -> dict[str, Any]:
        started = await self.start_device()
        page = await self.approve_with_password(started, username, password)
        assert page.status == 200, page.text
        status, tokens = await self.poll(started["device_code"])
        assert status == 200, tokens
        return tokens


@pytest.fixture(scope="module")
def users_yaml(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The users file's text, hashed once: scrypt is slow on purpose."""
    path = tmp_path_factory.mktemp("users") / "users.yaml"
    set_user(path, "alice", ALICE_PASSWORD)
    set_user(path, "root", ROOT_PASSWORD, admin=True)
    return path.read_text()


@pytest.fixture
async def setup(tmp_path: Path, users_yaml: str) -> AsyncIterator[Setup]:
    async with issuer_setup(tmp_path, users_yaml, IssuerSettings(poll_interval=5)) as running:
        yield running


@contextlib.asynccontextmanager
async def issuer_setup(
    tmp_path: Path, users_yaml: str, settings: IssuerSettings
) -> AsyncIterator[Setup]:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    users_file = state_dir / "users.yaml"
    users_file.write_text(users_yaml)
    users_file.chmod(0o600)
    clock = Clock()
    made: dict[str, Any] = {}

    def verifier(url: str, key: SigningKey) -> TokenVerifier:
        made["users"] = OidcUserVerifier(OidcProvider(url), BUILTIN_USER_CLAIMS)
        local = LocalTokenVerifier.from_signing_key(key)
        return CompositeVerifier(users=[made["users"]], agents=[local], management=[local])

    def routes(url: str, key: SigningKey, _: TokenVerifier) -> Iterable[web.RouteDef]:
        made["issuer"] = BuiltinIssuer(
            url,
            key,
            state_dir,
            users=UsersFile(users_file),
            user_verifier=made["users"],
            settings=settings,
            clock=clock,
        )
        return [*made["issuer"].routes(), auth_config_route(url, BUILTIN_CLIENT_ID, DEFAULT_SCOPE)]

    async with running_gateway(state_dir, verifier, routes=routes) as gateway:
        yield Setup(gateway, made["issuer"], clock, state_dir, users_file)


def secrets_of(tokens: dict[str, Any]) -> list[str]:
    return [
        value
        for key, value in tokens.items()
        if key in {"access_token", "refresh_token", "id_token", "device_code", "code"}
    ]


# ---- discovery ------------------------------------------------------------------------------


async def test_discovery_and_jwks_describe_the_issuer(setup: Setup) -> None:
    async with setup.http.get(setup.url + "/.well-known/openid-configuration") as response:
        document = await response.json()
    assert document["issuer"] == setup.url
    assert document["token_endpoint"] == setup.url + "/oauth/token"
    assert document["device_authorization_endpoint"] == setup.url + "/oauth/device/code"
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert set(document["grant_types_supported"]) == {
        "authorization_code",
        "refresh_token",
        DEVICE_CODE_GRANT,
    }
    async with setup.http.get(document["jwks_uri"]) as response:
        jwks = await response.json()
    assert jwks == {"keys": [setup.gateway.key.public_jwk()]}
    async with setup.http.get(setup.url + "/api/auth/config") as response:
        config = await response.json()
    assert config == {"issuer": setup.url, "client_id": BUILTIN_CLIENT_ID, "scope": DEFAULT_SCOPE}


# ---- the device authorization grant ---------------------------------------------------------


async def test_device_flow_with_a_password_gives_tokens_the_gateway_accepts(
    setup: Setup,
) -> None:
    with captured_logs() as logs:
        started = await setup.start_device()
        assert set(started) >= {
            "device_code",
            "user_code",
            "verification_uri",
            "verification_uri_complete",
            "expires_in",
            "interval",
        }
        assert started["verification_uri"] == setup.url + "/oauth/device"
        assert started["device_code"] not in started["verification_uri_complete"]
        status, pending = await setup.poll(started["device_code"])
        assert (status, pending["error"]) == (400, "authorization_pending")

        page = await setup.approve_with_password(started, "alice", ALICE_PASSWORD)
        assert page.status == 200 and "Signed in as alice" in page.text
        status, tokens = await setup.poll(started["device_code"])
        assert status == 200, tokens
        assert tokens["token_type"] == "Bearer"
        assert tokens["expires_in"] == 3600
        assert set(tokens["scope"].split()) == {"openid", "profile", "offline_access"}
        header = jwt.get_unverified_header(tokens["access_token"])
        assert (header["alg"], header["typ"]) == ("ES256", "at+jwt")
        claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        assert (claims["iss"], claims["aud"], claims["sub"]) == (setup.url, "kuberde", "alice")

        # The device code is spent.
        status, again = await setup.poll(started["device_code"])
        assert (status, again["error"]) == (400, "invalid_grant")

        # The gateway accepts the token, verified through discovery and JWKS of its own URL.
        peer_token = setup.gateway.mint_agent("alice", "dev")
        await setup.gateway.peer(peer_token)
        await setup.gateway.wait_online("user-alice-dev")
        assert await setup.gateway.echo_through("dev", tokens["access_token"]) == b"ping"
    for secret in [*secrets_of(tokens), started["device_code"], peer_token]:
        assert secret not in logs.text


async def test_polling_too_fast_slows_the_client_down(setup: Setup) -> None:
    started = await setup.start_device()
    status, first = await setup.poll(started["device_code"])
    assert first["error"] == "authorization_pending"
    status, second = await setup.poll(started["device_code"])
    assert (status, second["error"]) == (400, "slow_down")
    setup.clock.offset += 10  # the interval is now 10 s; wait it out
    status, third = await setup.poll(started["device_code"])
    assert third["error"] == "authorization_pending"


async def test_an_unapproved_code_expires(setup: Setup) -> None:
    started = await setup.start_device()
    setup.clock.offset += started["expires_in"] + 1
    status, body = await setup.poll(started["device_code"])
    assert (status, body["error"]) == (400, "expired_token")
    page = await setup.approve_with_password(started, "alice", ALICE_PASSWORD)
    assert page.status == 400


async def test_a_denied_sign_in_says_access_denied(setup: Setup) -> None:
    started = await setup.start_device()
    page = await setup.approve_with_password(started, "alice", ALICE_PASSWORD, action="deny")
    assert page.status == 200 and "denied" in page.text
    status, body = await setup.poll(started["device_code"])
    assert (status, body["error"]) == (400, "access_denied")


async def test_a_wrong_password_approves_nothing_and_repeated_failures_lock_out(
    setup: Setup,
) -> None:
    started = await setup.start_device()
    for _ in range(5):
        page = await setup.approve_with_password(started, "alice", "wrong-password")
        assert page.status == 401 and "Wrong username or password" in page.text
    page = await setup.approve_with_password(started, "alice", ALICE_PASSWORD)
    assert page.status == 429 and "too many failed attempts for this name" in page.text
    page = await setup.approve_with_password(started, "nobody", "whatever")
    assert page.status == 401
    _, body = await setup.poll(started["device_code"])
    assert body["error"] == "authorization_pending"
    setup.clock.offset += 301
    page = await setup.approve_with_password(started, "alice", ALICE_PASSWORD)
    assert page.status == 200


async def test_a_token_holder_approves_for_themselves(setup: Setup) -> None:
    owner_token = setup.issuer.mint_access_token("carol", admin=True)
    started = await setup.start_device()
    status, body = await setup.post(
        "/oauth/device/approve",
        {"user_code": started["user_code"]},
        headers={"Authorization": f"Bearer {owner_token}"},
    )
    assert (status, body) == (200, {"approved": True, "user": "carol"})
    status, tokens = await setup.poll(started["device_code"])
    assert status == 200
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert (claims["sub"], claims["roles"]) == ("carol", ["admin"])


async def test_approval_needs_a_valid_user_token(setup: Setup) -> None:
    started = await setup.start_device()
    agent = setup.gateway.mint_agent("alice", "dev")
    local_user = TokenIssuer(setup.gateway.key).mint_user("alice")
    for token in (agent, local_user, "not.a.token"):
        status, body = await setup.post(
            "/oauth/device/approve",
            {"user_code": started["user_code"]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert (status, body["error"]) == (401, "invalid_token")
        assert token not in body["error_description"]
    status, body = await setup.post("/oauth/device/approve", {"user_code": started["user_code"]})
    assert status == 401
    owner = setup.issuer.mint_access_token("carol")
    status, body = await setup.post(
        "/oauth/device/approve",
        {"user_code": "BCDF-GHJK"},
        headers={"Authorization": f"Bearer {owner}"},
    )
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_unknown_clients_and_grant_types_are_refused(setup: Setup) -> None:
    status, body = await setup.post("/oauth/device/code", {"client_id": "someone-else"})
    assert (status, body["error"]) == (401, "invalid_client")
    status, body = await setup.post(
        "/oauth/device/code", {"client_id": BUILTIN_CLIENT_ID, "scope": "openid admin"}
    )
    assert (status, body["error"]) == (400, "invalid_scope")
    status, body = await setup.post(
        "/oauth/token", {"grant_type": "password", "client_id": BUILTIN_CLIENT_ID}
    )
    assert (status, body["error"]) == (400, "unsupported_grant_type")
    status, body = await setup.post(
        "/oauth/token",
        {"grant_type": DEVICE_CODE_GRANT, "device_code": "made-up", "client_id": BUILTIN_CLIENT_ID},
    )
    assert (status, body["error"]) == (400, "invalid_grant")


# ---- refresh tokens ---------------------------------------------------------------------------


async def test_refresh_tokens_rotate_and_a_replay_revokes_the_sign_in(setup: Setup) -> None:
    first = await setup.device_login("alice", ALICE_PASSWORD)
    status, second = await setup.refresh(first["refresh_token"])
    assert status == 200, second
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    await setup.gateway.peer(setup.gateway.mint_agent("alice", "dev"))
    await setup.gateway.wait_online("user-alice-dev")
    assert await setup.gateway.echo_through("dev", second["access_token"]) == b"ping"

    # Presenting the spent token again (a thief or a confused client) ends the sign-in.
    status, replay = await setup.refresh(first["refresh_token"])
    assert (status, replay["error"]) == (400, "invalid_grant")
    status, after = await setup.refresh(second["refresh_token"])
    assert (status, after["error"]) == (400, "invalid_grant")


async def test_refresh_tokens_are_stored_hashed_and_survive_a_restart(setup: Setup) -> None:
    tokens = await setup.device_login("alice", ALICE_PASSWORD)
    stored = (setup.state_dir / REFRESH_TOKENS_FILE).read_text()
    assert tokens["refresh_token"] not in stored
    assert (setup.state_dir / REFRESH_TOKENS_FILE).stat().st_mode & 0o777 == 0o600
    restarted = BuiltinIssuer(
        setup.url,
        setup.gateway.key,
        setup.state_dir,
        users=UsersFile(setup.users_file),
        user_verifier=OidcUserVerifier(OidcProvider(setup.url), BUILTIN_USER_CLAIMS),
    )
    app = web.Application()
    app.router.add_routes(restarted.routes())
    sock = bind_socket(ListenAddress("127.0.0.1", 0))
    runner = await start_site(app, sock, None)
    try:
        async with setup.http.post(
            socket_url(sock, tls=False) + "/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": tokens["refresh_token"],
                "client_id": BUILTIN_CLIENT_ID,
            },
        ) as response:
            assert response.status == 200, await response.text()
    finally:
        await runner.cleanup()


async def test_revocation_ends_the_sign_in(setup: Setup) -> None:
    tokens = await setup.device_login("alice", ALICE_PASSWORD)
    async with setup.http.post(
        setup.url + "/oauth/revoke",
        data={"token": tokens["refresh_token"], "client_id": BUILTIN_CLIENT_ID},
    ) as response:
        assert response.status == 200
    status, body = await setup.refresh(tokens["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_refresh_follows_the_users_file(setup: Setup) -> None:
    tokens = await setup.device_login("alice", ALICE_PASSWORD)
    text = setup.users_file.read_text()
    setup.users_file.write_text(text.replace("admin: false", "admin: true", 1))
    status, promoted = await setup.refresh(tokens["refresh_token"])
    assert status == 200
    claims = jwt.decode(promoted["access_token"], options={"verify_signature": False})
    assert claims["roles"] == ["admin"]
    setup.users_file.write_text("users: {}\n")
    status, body = await setup.refresh(promoted["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")


@pytest.mark.parametrize("change", ["password", "removal"])
async def test_a_token_approved_sign_in_ends_with_a_new_password_or_removal(
    setup: Setup, change: str
) -> None:
    started = await setup.start_device()
    status, _ = await setup.post(
        "/oauth/device/approve",
        {"user_code": started["user_code"]},
        headers={"Authorization": f"Bearer {setup.issuer.mint_access_token('alice')}"},
    )
    assert status == 200
    status, tokens = await setup.poll(started["device_code"])
    assert status == 200
    status, tokens = await setup.refresh(tokens["refresh_token"])
    assert status == 200
    if change == "password":
        set_user(setup.users_file, "alice", "a-new-password")
    else:
        setup.users_file.write_text(setup.users_file.read_text().split("  alice:")[0])
    status, body = await setup.refresh(tokens["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_device_approval_with_a_bare_old_access_token_is_refused(setup: Setup) -> None:
    """A token is proof of a session, not of the person: only a fresh one, or the password."""
    token = setup.issuer.mint_access_token("alice")
    setup.clock.offset += setup.issuer.settings.approval_token_max_age + 1
    started = await setup.start_device()
    bearer = {"Authorization": f"Bearer {token}"}
    status, body = await setup.post(
        "/oauth/device/approve", {"user_code": started["user_code"]}, headers=bearer
    )
    assert (status, body["error"]) == (401, "login_required")
    assert "password" in body["error_description"]
    _, pending = await setup.poll(started["device_code"])
    assert pending["error"] == "authorization_pending"
    status, body = await setup.post(
        "/oauth/device/approve",
        {"user_code": started["user_code"], "password": "wrong"},
        headers=bearer,
    )
    assert status == 401
    status, body = await setup.post(
        "/oauth/device/approve",
        {"user_code": started["user_code"], "password": ALICE_PASSWORD},
        headers=bearer,
    )
    assert (status, body) == (200, {"approved": True, "user": "alice"})


async def test_password_spraying_is_slowed_globally_while_a_known_user_still_signs_in(
    tmp_path: Path, users_yaml: str
) -> None:
    """Names sprayed from many addresses run into the global limit, even guesses at alice
    herself; alice, who signed in from her address before, still signs in."""
    limits = SignInLimits(global_per_second=1e-6, global_burst=6, per_address_burst=3)
    async with issuer_setup(tmp_path, users_yaml, IssuerSettings(sign_in=limits)) as setup:
        await setup.device_login("alice", ALICE_PASSWORD)  # 127.0.0.1 is now alice's
        statuses = []
        for n in range(2, 12):
            started = await setup.start_device()
            for name in ("alice", f"user{n}"):
                page = await setup.approve_with_password(
                    started, name, "guess", source=f"127.0.0.{n}"
                )
                statuses.append(page.status)
        assert statuses[:5] == [401] * 5
        assert set(statuses[6:]) == {429}, statuses
        tokens = await setup.device_login("alice", ALICE_PASSWORD)
        assert tokens["access_token"]


async def test_a_refresh_token_is_bound_to_its_client(setup: Setup) -> None:
    tokens = await setup.device_login("alice", ALICE_PASSWORD)
    status, body = await setup.post(
        "/oauth/token",
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
    )
    assert (status, body["error"]) == (401, "invalid_client")
    status, body = await setup.post(
        "/oauth/token",
        {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": BUILTIN_CLIENT_ID,
            "scope": "openid admin",
        },
    )
    assert (status, body["error"]) == (400, "invalid_scope")


# ---- the authorization code flow with PKCE ----------------------------------------------------


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize_query(challenge: str, redirect_uri: str, **overrides: str) -> dict[str, str]:
    query = {
        "response_type": "code",
        "client_id": BUILTIN_CLIENT_ID,
        "redirect_uri": redirect_uri,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "state-123",
        "scope": "openid offline_access",
    }
    query.update(overrides)
    return {key: value for key, value in query.items() if value}


async def browser_authorize(
    setup: Setup, query: dict[str, str], username: str, password: str
) -> aiohttp.ClientResponse:
    """Open the authorization page, sign in, and return the final (unfollowed) response."""
    async with setup.http.get(setup.url + "/oauth/authorize", params=query) as page:
        assert page.status == 200, await page.text()
        form = forms_of(await page.text())[0]
    data = {**form.fields, "username": username, "password": password, "action": "approve"}
    response = await setup.http.post(form.action, data=data, allow_redirects=False)
    response.release()
    return response


async def test_pkce_code_flow_with_a_loopback_redirect(setup: Setup) -> None:
    _, challenge = pkce_pair()
    redirect_uri = "http://127.0.0.1:49152/callback"
    response = await browser_authorize(
        setup, authorize_query(challenge, redirect_uri), "alice", ALICE_PASSWORD
    )
    assert response.status == 302
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == redirect_uri
    params = {key: values[0] for key, values in parse_qs(location.query).items()}
    assert params["state"] == "state-123" and params["iss"] == setup.url

    exchange = {
        "grant_type": "authorization_code",
        "code": params["code"],
        "redirect_uri": redirect_uri,
        "client_id": BUILTIN_CLIENT_ID,
    }
    status, body = await setup.post(
        "/oauth/token", {**exchange, "code_verifier": secrets.token_urlsafe(48)}
    )
    assert (status, body["error"]) == (400, "invalid_grant")

    verifier2, challenge2 = pkce_pair()
    response = await browser_authorize(
        setup, authorize_query(challenge2, redirect_uri), "alice", ALICE_PASSWORD
    )
    code = parse_qs(urlsplit(response.headers["Location"]).query)["code"][0]
    exchange["code"] = code
    status, tokens = await setup.post("/oauth/token", {**exchange, "code_verifier": verifier2})
    assert status == 200, tokens
    assert jwt.decode(tokens["access_token"], options={"verify_signature": False})["sub"] == "alice"
    id_claims = jwt.decode(tokens["id_token"], options={"verify_signature": False})
    assert id_claims["aud"] == BUILTIN_CLIENT_ID

    # A replayed code fails and takes the tokens it gave with it.
    status, body = await setup.post("/oauth/token", {**exchange, "code_verifier": verifier2})
    assert (status, body["error"]) == (400, "invalid_grant")
    status, body = await setup.refresh(tokens["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.example/callback",
        "http://evil.example:8080/callback",
        "http://127.0.0.1.evil.example/cb",
        "http://127.0.0.1:8080/cb#fragment",
        "custom-scheme:/callback",
        "",
    ],
)
async def test_only_loopback_redirects_are_followed(setup: Setup, redirect_uri: str) -> None:
    _, challenge = pkce_pair()
    async with setup.http.get(
        setup.url + "/oauth/authorize",
        params=authorize_query(challenge, redirect_uri),
        allow_redirects=False,
    ) as response:
        assert response.status == 400
        assert "Location" not in response.headers


PUBLIC_URL = "https://rde.example.com"


async def test_a_registered_https_redirect_is_followed_exactly(
    tmp_path: Path, users_yaml: str
) -> None:
    """A dashboard behind a TLS proxy (`kuberde up --public-url`): its callback is registered,
    browsers open the sign-in page at the public URL, and only that exact URI is followed."""
    callback = PUBLIC_URL + "/auth/callback"
    settings = IssuerSettings(
        redirect_uris={BUILTIN_CLIENT_ID: frozenset({callback})}, browser_url=PUBLIC_URL
    )
    async with issuer_setup(tmp_path, users_yaml, settings) as setup:
        async with setup.http.get(setup.url + "/.well-known/openid-configuration") as response:
            document = await response.json()
        assert document["issuer"] == setup.url
        assert document["authorization_endpoint"] == PUBLIC_URL + "/oauth/authorize"
        assert document["token_endpoint"] == setup.url + "/oauth/token"

        verifier, challenge = pkce_pair()
        query = authorize_query(challenge, callback)
        async with setup.http.get(setup.url + "/oauth/authorize", params=query) as page:
            assert page.status == 200, await page.text()
            form = forms_of(await page.text())[0]
        assert form.action == PUBLIC_URL + "/oauth/authorize"
        data = {**form.fields, "username": "alice", "password": ALICE_PASSWORD}
        async with setup.http.post(
            setup.url + "/oauth/authorize",
            data={**data, "action": "approve"},
            allow_redirects=False,
        ) as response:
            assert response.status == 302, await response.text()
            location = urlsplit(response.headers["Location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == callback
        code = parse_qs(location.query)["code"][0]
        exchange = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": callback,
            "client_id": BUILTIN_CLIENT_ID,
            "code_verifier": verifier,
        }
        status, tokens = await setup.post("/oauth/token", exchange)
        assert status == 200, tokens

        for other in (
            PUBLIC_URL + "/auth/callback/",
            PUBLIC_URL + "/elsewhere",
            "https://evil.example/auth/callback",
        ):
            async with setup.http.get(
                setup.url + "/oauth/authorize",
                params=authorize_query(challenge, other),
                allow_redirects=False,
            ) as response:
                assert response.status == 400, other
                assert "Location" not in response.headers


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": ""}, "invalid_request"),
        ({"code_challenge": ""}, "invalid_request"),
        ({"code_challenge": "short"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "openid admin"}, "invalid_scope"),
    ],
)
async def test_bad_authorization_requests_redirect_with_an_error(
    setup: Setup, overrides: dict[str, str], error: str
) -> None:
    _, challenge = pkce_pair()
    query = authorize_query(challenge, "http://[::1]:49152/cb", **overrides)
    async with setup.http.get(
        setup.url + "/oauth/authorize", params=query, allow_redirects=False
    ) as response:
        assert response.status == 302
        params = parse_qs(urlsplit(response.headers["Location"]).query)
        assert params["error"] == [error]
        assert params["state"] == ["state-123"]


async def test_a_denied_browser_sign_in(setup: Setup) -> None:
    _, challenge = pkce_pair()
    query = authorize_query(challenge, "http://localhost:49152/cb")
    async with setup.http.get(setup.url + "/oauth/authorize", params=query) as page:
        form = forms_of(await page.text())[0]
    async with setup.http.post(
        form.action, data={**form.fields, "action": "deny"}, allow_redirects=False
    ) as response:
        assert response.status == 302
        assert parse_qs(urlsplit(response.headers["Location"]).query)["error"] == ["access_denied"]


async def test_a_wrong_password_in_the_browser_gives_no_code(setup: Setup) -> None:
    _, challenge = pkce_pair()
    response = await browser_authorize(
        setup, authorize_query(challenge, "http://127.0.0.1:49152/cb"), "alice", "nope"
    )
    assert response.status == 401
    assert "Location" not in response.headers


async def test_pages_cannot_be_framed_or_cached(setup: Setup) -> None:
    async with setup.http.get(setup.url + "/oauth/device") as response:
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["Cache-Control"] == "no-store"


async def test_the_gateway_refuses_tampered_and_foreign_user_tokens(setup: Setup) -> None:
    await setup.gateway.peer(setup.gateway.mint_agent("alice", "dev"))
    await setup.gateway.wait_online("user-alice-dev")
    good = setup.issuer.mint_access_token("alice")
    header, payload, signature = good.split(".")
    tampered_payload = base64.urlsafe_b64encode(
        jwt.utils.base64url_decode(payload).replace(b'"alice"', b'"mallo"')
    ).rstrip(b"=")
    tampered = f"{header}.{tampered_payload.decode()}.{signature}"
    status, body = await setup.gateway.refusal("/connect/user-alice-dev?port=22", tampered)
    assert (status, body["reason"]) == (401, "bad_signature")
    local = TokenIssuer(setup.gateway.key).mint_user("alice")
    status, body = await setup.gateway.refusal("/connect/user-alice-dev?port=22", local)
    assert (status, body["reason"]) == (401, "bad_issuer")
    assert await setup.gateway.echo_through("user-alice-dev", good) == b"ping"
