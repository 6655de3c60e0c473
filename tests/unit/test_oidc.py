"""OIDC verification: keys, algorithms, issuer, audience, claims, JWKS caching and refetching.

The provider's documents come from an in-memory fetcher, so every refetch can be counted and
the clock moved by hand; the real-provider tests are in tests/integration.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kuberde.auth import AuthError, LocalTokenVerifier, Principal, SigningKey, TokenIssuer
from kuberde.auth.oidc import (
    AgentClaims,
    CompositeVerifier,
    FetchError,
    OidcAgentVerifier,
    OidcProvider,
    OidcUserVerifier,
    UserClaims,
    claim_at,
)

ISSUER = "https://idp.example/realms/kuberde"
DISCOVERY = ISSUER + "/.well-known/openid-configuration"
JWKS_URI = ISSUER + "/protocol/openid-connect/certs"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class Key:
    private: Any
    kid: str
    alg: str
    publish_alg: bool = True

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        document: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        document["kid"] = self.kid
        document["use"] = "sig"
        if self.publish_alg:
            document["alg"] = self.alg
        return document


def ec_key(kid: str, curve: ec.EllipticCurve | None = None, alg: str = "ES256") -> Key:
    return Key(ec.generate_private_key(curve or ec.SECP256R1()), kid, alg)


@dataclass
class Idp:
    """The provider's documents, served to `OidcProvider` without a network."""

    keys: list[Key]
    extra_jwks: list[dict[str, Any]] = field(default_factory=list)
    issuer: str = ISSUER
    fetches: list[str] = field(default_factory=list)
    down: bool = False

    async def __call__(self, url: str) -> Mapping[str, Any]:
        self.fetches.append(url)
        await asyncio.sleep(0)
        if self.down:
            raise FetchError(f"GET {url} failed: connection refused")
        if url == DISCOVERY:
            return {"issuer": self.issuer, "jwks_uri": JWKS_URI}
        if url == JWKS_URI:
            return {"keys": [key.jwk() for key in self.keys] + self.extra_jwks}
        raise FetchError(f"GET {url} returned HTTP 404")

    def jwks_fetches(self) -> int:
        return self.fetches.count(JWKS_URI)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": "kuberde",
        "sub": "0b9c6f1e-user-id",
        "iat": now,
        "exp": now + 300,
        "preferred_username": "alice",
        "realm_access": {"roles": ["offline_access"]},
        "typ": "Bearer",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Key, *, headers: dict[str, Any] | None = None, **overrides: Any) -> str:
    return jwt.encode(
        claims(**overrides),
        key.private,
        algorithm=key.alg,
        headers={"kid": key.kid, **(headers or {})},
    )


def unsigned(payload: dict[str, Any], header: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}."


@pytest.fixture
def key() -> Key:
    return ec_key("key-1")


@pytest.fixture
def idp(key: Key) -> Idp:
    return Idp([key])


@pytest.fixture
def clock() -> Clock:
    return Clock()


def provider(idp: Idp, clock: Clock | None = None, **kwargs: Any) -> OidcProvider:
    return OidcProvider(ISSUER, idp, clock=clock or Clock(), **kwargs)


def users(idp: Idp, claims_settings: UserClaims | None = None, **kwargs: Any) -> OidcUserVerifier:
    return OidcUserVerifier(provider(idp, **kwargs), claims_settings)


