from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from kuberde.auth import (
    AGENT_AUDIENCE,
    LOCAL_ISSUER,
    MANAGEMENT_AUDIENCE,
    SIGNING_KEY_FILE,
    USER_AUDIENCE,
    AuthError,
    LocalTokenVerifier,
    Principal,
    SigningKey,
    TokenIssuer,
    TokenVerifier,
    bearer_token,
    load_or_create_signing_key,
)
from kuberde.auth.tokens import decode_signed
from kuberde.cli.token import app
from kuberde.clock import utc_now
from kuberde.naming import InvalidName


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def issuer(key: SigningKey) -> TokenIssuer:
    return TokenIssuer(key)


@pytest.fixture
def verifier(key: SigningKey) -> LocalTokenVerifier:
    return LocalTokenVerifier.from_signing_key(key)


def _now() -> int:
    return int(datetime.now(UTC).timestamp())


def _claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": LOCAL_ISSUER,
        "aud": USER_AUDIENCE,
        "sub": "alice",
        "iat": _now(),
        "exp": _now() + 600,
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def _sign(key: SigningKey, claims: dict[str, Any], kid: str | None = "default") -> str:
    headers = {"kid": key.kid if kid == "default" else kid} if kid is not None else {}
    return jwt.encode(claims, key.private_key, algorithm="ES256", headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value).encode())


