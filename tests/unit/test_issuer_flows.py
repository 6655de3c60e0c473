"""The built-in issuer's pure flow logic: device grants, PKCE, loopback and registered redirects."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from kuberde.auth.issuer import BUILTIN_CLIENT_ID, IssuerSettings
from kuberde.auth.issuer.authcode import (
    allowed_redirect,
    loopback_redirect,
    pkce_challenge,
    registrable_redirect,
    valid_pkce_value,
)
from kuberde.auth.issuer.device import DeviceGrants, normalize_user_code, shown_user_code
from kuberde.auth.issuer.protocol import Identity, OAuthError
from kuberde.cli.main import app


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


@pytest.mark.parametrize(
    ("uri", "registrable"),
    [
        ("https://rde.example.com/auth/callback", True),
        ("https://rde.example.com:8443/auth/callback", True),
        ("http://127.0.0.1:8080/auth/callback", True),
        ("http://rde.example.com/auth/callback", False),
        ("https://rde.example.com/cb#frag", False),
        ("https://user@rde.example.com/cb", False),
        ("https:///cb", False),
        ("https://rde.example.com:99999/cb", False),
        ("custom:/cb", False),
        ("", False),
    ],
)
def test_registered_redirects_must_be_https_unless_loopback(uri: str, registrable: bool) -> None:
    assert registrable_redirect(uri) is registrable


def test_registered_redirects_match_exactly() -> None:
    registered = frozenset({"https://rde.example.com/auth/callback"})
    assert allowed_redirect("https://rde.example.com/auth/callback", registered)
    assert allowed_redirect("http://127.0.0.1:5000/cb", registered)
    for near_miss in (
        "https://rde.example.com/auth/callback/",
        "https://rde.example.com/auth/callback?x=1",
        "https://RDE.example.com/auth/callback",
        "https://rde.example.com:443/auth/callback",
        "https://rde.example.com.evil.example/auth/callback",
        "https://rde.example.com/auth/callbac",
    ):
        assert not allowed_redirect(near_miss, registered), near_miss
    assert not allowed_redirect("https://rde.example.com/auth/callback", frozenset())


@pytest.mark.parametrize(
    "redirect_uris",
    [
        {BUILTIN_CLIENT_ID: frozenset({"http://rde.example.com/auth/callback"})},
        {"someone-else": frozenset({"https://rde.example.com/auth/callback"})},
    ],
)
def test_bad_redirect_registrations_are_refused(redirect_uris: dict[str, frozenset[str]]) -> None:
    with pytest.raises(ValueError, match="redirect URI"):
        IssuerSettings(redirect_uris=redirect_uris)


def test_kuberde_up_refuses_a_clear_text_public_url(tmp_path: Path) -> None:
    """Checked before anything starts: no state directory, no socket."""
    state_dir = tmp_path / "state"
    result = CliRunner().invoke(
        app,
        ["up", "--state-dir", str(state_dir), "--public-url", "http://rde.example.com"],
    )
    assert result.exit_code == 2
    assert "--public-url" in result.stderr and "https" in result.stderr
    assert not state_dir.exists()