async def refused(verify: Any, token: str, reason: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        await verify(token)
    assert info.value.reason == reason, str(info.value)
    message = str(info.value)
    for segment in token.split("."):
        if len(segment) >= 8:
            assert segment not in message
    return info.value


# ---- users ---------------------------------------------------------------------------------


async def test_a_keycloak_access_token_names_the_user(idp: Idp, key: Key) -> None:
    principal = await users(idp).verify_user(sign(key))
    assert principal.kind == "user"
    assert principal.name == "alice"
    assert principal.admin is False
    assert principal.expires_at is not None


async def test_admin_comes_from_realm_roles(idp: Idp, key: Key) -> None:
    token = sign(key, realm_access={"roles": ["offline_access", "admin"]})
    assert (await users(idp).verify_user(token)).admin is True


async def test_a_configured_admin_role_and_groups_claim(idp: Idp, key: Key) -> None:
    settings = UserClaims(admin_role="rde-admins", groups_claim="groups")
    verifier = users(idp, settings)
    assert (await verifier.verify_user(sign(key, groups=["/rde-admins"]))).admin is True
    assert (await verifier.verify_user(sign(key, groups=["/developers"]))).admin is False
    # "admin" in the realm roles means nothing when another role is configured.
    not_admin = sign(key, realm_access={"roles": ["admin"]}, groups=[])
    assert (await verifier.verify_user(not_admin)).admin is False


async def test_roles_or_groups_of_the_wrong_shape_are_refused(idp: Idp, key: Key) -> None:
    verifier = users(idp, UserClaims(groups_claim="groups"))
    await refused(verifier.verify_user, sign(key, realm_access={"roles": "admin"}), "bad_claims")
    await refused(verifier.verify_user, sign(key, groups=[1, 2]), "bad_claims")


async def test_a_configured_username_claim(idp: Idp, key: Key) -> None:
    verifier = users(idp, UserClaims(username_claim="email_local"))
    principal = await verifier.verify_user(sign(key, email_local="bob"))
    assert principal.name == "bob"
    await refused(verifier.verify_user, sign(key), "bad_claims")


@pytest.mark.parametrize("username", ["Alice", "alice smith", "-alice", "a" * 64, "", 7])
async def test_usernames_must_be_valid_names(idp: Idp, key: Key, username: Any) -> None:
    await refused(users(idp).verify_user, sign(key, preferred_username=username), "bad_claims")


async def test_the_audience_may_be_a_list(idp: Idp, key: Key) -> None:
    token = sign(key, aud=["account", "kuberde"])
    assert (await users(idp).verify_user(token)).name == "alice"


async def test_wrong_audience_is_refused(idp: Idp, key: Key) -> None:
    await refused(users(idp).verify_user, sign(key, aud="account"), "bad_audience")
    await refused(users(idp).verify_user, sign(key, aud=None), "bad_audience")
    await refused(users(idp).verify_user, sign(key, aud=[7]), "bad_claims")


async def test_azp_is_accepted_only_for_the_configured_client(idp: Idp, key: Key) -> None:
    token = sign(key, aud="account", azp="kuberde-cli")
    await refused(users(idp).verify_user, token, "bad_audience")
    verifier = users(idp, UserClaims(client_id="kuberde-cli"))
    assert (await verifier.verify_user(token)).name == "alice"
    other = sign(key, aud="account", azp="grafana")
    await refused(verifier.verify_user, other, "bad_audience")


async def test_wrong_issuer_is_refused_without_fetching_anything(idp: Idp, key: Key) -> None:
    token = sign(key, iss="https://evil.example/realms/kuberde")
    await refused(users(idp).verify_user, token, "bad_issuer")
    assert idp.fetches == []


async def test_an_issuer_whose_discovery_names_another_issuer_is_not_trusted(key: Key) -> None:
    idp = Idp([key], issuer="https://idp.example/realms/other")
    error = await refused(users(idp).verify_user, sign(key), "unknown_key")
    assert ISSUER in str(error)
    assert idp.jwks_fetches() == 0


async def test_alg_none_is_refused(idp: Idp, key: Key) -> None:
    token = unsigned(claims(), {"alg": "none", "kid": key.kid, "typ": "JWT"})
    await refused(users(idp).verify_user, token, "bad_signature")


async def test_hs256_keyed_with_the_public_key_is_refused(idp: Idp, key: Key) -> None:
    """The classic confusion attack: an HMAC "signature" made with the published key."""
    pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (pem, json.dumps(key.jwk()).encode()):
        header = b64(json.dumps({"alg": "HS256", "kid": key.kid, "typ": "JWT"}).encode())
        payload = b64(json.dumps(claims(realm_access={"roles": ["admin"]})).encode())
        mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        await refused(users(idp).verify_user, f"{header}.{payload}.{b64(mac)}", "bad_signature")


async def test_symmetric_keys_in_the_jwks_are_never_used(idp: Idp, key: Key) -> None:
    secret = b"shared-secret-of-32-bytes-length!"
    idp.extra_jwks.append({"kty": "oct", "kid": "hmac", "k": b64(secret), "alg": "HS256"})
    token = jwt.encode(claims(), secret, algorithm="HS256", headers={"kid": "hmac"})
    await refused(users(idp).verify_user, token, "bad_signature")


async def test_the_algorithm_must_be_the_one_of_the_named_key(idp: Idp, key: Key) -> None:
    rsa_key = Key(rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa", "RS256")
    idp.keys.append(rsa_key)
    # A PS256 signature by the RS256-published key, and an ES256 token naming the RSA key.
    pss = jwt.encode(claims(), rsa_key.private, algorithm="PS256", headers={"kid": "rsa"})
    await refused(users(idp).verify_user, pss, "bad_signature")
    confused = jwt.encode(claims(), key.private, algorithm="ES256", headers={"kid": "rsa"})
    await refused(users(idp).verify_user, confused, "bad_signature")
    assert (await users(idp).verify_user(sign(rsa_key))).name == "alice"


async def test_algorithms_are_inferred_for_keys_without_alg(key: Key) -> None:
    rsa_key = Key(rsa.generate_private_key(public_exponent=65537, key_size=2048), "r", "RS256")
    p384 = ec_key("p384", ec.SECP384R1(), "ES384")
    for published in (rsa_key, p384, key):
        published.publish_alg = False
    idp = Idp([rsa_key, p384, key])
    verifier = users(idp)
    for signer in (rsa_key, p384, key):
        assert (await verifier.verify_user(sign(signer))).name == "alice"


async def test_encryption_keys_are_not_signature_keys(key: Key) -> None:
    idp = Idp([])
    idp.extra_jwks.append({**key.jwk(), "use": "enc"})
    await refused(users(idp).verify_user, sign(key), "unknown_key")


async def test_a_token_without_kid_uses_the_only_key(idp: Idp, key: Key) -> None:
    token = jwt.encode(claims(), key.private, algorithm="ES256")
    assert (await users(idp).verify_user(token)).name == "alice"
    idp.keys.append(ec_key("key-2"))
    await refused(users(idp).verify_user, token, "unknown_key")


async def test_a_forged_signature_is_refused(idp: Idp, key: Key) -> None:
    impostor = Key(ec.generate_private_key(ec.SECP256R1()), key.kid, "ES256")
    await refused(users(idp).verify_user, sign(impostor), "bad_signature")


async def test_expiry_has_a_small_leeway(idp: Idp, key: Key) -> None:
    now = int(time.time())
    recent = sign(key, iat=now - 400, exp=now - 10)
    assert (await users(idp).verify_user(recent)).name == "alice"
    await refused(users(idp).verify_user, sign(key, iat=now - 400, exp=now - 60), "expired")
    strict = users(idp, leeway=timedelta(0))
    await refused(strict.verify_user, recent, "expired")


async def test_required_claims(idp: Idp, key: Key) -> None:
    await refused(users(idp).verify_user, sign(key, exp=None), "bad_claims")
    await refused(users(idp).verify_user, sign(key, iat=None), "bad_claims")


async def test_only_access_tokens_pass(idp: Idp, key: Key) -> None:
    await refused(users(idp).verify_user, sign(key, typ="ID"), "wrong_kind")
    await refused(users(idp).verify_user, sign(key, typ="Refresh"), "wrong_kind")
    logout = sign(key, headers={"typ": "logout+jwt"})
    await refused(users(idp).verify_user, logout, "wrong_kind")
    at_jwt = sign(key, typ=None, headers={"typ": "at+jwt"})
    assert (await users(idp).verify_user(at_jwt)).name == "alice"


async def test_an_agent_bound_token_is_not_a_user_token(idp: Idp, key: Key) -> None:
    token = sign(key, kuberde_agent_id="user-alice-dev")
    await refused(users(idp).verify_user, token, "wrong_kind")


@pytest.mark.parametrize("garbage", ["", "not-a-jwt", "a.b.c", "....."])
async def test_malformed_tokens(idp: Idp, garbage: str) -> None:
    with pytest.raises(AuthError) as info:
        await users(idp).verify_user(garbage)
    assert info.value.reason in {"missing", "malformed"}
    assert idp.fetches == []


# ---- JWKS caching, refetching and rotation ------------------------------------------------


async def test_keys_are_fetched_once_and_cached(idp: Idp, key: Key) -> None:
    verifier = users(idp)
    for _ in range(5):
        await verifier.verify_user(sign(key))
    assert idp.fetches == [DISCOVERY, JWKS_URI]


async def test_an_unknown_kid_refetches_the_jwks_once(idp: Idp, key: Key, clock: Clock) -> None:
    verifier = users(idp, clock=clock)
    await verifier.verify_user(sign(key))
    rotated = ec_key("key-2")
    idp.keys = [rotated]
    assert (await verifier.verify_user(sign(rotated))).name == "alice"
    assert idp.jwks_fetches() == 2
    # The old key left the JWKS: its tokens are refused now.
    retired = sign(key)
    clock.now += 31
    await refused(verifier.verify_user, retired, "unknown_key")


async def test_refetching_on_unknown_kids_is_rate_limited(idp: Idp, key: Key, clock: Clock) -> None:
    verifier = users(idp, clock=clock)
    await verifier.verify_user(sign(key))
    stranger = ec_key("never-published")
    await refused(verifier.verify_user, sign(stranger), "unknown_key")
    assert idp.jwks_fetches() == 2
    for _ in range(10):
        await refused(verifier.verify_user, sign(stranger), "unknown_key")
    assert idp.jwks_fetches() == 2
    clock.now += 30
    await refused(verifier.verify_user, sign(stranger), "unknown_key")
    assert idp.jwks_fetches() == 3


async def test_concurrent_unknown_kids_share_one_refetch(idp: Idp, key: Key) -> None:
    verifier = users(idp)
    await verifier.verify_user(sign(key))
    rotated = ec_key("key-2")
    idp.keys.append(rotated)
    results = await asyncio.gather(*(verifier.verify_user(sign(rotated)) for _ in range(20)))
    assert {principal.name for principal in results} == {"alice"}
    assert idp.jwks_fetches() == 2


async def test_keys_are_refreshed_after_their_maximum_age(idp: Idp, key: Key, clock: Clock) -> None:
    verifier = users(idp, clock=clock, jwks_max_age=600)
    await verifier.verify_user(sign(key))
    clock.now += 601
    await verifier.verify_user(sign(key))
    assert idp.jwks_fetches() == 2


async def test_an_unreachable_provider_refuses_and_is_not_hammered(
    idp: Idp, key: Key, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    idp.down = True
    verifier = users(idp, clock=clock)
    token = sign(key)
    with caplog.at_level(logging.DEBUG):
        await refused(verifier.verify_user, token, "unknown_key")
        fetched = len(idp.fetches)
        await refused(verifier.verify_user, token, "unknown_key")
        assert len(idp.fetches) == fetched
        clock.now += 30
        idp.down = False
        assert (await verifier.verify_user(token)).name == "alice"
    assert token not in caplog.text


async def test_cached_keys_survive_a_provider_outage(idp: Idp, key: Key, clock: Clock) -> None:
    verifier = users(idp, clock=clock, jwks_max_age=600)
    await verifier.verify_user(sign(key))
    idp.down = True
    clock.now += 601
    assert (await verifier.verify_user(sign(key))).name == "alice"


# ---- agents with client-credentials tokens --------------------------------------------------


@dataclass(frozen=True)
class Record:
    owner: str
    uid: str | None


def agent_token(key: Key, **overrides: Any) -> str:
    base: dict[str, Any] = {
        "aud": "kuberde-agent",
        "sub": "service-account-agent-alice-dev",
        "azp": "agent-alice-dev",
        "preferred_username": None,
        "realm_access": None,
        "kuberde_agent_id": "user-alice-dev",
        "kuberde_owner": "alice",
    }
    base.update(overrides)
    return sign(key, **base)


async def test_a_client_credentials_token_bound_to_an_agent(idp: Idp, key: Key) -> None:
    verifier = OidcAgentVerifier(provider(idp))
    principal = await verifier.verify_agent(agent_token(key, kuberde_agent_uid="uid-1"))
    assert (principal.kind, principal.name, principal.owner) == ("agent", "user-alice-dev", "alice")
    assert principal.agent_uid == "uid-1"


async def test_owner_and_uid_can_come_from_the_directory(idp: Idp, key: Key) -> None:
    records = {"user-alice-dev": Record("alice", "uid-7")}
    verifier = OidcAgentVerifier(provider(idp), lookup=records.get)
    principal = await verifier.verify_agent(agent_token(key, kuberde_owner=None))
    assert (principal.owner, principal.agent_uid) == ("alice", "uid-7")
    unknown = agent_token(key, kuberde_owner=None, kuberde_agent_id="user-bob-dev")
    await refused(verifier.verify_agent, unknown, "bad_claims")


async def test_the_binding_claim_is_required_and_validated(idp: Idp, key: Key) -> None:
    verifier = OidcAgentVerifier(provider(idp))
    await refused(verifier.verify_agent, agent_token(key, kuberde_agent_id=None), "wrong_kind")
    await refused(verifier.verify_agent, agent_token(key, kuberde_agent_id="alice"), "bad_claims")
    await refused(verifier.verify_agent, agent_token(key, kuberde_owner="Alice"), "bad_claims")
    await refused(verifier.verify_agent, agent_token(key, kuberde_agent_uid=""), "bad_claims")


async def test_azp_can_be_the_binding_claim(idp: Idp, key: Key) -> None:
    verifier = OidcAgentVerifier(provider(idp), AgentClaims(agent_claim="azp"))
    token = agent_token(key, azp="user-alice-dev", kuberde_agent_id=None)
    assert (await verifier.verify_agent(token)).name == "user-alice-dev"


async def test_a_user_token_is_not_an_agent_credential(idp: Idp, key: Key) -> None:
    verifier = OidcAgentVerifier(provider(idp))
    await refused(verifier.verify_agent, sign(key), "bad_audience")
    await refused(verifier.verify_agent, sign(key, aud="kuberde-agent"), "wrong_kind")


# ---- composition ----------------------------------------------------------------------------


async def test_the_composite_verifies_each_kind_with_its_own_verifiers(
    idp: Idp, key: Key, tmp_path: Any
) -> None:
    signing = SigningKey.generate()
    local = LocalTokenVerifier.from_signing_key(signing)
    minted = TokenIssuer(signing)
    composite = CompositeVerifier(users=[users(idp)], agents=[local], management=[local])
    assert (await composite.verify_user(sign(key))).name == "alice"
    assert (await composite.verify_agent(minted.mint_agent("alice", "dev"))).owner == "alice"
    assert (await composite.verify_management(minted.mint_management())).kind == "management"
    # A locally minted user token is not accepted once users come from the provider.
    await refused(composite.verify_user, minted.mint_user("alice"), "bad_issuer")
    await refused(composite.verify_agent, sign(key), "unknown_key")


async def test_the_composite_reports_the_most_specific_refusal(idp: Idp, key: Key) -> None:
    signing = SigningKey.generate()
    local = LocalTokenVerifier.from_signing_key(signing)
    composite = CompositeVerifier(users=[local, users(idp)], agents=[], management=[local])
    now = int(time.time())
    expired = sign(key, iat=now - 600, exp=now - 300)
    await refused(composite.verify_user, expired, "expired")
    await refused(composite.verify_agent, sign(key), "wrong_kind")


async def test_first_accepting_verifier_wins() -> None:
    class Fixed:
        def __init__(self, principal: Principal | None) -> None:
            self.principal = principal
            self.calls = 0

        async def verify_user(self, token: str) -> Principal:
            self.calls += 1
            if self.principal is None:
                raise AuthError("bad_issuer", "not mine")
            return self.principal

    first, second, third = Fixed(None), Fixed(Principal("user", "bob")), Fixed(None)
    composite = CompositeVerifier(users=[first, second, third], agents=[], management=[])
    assert (await composite.verify_user("token")).name == "bob"
    assert (first.calls, second.calls, third.calls) == (1, 1, 0)


def test_claim_paths() -> None:
    document = {"realm_access": {"roles": ["admin"]}, "flat": 1}
    assert claim_at(document, "realm_access.roles") == ["admin"]
    assert claim_at(document, "flat") == 1
    assert claim_at(document, "flat.deeper") is None
    assert claim_at(document, "missing.roles") is None