def _payload(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


async def _refused(verify: Callable[[str], Awaitable[Principal]], token: str) -> AuthError:
    with pytest.raises(AuthError) as caught:
        await verify(token)
    error = caught.value
    # The token (or any segment of it) never leaks into messages or chained exceptions.
    for text in (str(error), repr(error), str(error.__cause__), str(error.__context__)):
        for part in [token, *token.split(".")]:
            if len(part) > 8:
                assert part not in text
    assert error.__cause__ is None
    return error


# Round trips


async def test_user_token_round_trip(issuer: TokenIssuer, verifier: LocalTokenVerifier) -> None:
    token = issuer.mint_user("alice")
    principal = await verifier.verify_user(token)
    exp = _payload(token)["exp"]
    assert principal == Principal(
        kind="user", name="alice", expires_at=datetime.fromtimestamp(exp, UTC)
    )


async def test_admin_user_token(issuer: TokenIssuer, verifier: LocalTokenVerifier) -> None:
    principal = await verifier.verify_user(issuer.mint_user("root", admin=True))
    assert principal.admin
    assert principal.name == "root"


async def test_agent_credential_round_trip(
    issuer: TokenIssuer, verifier: LocalTokenVerifier
) -> None:
    token = issuer.mint_agent("alice", "dev", uid="5f1c-uid")
    principal = await verifier.verify_agent(token)
    assert principal.kind == "agent"
    assert principal.name == "user-alice-dev"
    assert principal.owner == "alice"
    assert principal.agent_uid == "5f1c-uid"
    assert not principal.admin
    assert principal.expires_at == datetime.fromtimestamp(_payload(token)["exp"], UTC)


async def test_agent_credential_without_uid(
    issuer: TokenIssuer, verifier: LocalTokenVerifier
) -> None:
    token = issuer.mint_agent("alice", "smith-dev")
    assert "uid" not in _payload(token)
    principal = await verifier.verify_agent(token)
    assert (principal.name, principal.owner, principal.agent_uid) == (
        "user-alice-smith-dev",
        "alice",
        None,
    )


async def test_management_token_round_trip(
    issuer: TokenIssuer, verifier: LocalTokenVerifier
) -> None:
    principal = await verifier.verify_management(issuer.mint_management())
    assert (principal.kind, principal.name, principal.owner) == (
        "management",
        "kuberde-operator",
        None,
    )


def test_minted_claims_and_header(issuer: TokenIssuer, key: SigningKey) -> None:
    token = issuer.mint_agent("alice", "dev", uid="u-1")
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    assert header["kid"] == key.kid
    claims = _payload(token)
    assert claims["iss"] == LOCAL_ISSUER
    assert claims["aud"] == AGENT_AUDIENCE
    assert claims["sub"] == "user-alice-dev"
    assert claims["owner"] == "alice"
    assert claims["uid"] == "u-1"
    assert isinstance(claims["jti"], str) and claims["jti"]
    assert claims["exp"] - claims["iat"] == int(timedelta(days=30).total_seconds())
    assert _payload(issuer.mint_agent("alice", "dev"))["jti"] != claims["jti"]


def test_default_and_explicit_lifetimes(issuer: TokenIssuer) -> None:
    user = _payload(issuer.mint_user("alice"))
    assert user["exp"] - user["iat"] == 3600
    short = _payload(issuer.mint_user("alice", ttl=timedelta(minutes=5)))
    assert short["exp"] - short["iat"] == 300
    agent = _payload(issuer.mint_agent("alice", "dev", ttl=timedelta(hours=2)))
    assert agent["exp"] - agent["iat"] == 7200
    management = _payload(issuer.mint_management("ops", ttl=timedelta(days=1)))
    assert (management["sub"], management["aud"]) == ("ops", MANAGEMENT_AUDIENCE)
    assert management["exp"] - management["iat"] == 86400


def test_issuer_refuses_invalid_input(issuer: TokenIssuer) -> None:
    with pytest.raises(InvalidName):
        issuer.mint_user("Alice")
    with pytest.raises(InvalidName):
        issuer.mint_agent("alice", "Dev")
    with pytest.raises(InvalidName):
        issuer.mint_agent("alice", "x" * 60)
    with pytest.raises(ValueError, match="positive"):
        issuer.mint_user("alice", ttl=timedelta(0))
    with pytest.raises(ValueError, match="positive"):
        issuer.mint_agent("alice", "dev", ttl=-timedelta(seconds=1))
    with pytest.raises(ValueError, match="positive"):
        issuer.mint_agent("alice", "dev", ttl=timedelta(0))
    with pytest.raises(ValueError, match="uid"):
        issuer.mint_agent("alice", "dev", uid="")
    with pytest.raises(ValueError, match="subject"):
        issuer.mint_management("")


async def test_verifier_accepts_every_key_in_its_set(issuer: TokenIssuer, key: SigningKey) -> None:
    other = SigningKey.generate()
    verifier: TokenVerifier = LocalTokenVerifier(
        {key.kid: key.public_key, other.kid: other.public_key}
    )
    assert (await verifier.verify_user(issuer.mint_user("alice"))).name == "alice"
    assert (await verifier.verify_user(TokenIssuer(other).mint_user("bob"))).name == "bob"


def test_verifier_needs_p256_public_keys(key: SigningKey) -> None:
    with pytest.raises(ValueError, match="at least one"):
        LocalTokenVerifier({})
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(ValueError, match="P-256"):
        LocalTokenVerifier({"k": p384})


async def test_expiry_within_leeway_is_accepted(
    key: SigningKey, verifier: LocalTokenVerifier
) -> None:
    token = _sign(key, _claims(iat=_now() - 600, exp=_now() - 5))
    assert (await verifier.verify_user(token)).name == "alice"


# Bearer header parsing


def test_bearer_token_parses_the_header() -> None:
    assert bearer_token("Bearer abc.def-_.ghi") == "abc.def-_.ghi"
    assert bearer_token("bearer  abc.def.ghi ") == "abc.def.ghi"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("   ", "missing"),
        ("Bearer", "missing"),
        ("Bearer   ", "missing"),
        ("Basic YWxpY2U6cHc=", "malformed"),
        ("Token abc.def.ghi", "malformed"),
        ("Bearer abc def", "malformed"),
        ("Bearer abc\x00def", "malformed"),
        ("Bearer abc;def", "malformed"),
    ],
)
def test_bearer_token_refusals(header: str | None, reason: str) -> None:
    with pytest.raises(AuthError) as caught:
        bearer_token(header)
    assert caught.value.reason == reason
    if header and len(header) > 8:
        assert header.split()[-1] not in str(caught.value)


# Refusals


async def test_empty_token_is_missing(verifier: LocalTokenVerifier) -> None:
    assert (await _refused(verifier.verify_user, "")).reason == "missing"


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b", "a.b.c", "!!!.###.$$$", _segment({"alg": "ES256"}) + ".e30"],
)
async def test_malformed_tokens(verifier: LocalTokenVerifier, token: str) -> None:
    assert (await _refused(verifier.verify_user, token)).reason == "malformed"


