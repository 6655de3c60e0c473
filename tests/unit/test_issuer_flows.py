"""The built-in issuer's pure flow logic: device grants, PKCE, loopback redirects."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kuberde.auth.issuer.authcode import loopback_redirect, pkce_challenge, valid_pkce_value
from kuberde.auth.issuer.device import DeviceGrants, normalize_user_code, shown_user_code
from kuberde.auth.issuer.protocol import Identity, OAuthError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_device_grant_pending_then_slow_down_then_approved() -> None:
    clock = Clock()
    grants = DeviceGrants(ttl=60, poll_interval=5, clock=clock)
    device_code, user_code = grants.start("cli", "openid")
    with pytest.raises(OAuthError) as first:
        grants.redeem(device_code, "cli")
    assert first.value.error == "authorization_pending"
    with pytest.raises(OAuthError) as second:
        grants.redeem(device_code, "cli")
    assert second.value.error == "slow_down"
    grant = grants.pending(shown_user_code(user_code).lower())
    assert grant is not None
    grant.approved = Identity("alice", admin=False, by_password=True)
    assert grants.pending(user_code) is None
    assert grants.redeem(device_code, "cli").approved == grant.approved
    with pytest.raises(OAuthError) as spent:
        grants.redeem(device_code, "cli")
    assert spent.value.error == "invalid_grant"


def test_device_grant_expires_and_is_forgotten() -> None:
    clock = Clock()
    grants = DeviceGrants(ttl=60, poll_interval=5, clock=clock)
    device_code, user_code = grants.start("cli", "openid")
    with pytest.raises(OAuthError) as other_client:
        grants.redeem(device_code, "other")
    assert other_client.value.error == "invalid_grant"
    clock.now += 61
    assert grants.pending(user_code) is None
    with pytest.raises(OAuthError) as expired:
        grants.redeem(device_code, "cli")
    assert expired.value.error == "expired_token"


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=12))
def test_normalized_user_codes_are_upper_alphanumeric(value: str) -> None:
    normalized = normalize_user_code(value)
    assert normalized == normalize_user_code(normalized)
    assert all(ch.isalnum() and not ch.islower() for ch in normalized)


@given(st.text(alphabet="abcXYZ019-._~", min_size=43, max_size=128))
def test_pkce_challenges_are_valid_pkce_values(verifier: str) -> None:
    assert valid_pkce_value(verifier)
    assert valid_pkce_value(pkce_challenge(verifier))


@pytest.mark.parametrize(
    ("uri", "allowed"),
    [
        ("http://127.0.0.1:5000/cb", True),
        ("http://localhost/cb", True),
        ("http://[::1]:1/", True),
        ("https://127.0.0.1/cb", False),
        ("http://example.com/cb", False),
        ("http://127.0.0.1:99999/", False),
        ("http://user@127.0.0.1/", False),
        ("http://127.0.0.1/#frag", False),
    ],
)
def test_only_http_loopback_redirects(uri: str, allowed: bool) -> None:
    assert loopback_redirect(uri) is allowed
