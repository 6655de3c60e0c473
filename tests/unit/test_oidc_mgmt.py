"""Management credentials: the shared token file and ServiceAccount tokens via TokenReview."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jwt
import pytest

from kuberde.auth import AuthError
from kuberde.auth.mgmt import SharedTokenVerifier, TokenReviewVerifier, service_account_username

OPERATOR = service_account_username("kuberde", "kuberde-operator")


async def test_the_shared_token_is_accepted_and_others_are_not(tmp_path: Path) -> None:
    path = tmp_path / "mgmt-token"
    path.write_text("first-secret-token\n")
    verifier = SharedTokenVerifier(path)
    principal = await verifier.verify_management("first-secret-token")
    assert (principal.kind, principal.name) == ("management", "shared-token")
    for wrong in ("first-secret-toke", "first-secret-token2", "x", ""):
        with pytest.raises(AuthError) as info:
            await verifier.verify_management(wrong)
        assert "first-secret" not in str(info.value)


async def test_a_rotated_secret_takes_effect_at_once(tmp_path: Path) -> None:
    path = tmp_path / "mgmt-token"
    path.write_text("old-token")
    verifier = SharedTokenVerifier(path)
    await verifier.verify_management("old-token")
    path.write_text("new-token")
    assert (await verifier.verify_management("new-token")).kind == "management"
    with pytest.raises(AuthError):
        await verifier.verify_management("old-token")


async def test_a_missing_or_empty_file_accepts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "mgmt-token"
    verifier = SharedTokenVerifier(path)
    with pytest.raises(AuthError) as info:
        await verifier.verify_management("anything")
    assert info.value.reason == "unknown_key"
    path.write_text("  \n")
    with pytest.raises(AuthError):
        await verifier.verify_management("")


def service_account_token(name: str = "kuberde-operator") -> str:
    return jwt.encode(
        {"iss": "https://kubernetes.default.svc", "sub": f"system:serviceaccount:kuberde:{name}"},
        "not-checked-here-the-api-server-does-it-anyway",
        algorithm="HS256",
    )


class Reviewer:
    """Answers like the API server: authenticated tokens map to usernames."""

    def __init__(self, known: dict[str, str], audiences: Sequence[str] = ()) -> None:
        self.known = known
        self.audiences = list(audiences)
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.failing = False

    async def review(self, token: str, audiences: Sequence[str]) -> Mapping[str, Any]:
        self.calls.append((token, tuple(audiences)))
        if self.failing:
            raise OSError("connection refused")
        username = self.known.get(token)
        if username is None:
            return {"authenticated": False, "error": "invalid bearer token"}
        return {
            "authenticated": True,
            "user": {"username": username, "groups": ["system:serviceaccounts"]},
            "audiences": self.audiences or list(audiences),
        }


class Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


async def test_an_allowed_service_account_is_accepted_and_cached() -> None:
    token = service_account_token()
    reviewer = Reviewer({token: OPERATOR})
    clock = Clock()
    verifier = TokenReviewVerifier(reviewer, allowed_users=[OPERATOR], clock=clock)
    for _ in range(5):
        principal = await verifier.verify_management(token)
        assert (principal.kind, principal.name) == ("management", OPERATOR)
    assert len(reviewer.calls) == 1
    clock.now += 61
    await verifier.verify_management(token)
    assert len(reviewer.calls) == 2


async def test_other_accounts_and_unknown_tokens_are_refused() -> None:
    other = service_account_token("default")
    reviewer = Reviewer({other: service_account_username("kuberde", "default")})
    verifier = TokenReviewVerifier(reviewer, allowed_users=[OPERATOR])
    with pytest.raises(AuthError) as info:
        await verifier.verify_management(other)
    assert info.value.reason == "wrong_kind"
    with pytest.raises(AuthError) as info:
        await verifier.verify_management(service_account_token("forged"))
    assert info.value.reason == "bad_signature"


async def test_tokens_that_are_not_jwts_never_reach_the_api_server() -> None:
    reviewer = Reviewer({})
    verifier = TokenReviewVerifier(reviewer, allowed_users=[OPERATOR])
    for token in ("", "shared-secret"):
        with pytest.raises(AuthError):
            await verifier.verify_management(token)
    assert reviewer.calls == []


async def test_audiences_are_requested_and_checked() -> None:
    token = service_account_token()
    verifier = TokenReviewVerifier(
        Reviewer({token: OPERATOR}), allowed_users=[OPERATOR], audiences=["kuberde-gateway"]
    )
    assert (await verifier.verify_management(token)).name == OPERATOR
    wrong = TokenReviewVerifier(
        Reviewer({token: OPERATOR}, audiences=["https://kubernetes.default.svc"]),
        allowed_users=[OPERATOR],
        audiences=["kuberde-gateway"],
    )
    with pytest.raises(AuthError):
        await wrong.verify_management(token)


async def test_an_unreachable_api_server_refuses_without_caching() -> None:
    token = service_account_token()
    reviewer = Reviewer({token: OPERATOR})
    reviewer.failing = True
    verifier = TokenReviewVerifier(reviewer, allowed_users=[OPERATOR])
    with pytest.raises(AuthError) as info:
        await verifier.verify_management(token)
    assert info.value.reason == "unknown_key"
    assert token not in str(info.value)
    reviewer.failing = False
    assert (await verifier.verify_management(token)).name == OPERATOR


async def test_refusals_are_cached_briefly() -> None:
    token = service_account_token("forged")
    reviewer = Reviewer({})
    clock = Clock()
    verifier = TokenReviewVerifier(reviewer, allowed_users=[OPERATOR], clock=clock)
    for _ in range(3):
        with pytest.raises(AuthError):
            await verifier.verify_management(token)
    assert len(reviewer.calls) == 1
    clock.now += 11
    reviewer.known[token] = OPERATOR
    assert (await verifier.verify_management(token)).name == OPERATOR


def test_at_least_one_account_is_required() -> None:
    with pytest.raises(ValueError):
        TokenReviewVerifier(Reviewer({}), allowed_users=[])
