"""The pure parts of `kuberde login`: PKCE, OAuth responses, device polling decisions,
claims, and which stored login a token belongs to."""

from __future__ import annotations

import asyncio
import json
import re
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from kuberde.cli.config import CliConfig, ClientSettings, load, save
from kuberde.cli.login import (
    SLOW_DOWN_STEP,
    Credentials,
    Identity,
    LoginError,
    LoginSession,
    OAuthError,
    RefreshError,
    TokenGrant,
    authorization_url,
    code_challenge,
    config_lock,
    identity,
    needs_refresh,
    new_verifier,
    next_interval,
    parse_device_authorization,
    parse_token_response,
    session_for,
    stored_session,
    unauthorized_message,
    unverified_claims,
    with_login,
    without_login,
)

ISSUER = "https://sso.example/realms/dev"
SERVER = "https://gateway.example"
KEY = ec.generate_private_key(ec.SECP256R1())


def _jwt(**claims: object) -> str:
    body = {"iss": ISSUER, "sub": "id-alice", "exp": int(time.time()) + 300, **claims}
    return jwt.encode(body, KEY, algorithm="ES256")


def _session(**changes: object) -> LoginSession:
    fields: dict[str, object] = {
        "server": SERVER,
        "issuer": ISSUER,
        "client_id": "kuberde-cli",
        "subject": "id-alice",
        "refresh_token": "refresh-1",
        "expires_at": time.time() + 300,
    }
    fields.update(changes)
    return LoginSession(**fields)  # type: ignore[arg-type]


# ---- PKCE and the authorization request ---------------------------------------------------


def test_code_challenge_matches_rfc7636_appendix_b():
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_verifiers_are_long_random_and_unreserved():
    first, second = new_verifier(), new_verifier()
    assert first != second
    for verifier in (first, second):
        assert 43 <= len(verifier) <= 128
        assert re.fullmatch(r"[A-Za-z0-9\-._~]+", verifier)


def test_authorization_url_carries_pkce_state_and_consent_for_offline_access():
    url = authorization_url(
        "https://sso.example/auth?kc_idp_hint=corp",
        client_id="kuberde-cli",
        redirect_uri="http://127.0.0.1:5555/callback",
        scope="openid offline_access",
        state="s1",
        challenge="c1",
    )
    parts = urlsplit(url)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    assert parts.netloc == "sso.example"
    assert query == {
        "kc_idp_hint": "corp",
        "response_type": "code",
        "client_id": "kuberde-cli",
        "redirect_uri": "http://127.0.0.1:5555/callback",
        "scope": "openid offline_access",
        "state": "s1",
        "code_challenge": "c1",
        "code_challenge_method": "S256",
        "prompt": "consent",
    }
    plain = authorization_url(
        "https://sso.example/auth",
        client_id="c",
        redirect_uri="http://127.0.0.1:1/callback",
        scope="openid",
        state="s",
        challenge="c",
    )
    assert "prompt" not in parse_qs(urlsplit(plain).query)


# ---- token and device responses ---------------------------------------------------------------


def test_token_response_expiry_comes_from_expires_in_on_our_clock():
    grant = parse_token_response(
        {"access_token": "a", "token_type": "bearer", "expires_in": 300, "refresh_token": "r"},
        1000.0,
    )
    assert grant == TokenGrant("a", "r", 1300.0)
    as_text = parse_token_response(
        {"access_token": "a", "token_type": "Bearer", "expires_in": "60"}, 10.0
    )
    assert as_text == TokenGrant("a", None, 70.0)


def test_token_response_without_expires_in_falls_back_to_the_jwt_exp():
    token = _jwt(exp=4_000_000_000)
    grant = parse_token_response({"access_token": token, "token_type": "Bearer"}, 0.0)
    assert grant.expires_at == 4_000_000_000
    opaque = parse_token_response({"access_token": "opaque", "token_type": "Bearer"}, 0.0)
    assert opaque.expires_at is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"token_type": "Bearer"}, "no access_token"),
        ({"access_token": "", "token_type": "Bearer"}, "no access_token"),
        ({"access_token": "a", "token_type": "DPoP"}, "'DPoP' token; only Bearer"),
        ({"access_token": "a"}, "None token; only Bearer"),
    ],
)
def test_unusable_token_responses(data, message):
    with pytest.raises(LoginError, match=re.escape(message)):
        parse_token_response(data, 0.0)


def test_device_authorization_defaults_interval_to_five_seconds():
    parsed = parse_device_authorization(
        {
            "device_code": "d",
            "user_code": "ABCD-EFGH",
            "verification_uri": "https://sso.example/device",
            "expires_in": 600,
        }
    )
    assert parsed.interval == 5.0
    assert parsed.verification_uri_complete is None
    assert parsed.expires_in == 600.0