async def test_expired_token(key: SigningKey, verifier: LocalTokenVerifier) -> None:
    token = _sign(key, _claims(iat=_now() - 7200, exp=_now() - 3600))
    error = await _refused(verifier.verify_user, token)
    assert error.reason == "expired"
    assert "expired" in str(error)


async def test_token_without_expiry(key: SigningKey, verifier: LocalTokenVerifier) -> None:
    error = await _refused(verifier.verify_user, _sign(key, _claims(exp=None)))
    assert error.reason == "bad_claims"
    assert "exp" in str(error)


async def test_token_issued_in_the_future(key: SigningKey, verifier: LocalTokenVerifier) -> None:
    token = _sign(key, _claims(iat=_now() + 3600, exp=_now() + 7200))
    assert (await _refused(verifier.verify_user, token)).reason == "bad_claims"


@pytest.mark.parametrize("audience", ["account", ["account", "other"], "KUBERDE"])
async def test_wrong_audience(
    key: SigningKey, verifier: LocalTokenVerifier, audience: str | list[str]
) -> None:
    token = _sign(key, _claims(aud=audience))
    assert (await _refused(verifier.verify_user, token)).reason == "bad_audience"


async def test_wrong_issuer(key: SigningKey, verifier: LocalTokenVerifier) -> None:
    token = _sign(key, _claims(iss="https://evil.example"))
    assert (await _refused(verifier.verify_user, token)).reason == "bad_issuer"


@pytest.mark.parametrize("with_kid", [True, False])
async def test_alg_none_is_refused(
    key: SigningKey, verifier: LocalTokenVerifier, with_kid: bool
) -> None:
    header = {"alg": "none", "typ": "JWT", **({"kid": key.kid} if with_kid else {})}
    token = f"{_segment(header)}.{_segment(_claims())}."
    assert (await _refused(verifier.verify_user, token)).reason == "bad_signature"


async def test_hs256_signed_with_the_public_key_is_refused(
    key: SigningKey, verifier: LocalTokenVerifier
) -> None:
    public_pem = key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{_segment({'alg': 'HS256', 'typ': 'JWT', 'kid': key.kid})}."
    signing_input += _segment(_claims())
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{_b64(mac)}"
    assert (await _refused(verifier.verify_user, token)).reason == "bad_signature"


async def test_token_from_an_unknown_key(verifier: LocalTokenVerifier) -> None:
    stranger = SigningKey.generate()
    token = TokenIssuer(stranger).mint_user("alice")
    assert (await _refused(verifier.verify_user, token)).reason == "unknown_key"


async def test_token_without_kid(key: SigningKey, verifier: LocalTokenVerifier) -> None:
    token = _sign(key, _claims(), kid=None)
    assert (await _refused(verifier.verify_user, token)).reason == "unknown_key"


async def test_token_signed_by_another_key_under_our_kid(
    key: SigningKey, verifier: LocalTokenVerifier
) -> None:
    stranger = SigningKey.generate()
    token = _sign(stranger, _claims(), kid=key.kid)
    assert (await _refused(verifier.verify_user, token)).reason == "bad_signature"


# A token seen again (every new stream brings the same one) skips the signature check only
# while nothing that made it valid has changed.


async def test_a_token_seen_again_needs_the_key_that_verified_it(
    issuer: TokenIssuer, key: SigningKey, verifier: LocalTokenVerifier
) -> None:
    token = issuer.mint_user("alice")
    first = await verifier.verify_user(token)
    assert await verifier.verify_user(token) == first
    # The kid now names another key, as after a rotation that reused it.
    rotated = LocalTokenVerifier({key.kid: SigningKey.generate().public_key})
    assert (await _refused(rotated.verify_user, token)).reason == "bad_signature"
    assert await verifier.verify_user(token) == first


