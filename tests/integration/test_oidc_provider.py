"""The gateway against a real OpenID Connect provider: panva's `oidc-provider` on Node.js.

Users sign in with the device authorization grant, approved through the provider's own HTML
pages by a scripted browser; agents use the client-credentials grant. Every token the
gateway accepts here was issued and signed by the provider, and every refusal is checked on
a real WebSocket upgrade.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from kuberde.agent.client import run_agent
from kuberde.agent.config import from_env
from kuberde.auth import CLOCK_LEEWAY, LocalTokenVerifier, SigningKey, TokenVerifier
from kuberde.auth.client_credentials import (
    ClientCredentials,
    ClientCredentialsSource,
    TokenEndpointError,
)
from kuberde.auth.oidc import (
    AgentClaims,
    CompositeVerifier,
    HttpJsonFetcher,
    OidcAgentVerifier,
    OidcProvider,
    OidcUserVerifier,
    UserClaims,
)
from kuberde.clock import Clock, ManualClock, utc_now
from kuberde.gateway.directory import AgentRecord
from tests.oidc_provider.gateway import (
    GatewayUnderTest,
    LogCapture,
    StaticDirectory,
    captured_logs,
    running_gateway,
)
from tests.oidc_provider.harness import (
    CLI_CLIENT_ID,
    OidcProviderProcess,
    device_login,
    discover,
    post_form,
    running_provider,
)

WAIT = 20.0
AGENT_CLIENT = "agent-alice-dev"
AGENT_SECRET = "agent-client-secret-value"
AGENTS = {
    AGENT_CLIENT: {"secret": AGENT_SECRET, "agentId": "user-alice-dev", "owner": "alice"},
    "agent-mallory": {"secret": "mallory-secret", "agentId": "user-alice-dev", "owner": "mallory"},
}
ALICE_DEV = AgentRecord("user-alice-dev", "alice", "dev", uid="uid-alice-dev")
SMITH_DEV = AgentRecord("user-alice-smith-dev", "alice-smith", "dev", uid="uid-alice-smith-dev")


class CountingFetcher:
    """The real HTTP fetcher, counting JWKS downloads."""

    def __init__(self) -> None:
        self._fetch = HttpJsonFetcher(timeout=5.0)
        self.urls: list[str] = []

    async def __call__(self, url: str) -> Mapping[str, Any]:
        self.urls.append(url)
        return await self._fetch(url)

    @property
    def jwks_fetches(self) -> int:
        return sum(1 for url in self.urls if "openid-configuration" not in url)


@dataclass
class World:
    idp: OidcProviderProcess
    gateway: GatewayUnderTest
    fetcher: CountingFetcher
    logs: LogCapture

    async def login(self, username: str) -> dict[str, Any]:
        return await asyncio.wait_for(
            device_login(self.gateway.http, self.idp.issuer, username), WAIT
        )

    async def refresh(self, refresh_token: str) -> tuple[int, dict[str, Any]]:
        metadata = await discover(self.gateway.http, self.idp.issuer)
        return await post_form(
            self.gateway.http,
            metadata["token_endpoint"],
            {
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": CLI_CLIENT_ID,
            },
        )

    async def client_credentials(self, client: str, secret: str) -> str:
        metadata = await discover(self.gateway.http, self.idp.issuer)
        source = ClientCredentialsSource(
            ClientCredentials(metadata["token_endpoint"], client, secret)
        )
        return await source.token()

    async def serve(self, record: AgentRecord) -> None:
        owner, name = record.owner, record.name
        await self.gateway.peer(self.gateway.mint_agent(owner, name, uid=record.uid))
        await self.gateway.wait_online(record.agent_id)


def verifier_for(
    issuer: str,
    fetcher: CountingFetcher,
    directory: StaticDirectory,
    *,
    user_claims: UserClaims | None = None,
    leeway: timedelta = CLOCK_LEEWAY,
    wall_clock: Clock = utc_now,
) -> Callable[[str, SigningKey], TokenVerifier]:
    def build(url: str, key: SigningKey) -> TokenVerifier:
        provider = OidcProvider(issuer, fetcher, leeway=leeway, wall_clock=wall_clock)
        local = LocalTokenVerifier.from_signing_key(key)
        return CompositeVerifier(
            users=[OidcUserVerifier(provider, user_claims or UserClaims(client_id=CLI_CLIENT_ID))],
            agents=[local, OidcAgentVerifier(provider, AgentClaims(), lookup=directory.lookup)],
            management=[local],
        )

    return build


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    directory = StaticDirectory(ALICE_DEV, SMITH_DEV)
    fetcher = CountingFetcher()
    with captured_logs() as logs:
        async with running_provider(tmp_path, admins=("root",), agents=AGENTS) as idp:
            verifier = verifier_for(idp.issuer, fetcher, directory)
            async with running_gateway(
                tmp_path / "gateway", verifier, directory=directory
            ) as gateway:
                yield World(idp, gateway, fetcher, logs)


def secrets_of(tokens: Mapping[str, Any]) -> list[str]:
    return [tokens[key] for key in ("access_token", "refresh_token", "id_token") if key in tokens]


def never_logged(logs: LogCapture, *tokens: str) -> None:
    for token in tokens:
        assert token not in logs.text
        signature = token.rsplit(".", 1)[-1]
        if len(signature) >= 16:
            assert signature not in logs.text


# ---- users ----------------------------------------------------------------------------------


async def test_device_login_reaches_the_workspace_and_refresh_keeps_it_working(
    world: World,
) -> None:
    await world.serve(ALICE_DEV)
    tokens = await world.login("alice")
    assert await world.gateway.echo_through("dev", tokens["access_token"]) == b"ping"

    status, refreshed = await world.refresh(tokens["refresh_token"])
    assert status == 200, refreshed
    assert refreshed["access_token"] != tokens["access_token"]
    assert await world.gateway.echo_through("user-alice-dev", refreshed["access_token"]) == b"ping"
    # The provider rotated the refresh token: the first one is spent.
    status, spent = await world.refresh(tokens["refresh_token"])
    assert (status, spent["error"]) == (400, "invalid_grant")
    assert world.fetcher.jwks_fetches == 1
    never_logged(world.logs, *secrets_of(tokens), *secrets_of(refreshed))


async def test_a_rotated_provider_key_is_fetched_on_its_first_token(world: World) -> None:
    await world.serve(ALICE_DEV)
    before = await world.login("alice")
    assert await world.gateway.echo_through("dev", before["access_token"]) == b"ping"
    assert world.fetcher.jwks_fetches == 1

    await world.idp.restart()  # same issuer, a new signing key
    after = await world.login("alice")
    old_kid = jwt.get_unverified_header(before["access_token"])["kid"]
    assert jwt.get_unverified_header(after["access_token"])["kid"] != old_kid
    assert await world.gateway.echo_through("dev", after["access_token"]) == b"ping"
    assert world.fetcher.jwks_fetches == 2
    # The retired key is gone from the JWKS; its tokens stop working, without a refetch storm.
    for _ in range(3):
        status, body = await world.gateway.refusal("/connect/dev?port=22", before["access_token"])
        assert (status, body["reason"]) == (401, "unknown_key")
    assert world.fetcher.jwks_fetches == 2


async def test_an_expired_token_is_refused_and_a_refreshed_one_works(tmp_path: Path) -> None:
    directory = StaticDirectory(ALICE_DEV)
    fetcher = CountingFetcher()
    clock = ManualClock()
    async with running_provider(tmp_path, access_token_ttl=60) as idp:
        build = verifier_for(idp.issuer, fetcher, directory, leeway=timedelta(0), wall_clock=clock)
        async with running_gateway(tmp_path / "gw", build, directory=directory) as gateway:
            world = World(idp, gateway, fetcher, LogCapture())
            await world.serve(ALICE_DEV)
            tokens = await world.login("alice")
            assert await gateway.echo_through("dev", tokens["access_token"]) == b"ping"
            expires = jwt.decode(tokens["access_token"], options={"verify_signature": False})["exp"]
            # The gateway's clock moves past the expiry; nobody waits for it.
            clock.now = datetime.fromtimestamp(expires + 1, UTC)
            status, body = await gateway.refusal("/connect/dev?port=22", tokens["access_token"])
            assert (status, body["reason"]) == (401, "expired")
            status, refreshed = await world.refresh(tokens["refresh_token"])
            assert status == 200, refreshed
            clock.now = utc_now()  # the refreshed token is valid from now on
            assert await gateway.echo_through("dev", refreshed["access_token"]) == b"ping"


async def test_owners_reach_only_their_agents_and_admins_reach_any(world: World) -> None:
    await world.serve(ALICE_DEV)
    await world.serve(SMITH_DEV)
    alice = (await world.login("alice"))["access_token"]
    smith = (await world.login("alice-smith"))["access_token"]
    root = (await world.login("root"))["access_token"]
    # `user-alice-smith-dev` starts with `user-alice-` but belongs to alice-smith.
    for reference in ("user-alice-smith-dev", "smith-dev"):
        status, body = await world.gateway.refusal(f"/connect/{reference}?port=22", alice)
        assert (status, body["reason"]) == (404, "not_found")
    assert await world.gateway.echo_through("dev", smith) == b"ping"
    assert await world.gateway.echo_through("user-alice-smith-dev", root) == b"ping"
    assert await world.gateway.echo_through("user-alice-dev", root) == b"ping"
    never_logged(world.logs, alice, smith, root)


# ---- refusals -------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


async def test_a_token_from_another_issuer_is_refused(world: World, tmp_path: Path) -> None:
    await world.serve(ALICE_DEV)
    async with running_provider(tmp_path, name="other") as other:
        foreign = await device_login(world.gateway.http, other.issuer, "alice")
    status, body = await world.gateway.refusal("/connect/dev?port=22", foreign["access_token"])
    assert (status, body["reason"]) == (401, "bad_issuer")
    assert world.fetcher.urls == []


async def test_a_token_for_another_audience_is_refused(world: World, tmp_path: Path) -> None:
    tokens = await world.login("alice")
    directory = StaticDirectory(ALICE_DEV)
    strict = verifier_for(
        world.idp.issuer, CountingFetcher(), directory, user_claims=UserClaims(audience="billing")
    )
    async with running_gateway(tmp_path / "strict", strict, directory=directory) as gateway:
        status, body = await gateway.refusal("/connect/dev?port=22", tokens["access_token"])
    assert (status, body["reason"]) == (401, "bad_audience")
    # An ID token is meant for the CLI, not for the gateway.
    status, body = await world.gateway.refusal("/connect/dev?port=22", tokens["id_token"])
    assert status == 401 and body["reason"] in {"bad_audience", "wrong_kind"}
    # The agents' client-credentials tokens are for another audience too.
    agent_token = await world.client_credentials(AGENT_CLIENT, AGENT_SECRET)
    status, body = await world.gateway.refusal("/connect/dev?port=22", agent_token)
    assert (status, body["reason"]) == (401, "bad_audience")


async def test_alg_none_and_hs256_with_the_public_key_are_refused(world: World) -> None:
    tokens = await world.login("root")
    header = jwt.get_unverified_header(tokens["access_token"])
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    encoded = b64(json.dumps(claims).encode())

    none_header = b64(json.dumps({"alg": "none", "kid": header["kid"], "typ": "at+jwt"}).encode())
    status, body = await world.gateway.refusal(
        "/connect/user-alice-dev?port=22", f"{none_header}.{encoded}."
    )
    assert (status, body["reason"]) == (401, "bad_signature")

    metadata = await discover(world.gateway.http, world.idp.issuer)
    async with world.gateway.http.get(metadata["jwks_uri"]) as response:
        jwk = (await response.json())["keys"][0]
    public = jwt.PyJWK(jwk).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_header = b64(json.dumps({"alg": "HS256", "kid": header["kid"], "typ": "at+jwt"}).encode())
    for secret in (public, json.dumps(jwk).encode()):
        mac = hmac.new(secret, f"{hs_header}.{encoded}".encode(), hashlib.sha256).digest()
        forged = f"{hs_header}.{encoded}.{b64(mac)}"
        status, body = await world.gateway.refusal("/connect/user-alice-dev?port=22", forged)
        assert (status, body["reason"]) == (401, "bad_signature")


async def test_a_user_token_is_not_an_agent_credential(world: World) -> None:
    tokens = await world.login("alice")
    status, body = await world.gateway.refusal("/ws", tokens["access_token"])
    assert status == 401 and body["reason"] in {"bad_audience", "wrong_kind"}
    assert not await world.gateway.online("user-alice-dev")


async def test_an_agent_credential_is_not_a_user_token(world: World) -> None:
    await world.serve(ALICE_DEV)
    credential = world.gateway.mint_agent("alice", "dev", uid=ALICE_DEV.uid)
    status, body = await world.gateway.refusal("/connect/dev?port=22", credential)
    assert (status, body["reason"]) == (401, "bad_issuer")
    never_logged(world.logs, credential)


# ---- agents ----------------------------------------------------------------------------------


async def test_a_credential_for_a_deleted_and_recreated_agent_is_refused(world: World) -> None:
    stale = world.gateway.mint_agent("alice", "dev", uid="uid-of-the-deleted-rdeagent")
    status, body = await world.gateway.refusal("/ws", stale)
    assert (status, body["reason"]) == (403, "not_this_agent")
    unbound = world.gateway.mint_agent("alice", "dev")
    status, body = await world.gateway.refusal("/ws", unbound)
    assert (status, body["reason"]) == (403, "not_this_agent")
    await world.serve(ALICE_DEV)


async def test_a_credential_registers_only_its_own_agent(world: World) -> None:
    await world.serve(SMITH_DEV)
    assert not await world.gateway.online("user-alice-dev")
    assert await world.gateway.online("user-alice-smith-dev")


async def echo_server() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, port


async def test_an_agent_with_client_credentials_serves_its_workspace(world: World) -> None:
    metadata = await discover(world.gateway.http, world.idp.issuer)
    server, port = await echo_server()
    stop = asyncio.Event()
    config = from_env(
        {
            "SERVER_URL": world.gateway.ws_url + "/ws",
            "LOCAL_TARGET": f"127.0.0.1:{port}",
            "AUTH_CLIENT_ID": AGENT_CLIENT,
            "AUTH_CLIENT_SECRET": AGENT_SECRET,
            "AUTH_TOKEN_URL": metadata["token_endpoint"],
            "AGENT_ID": "user-alice-dev",
        }
    )
    agent = asyncio.create_task(run_agent(config, stop=stop))
    try:
        await world.gateway.wait_online("user-alice-dev")
        alice = (await world.login("alice"))["access_token"]
        echoed = await world.gateway.echo_through("dev", alice, b"client credentials", port=None)
        assert echoed == b"client credentials"
    finally:
        stop.set()
        assert await asyncio.wait_for(agent, WAIT) == 0
        server.close()
        await server.wait_closed()
    never_logged(world.logs, AGENT_SECRET)


async def test_a_client_token_bound_to_another_owner_is_refused(world: World) -> None:
    # The provider binds `agent-mallory` to user-alice-dev but names mallory as the owner.
    token = await world.client_credentials("agent-mallory", "mallory-secret")
    status, body = await world.gateway.refusal("/ws", token)
    assert (status, body["reason"]) == (403, "not_this_agent")
    never_logged(world.logs, token)


async def test_the_client_credentials_token_is_cached_until_it_runs_low(world: World) -> None:
    metadata = await discover(world.gateway.http, world.idp.issuer)
    now = [time.monotonic()]
    source = ClientCredentialsSource(
        ClientCredentials(metadata["token_endpoint"], AGENT_CLIENT, AGENT_SECRET),
        clock=lambda: now[0],
    )
    first = await source.token()
    now[0] += 300 - 61  # the lifetime is 300 s: kept while more than 60 s are left
    assert await source.token() == first
    now[0] += 2
    second = await source.token()
    assert second != first
    source.invalidate()
    assert await source.token() != second

    wrong = ClientCredentialsSource(
        ClientCredentials(metadata["token_endpoint"], AGENT_CLIENT, "wrong-secret")
    )
    with pytest.raises(TokenEndpointError) as info:
        await wrong.token()
    assert "invalid_client" in str(info.value) and "wrong-secret" not in str(info.value)


async def test_an_unreachable_token_endpoint_is_reported(world: World) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = ClientCredentialsSource(
        ClientCredentials(f"http://127.0.0.1:{port}/token", AGENT_CLIENT, AGENT_SECRET)
    )
    with pytest.raises(TokenEndpointError, match="unreachable"):
        await source.token()