@pytest.mark.parametrize("missing", ["device_code", "user_code", "verification_uri", "expires_in"])
def test_device_authorization_missing_fields(missing):
    data = {
        "device_code": "d",
        "user_code": "u",
        "verification_uri": "https://sso.example/device",
        "expires_in": 600,
    }
    del data[missing]
    with pytest.raises(LoginError, match=missing):
        parse_device_authorization(data)


def _oauth(code: str) -> OAuthError:
    return OAuthError(code, None, "the token request")


def test_polling_decisions_follow_rfc8628():
    assert next_interval(_oauth("authorization_pending"), 5.0) == 5.0
    assert next_interval(_oauth("slow_down"), 5.0) == 5.0 + SLOW_DOWN_STEP == 10.0
    with pytest.raises(LoginError, match="the sign-in was denied"):
        next_interval(_oauth("access_denied"), 5.0)
    with pytest.raises(LoginError, match=r"the code expired .* run `kuberde login`"):
        next_interval(_oauth("expired_token"), 5.0)
    other = OAuthError("invalid_client", "unknown client", "the token request")
    with pytest.raises(OAuthError) as raised:
        next_interval(other, 5.0)
    assert raised.value is other
    assert str(other) == "the token request was refused: invalid_client (unknown client)"


# ---- claims --------------------------------------------------------------------------------


def test_identity_from_keycloak_claims():
    claims = unverified_claims(
        _jwt(preferred_username="alice", realm_access={"roles": ["admin", "user"]}, exp=0)
    )
    assert claims is not None
    assert identity(claims) == Identity("alice", True, ISSUER, datetime.fromtimestamp(0, UTC))


@pytest.mark.parametrize(
    ("claims", "user", "admin"),
    [
        ({"sub": "id-1"}, "id-1", False),
        ({"sub": "id-1", "preferred_username": "bob", "roles": ["admin"]}, "bob", True),
        ({"sub": "id-1", "groups": ["/admin"]}, "id-1", True),
        ({"sub": "id-1", "groups": ["/admins"], "realm_access": {"roles": "admin"}}, "id-1", False),
    ],
)
def test_identity_user_and_admin(claims, user, admin):
    who = identity(claims)
    assert (who.user, who.admin, who.expires_at) == (user, admin, None)


def test_unverified_claims_of_non_jwts_is_none():
    assert unverified_claims("opaque-token") is None
    assert unverified_claims("a.b.c") is None
    assert unverified_claims("a.W10.c") is None  # a JSON list, not claims
    assert unverified_claims("a.gA.c") is None  # not UTF-8
    assert unverified_claims("a.e30.c.d") is None


_CLAIM_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(claims=st.dictionaries(st.text(), _CLAIM_VALUES, max_size=6))
def test_unverified_claims_are_what_pyjwt_decodes(claims: dict[str, object]) -> None:
    """The standard-library decode reads every token as PyJWT's unverified decode does."""
    token = jwt.encode(claims, KEY, algorithm="ES256")
    expected = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
    assert unverified_claims(token) == expected


# ---- the stored login --------------------------------------------------------------------


def test_login_round_trips_through_the_config_file_with_mode_0600(tmp_path: Path):
    path = tmp_path / "kuberde" / "config.json"
    base = CliConfig(server="http://old:1", token="old", extra={"ssh": {"known_hosts": "/k"}})
    session = _session()
    save(with_login(base, session, "access-1"), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load(path)
    assert loaded.server == SERVER
    assert loaded.token == "access-1"
    assert loaded.extra["ssh"] == {"known_hosts": "/k"}
    assert stored_session(loaded) == session


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"login": "text"},
        {"login": {"server": SERVER, "issuer": ISSUER}},
        {"login": {"server": "not a url", "issuer": ISSUER, "client_id": "c"}},
    ],
)
def test_missing_or_broken_login_records_are_no_login(extra):
    assert stored_session(CliConfig(server=SERVER, token="t", extra=extra)) is None


def test_a_token_belongs_to_the_login_by_issuer_and_subject():
    stored = _jwt()
    config = with_login(CliConfig(), _session(), stored)
    session = stored_session(config)
    assert session is not None
    assert session_for(config, SERVER, stored) == session
    # An older token of the same login (as `kuberde ssh` passes in $KUBERDE_TOKEN) belongs.
    older = _jwt(exp=int(time.time()) - 10)
    assert session_for(config, SERVER + "/", older) is not None
    # Someone else's token, another issuer's, or another server never does.
    assert session_for(config, SERVER, _jwt(sub="id-bob")) is None
    assert session_for(config, SERVER, _jwt(iss="https://evil.example")) is None
    assert session_for(config, "https://other.example", stored) is None