def test_a_token_seen_again_is_checked_for_the_issuer_expected_now(key: SigningKey) -> None:
    token = _sign(key, _claims())
    options: dict[str, Any] = {"algorithm": "ES256", "leeway": 0, "required": ["exp"]}
    decode_signed(token, key.public_key, issuer=LOCAL_ISSUER, **options)
    with pytest.raises(AuthError) as caught:
        decode_signed(token, key.public_key, issuer="https://elsewhere", **options)
    assert caught.value.reason == "bad_issuer"


def test_a_token_seen_again_still_expires(key: SigningKey) -> None:
    token = _sign(key, _claims(exp=_now() + 1))
    options: dict[str, Any] = {"algorithm": "ES256", "issuer": LOCAL_ISSUER, "required": ["exp"]}
    assert decode_signed(token, key.public_key, leeway=0, **options)["sub"] == "alice"
    options["clock"] = lambda: utc_now() + timedelta(seconds=2)
    with pytest.raises(AuthError) as caught:
        decode_signed(token, key.public_key, leeway=0, **options)
    assert caught.value.reason == "expired"
    # The leeway the caller allows still applies to a token seen before.
    assert decode_signed(token, key.public_key, leeway=30, **options)["sub"] == "alice"


async def test_tampered_payload(issuer: TokenIssuer, verifier: LocalTokenVerifier) -> None:
    header, payload, signature = issuer.mint_user("bob").split(".")
    claims = _payload(f"{header}.{payload}.{signature}")
    claims["roles"] = ["admin"]
    token = f"{header}.{_segment(claims)}.{signature}"
    assert (await _refused(verifier.verify_user, token)).reason == "bad_signature"


MINTERS: dict[str, Callable[[TokenIssuer], str]] = {
    "user": lambda issuer: issuer.mint_user("alice", admin=True),
    "agent": lambda issuer: issuer.mint_agent("alice", "dev"),
    "management": lambda issuer: issuer.mint_management(),
}


@pytest.mark.parametrize(
    ("minted", "presented_as"),
    [(a, b) for a in MINTERS for b in MINTERS if a != b],
)
async def test_cross_kind_use_is_refused(
    issuer: TokenIssuer, verifier: LocalTokenVerifier, minted: str, presented_as: str
) -> None:
    token = MINTERS[minted](issuer)
    verify = getattr(verifier, f"verify_{presented_as}")
    error = await _refused(verify, token)
    assert error.reason == "wrong_kind"
    assert "cannot be used" in str(error)


@pytest.mark.parametrize("presented_as", ["user", "agent"])
async def test_token_claiming_two_kinds_is_refused(
    key: SigningKey, verifier: LocalTokenVerifier, presented_as: str
) -> None:
    token = _sign(
        key,
        _claims(sub="user-alice-dev", owner="alice", aud=[USER_AUDIENCE, AGENT_AUDIENCE]),
    )
    verify = getattr(verifier, f"verify_{presented_as}")
    assert (await _refused(verify, token)).reason == "wrong_kind"


@pytest.mark.parametrize(
    ("sub", "owner"),
    [
        ("user-bob-dev", "alice"),  # another owner's agent
        ("user-alice-dev", "alice-smith"),  # owner is a longer name sharing the prefix
        ("user-alice", "alice"),  # no name part
        ("user-alice--dev", "alice"),  # name part is not a valid name
        ("alice-dev", "alice"),  # not an agent ID
        ("user-alice-Dev", "alice"),  # not a DNS label
        ("user-alice-dev", None),  # owner missing
        ("user-alice-dev", "Alice"),  # owner not a valid name
        ("user-alice-dev", 7),  # owner not a string
    ],
)
async def test_agent_credential_identity_must_be_consistent(
    key: SigningKey, verifier: LocalTokenVerifier, sub: str, owner: object
) -> None:
    token = _sign(key, _claims(aud=AGENT_AUDIENCE, sub=sub, owner=owner))
    assert (await _refused(verifier.verify_agent, token)).reason == "bad_claims"


async def test_agent_credential_with_empty_uid(
    key: SigningKey, verifier: LocalTokenVerifier
) -> None:
    token = _sign(key, _claims(aud=AGENT_AUDIENCE, sub="user-alice-dev", owner="alice", uid=""))
    assert (await _refused(verifier.verify_agent, token)).reason == "bad_claims"