def test_an_opaque_token_belongs_only_when_it_is_the_stored_one():
    config = with_login(CliConfig(), _session(subject=None), "opaque-1")
    assert session_for(config, SERVER, "opaque-1") is not None
    assert session_for(config, SERVER, "opaque-2") is None


def test_needs_refresh_within_the_margin():
    assert needs_refresh(_session(expires_at=1059.0), 1000.0)
    assert not needs_refresh(_session(expires_at=1061.0), 1000.0)
    assert not needs_refresh(_session(expires_at=None), 1000.0)
    assert needs_refresh(_session(expires_at=1200.0), 1000.0, margin=300.0)


def test_renewed_session_keeps_the_refresh_token_unless_rotated():
    session = _session()
    rotated = session.renewed(TokenGrant(_jwt(), "refresh-2", 5.0))
    assert (rotated.refresh_token, rotated.expires_at) == ("refresh-2", 5.0)
    kept = session.renewed(TokenGrant(_jwt(), None, 6.0))
    assert (kept.refresh_token, kept.expires_at) == ("refresh-1", 6.0)


def test_without_login_drops_the_login_and_only_its_token():
    token = _jwt()
    config = with_login(CliConfig(extra={"ssh": {"a": "b"}}), _session(), token)
    cleared = without_login(config)
    assert cleared.token is None
    assert dict(cleared.extra) == {"ssh": {"a": "b"}}
    assert cleared.server == SERVER
    # `kuberde up` wrote its own token over the login's: that token stays.
    foreign = with_login(CliConfig(), _session(), token)
    foreign = CliConfig(server=foreign.server, token="up-token", extra=foreign.extra)
    assert without_login(foreign).token == "up-token"


def test_unauthorized_message_says_to_log_in():
    failure = RefreshError("could not renew the login: the refresh request was refused")
    assert unauthorized_message(failure) == (
        "not authorized, and could not renew the login: the refresh request was refused"
        " — run `kuberde login`"
    )


# ---- Credentials without a network ----------------------------------------------------------


async def test_credentials_without_a_login_use_the_token_as_given(tmp_path: Path):
    path = tmp_path / "config.json"
    save(CliConfig(server=SERVER, token="up-token"), path)
    credentials = Credentials(ClientSettings(SERVER, "up-token"), path=path)
    assert await credentials.fresh() == ClientSettings(SERVER, "up-token")
    assert await credentials.renew(ClientSettings(SERVER, "up-token")) is None


async def test_credentials_adopt_a_newer_token_another_process_stored(tmp_path: Path):
    path = tmp_path / "config.json"
    newer = _jwt(jti="2")
    save(with_login(CliConfig(), _session(expires_at=time.time() + 3600), newer), path)
    older = _jwt(jti="1")
    credentials = Credentials(ClientSettings(SERVER, older, "/ca.pem"), path=path)
    assert await credentials.fresh() == ClientSettings(SERVER, newer, "/ca.pem")
    assert credentials.settings.token == newer
    # After a 401 for the older token the newer one is tried, without asking the issuer.
    again = Credentials(ClientSettings(SERVER, older), path=path)
    assert await again.renew(ClientSettings(SERVER, older)) == ClientSettings(SERVER, newer)


async def test_credentials_leave_someone_elses_token_alone(tmp_path: Path):
    path = tmp_path / "config.json"
    save(with_login(CliConfig(), _session(expires_at=0.0), _jwt()), path)
    bob = _jwt(sub="id-bob")
    credentials = Credentials(ClientSettings(SERVER, bob), path=path)
    assert await credentials.fresh() == ClientSettings(SERVER, bob)
    assert await credentials.renew(ClientSettings(SERVER, bob)) is None


async def test_config_lock_is_exclusive(tmp_path: Path):
    path = tmp_path / "config.json"
    order: list[str] = []
    inside = asyncio.Event()

    async def first() -> None:
        async with config_lock(path):
            order.append("first in")
            inside.set()
            for _ in range(10):
                await asyncio.sleep(0)  # second runs meanwhile: it finds the lock held
            assert order == ["first in"]
            order.append("first out")

    async def second() -> None:
        await inside.wait()
        async with config_lock(path):
            order.append("second in")

    await asyncio.wait_for(asyncio.gather(first(), second()), 10)
    assert order == ["first in", "first out", "second in"]
    assert stat.S_IMODE((tmp_path / ".config.json.lock").stat().st_mode) == 0o600


def test_login_record_never_holds_the_access_token(tmp_path: Path):
    path = tmp_path / "config.json"
    save(with_login(CliConfig(), _session(), "access-xyz"), path)
    record = json.loads(path.read_text())["login"]
    assert "access-xyz" not in json.dumps(record)