@pytest.mark.parametrize(
    "overrides",
    [
        {"sub": "Alice"},
        {"sub": "user@example.com"},
        {"sub": None},
        {"roles": "admin"},
        {"roles": [1]},
        {"aud": 5},
    ],
)
async def test_user_token_with_bad_claims(
    key: SigningKey, verifier: LocalTokenVerifier, overrides: dict[str, Any]
) -> None:
    token = _sign(key, _claims(**overrides))
    assert (await _refused(verifier.verify_user, token)).reason == "bad_claims"


async def test_management_token_with_empty_subject(
    key: SigningKey, verifier: LocalTokenVerifier
) -> None:
    token = _sign(key, _claims(aud=MANAGEMENT_AUDIENCE, sub=""))
    assert (await _refused(verifier.verify_management, token)).reason == "bad_claims"


# CLI


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _verifier_for(state_dir: Path) -> LocalTokenVerifier:
    return LocalTokenVerifier.from_signing_key(load_or_create_signing_key(state_dir))


async def test_cli_agent_prints_only_a_verifiable_token(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    code, out, err = _run(
        "agent", "--state-dir", str(state_dir), "--owner", "alice", "--name", "dev", "--uid", "u1"
    )
    assert code == 0, err
    assert out.count("\n") == 1
    principal = await _verifier_for(state_dir).verify_agent(out.strip())
    assert (principal.name, principal.owner, principal.agent_uid) == (
        "user-alice-dev",
        "alice",
        "u1",
    )
    claims = _payload(out.strip())
    assert claims["exp"] - claims["iat"] == 30 * 86400
    assert (state_dir / SIGNING_KEY_FILE).exists()


async def test_cli_user_with_admin_and_ttl(tmp_path: Path) -> None:
    code, out, err = _run(
        "user", "--state-dir", str(tmp_path), "--user", "alice", "--admin", "--ttl", "90m"
    )
    assert code == 0, err
    assert out.count("\n") == 1
    principal = await _verifier_for(tmp_path).verify_user(out.strip())
    assert (principal.name, principal.admin) == ("alice", True)
    claims = _payload(out.strip())
    assert claims["exp"] - claims["iat"] == 90 * 60


async def test_cli_management(tmp_path: Path) -> None:
    code, out, err = _run("management", "--state-dir", str(tmp_path), "--ttl", "2h")
    assert code == 0, err
    principal = await _verifier_for(tmp_path).verify_management(out.strip())
    assert principal.name == "kuberde-operator"
    claims = _payload(out.strip())
    assert claims["exp"] - claims["iat"] == 7200


def test_cli_tokens_share_the_state_dir_key(tmp_path: Path) -> None:
    _, first, _ = _run("user", "--state-dir", str(tmp_path), "--user", "alice")
    _, second, _ = _run("management", "--state-dir", str(tmp_path))
    kid = load_or_create_signing_key(tmp_path).kid
    assert jwt.get_unverified_header(first.strip())["kid"] == kid
    assert jwt.get_unverified_header(second.strip())["kid"] == kid


@pytest.mark.parametrize(
    "args",
    [
        ("user", "--user", "Alice"),
        ("user", "--user", "alice", "--ttl", "0"),
        ("user", "--user", "alice", "--ttl", "soon"),
        ("user", "--user", "alice", "--ttl", "-1h"),
        ("agent", "--owner", "alice", "--name", "Dev"),
        ("agent", "--owner", "alice"),
        ("management", "--subject", ""),
    ],
)
def test_cli_refuses_bad_input_without_printing_a_token(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    code, out, _ = _run(args[0], "--state-dir", str(tmp_path), *args[1:])
    assert code == 2
    assert out == ""


def test_cli_refuses_a_readable_key_file(tmp_path: Path) -> None:
    load_or_create_signing_key(tmp_path)
    (tmp_path / SIGNING_KEY_FILE).chmod(0o644)
    code, out, err = _run("user", "--state-dir", str(tmp_path), "--user", "alice")
    assert code == 1
    assert out == ""
    assert "chmod 600" in err
