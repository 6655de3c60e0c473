"""The authorization code flow with PKCE S256 (RFC 7636).

A client is redirected back to a loopback address (RFC 8252: the CLI, a dashboard on
loopback) or to a redirect URI registered for it, matched exactly (RFC 9700 §4.1.1), which
must be https unless it is loopback: a dashboard that is not on loopback signs in too.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from kuberde.auth.issuer.pages import PAGE_HEADERS
from kuberde.auth.issuer.protocol import Identity, OAuthError, granted_scope, sha256
from kuberde.auth.issuer.refresh import RefreshTokens
from kuberde.hosts import is_loopback_host

log = logging.getLogger(__name__)

_PKCE_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def valid_pkce_value(value: str) -> bool:
    """RFC 7636 §4.1: 43-128 characters of [A-Za-z0-9-._~]."""
    return 43 <= len(value) <= 128 and all(ch in _PKCE_ALPHABET for ch in value)


def _scheme_of_redirect(uri: str) -> tuple[str, str] | None:
    """The scheme and host of an absolute redirect URI without userinfo or fragment."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return None
    if parts.fragment or parts.username or parts.password or not parts.hostname:
        return None
    return parts.scheme, parts.hostname


def loopback_redirect(uri: str) -> bool:
    """RFC 8252 §7.3: http on a loopback address, any port (no registration needed)."""
    found = _scheme_of_redirect(uri)
    return found is not None and found[0] == "http" and is_loopback_host(found[1])


def registrable_redirect(uri: str) -> bool:
    """A redirect URI a client may register: https, or http on loopback; nothing in clear
    text over a network."""
    found = _scheme_of_redirect(uri)
    return found is not None and (found[0] == "https" or loopback_redirect(uri))


def allowed_redirect(uri: str, registered: frozenset[str]) -> bool:
    """Loopback at any port, or exactly one of the client's registered redirect URIs."""
    return loopback_redirect(uri) or uri in registered


@dataclass(frozen=True)
class AuthorizationRequest:
    client_id: str
    redirect_uri: str
    state: str | None
    code_challenge: str
    scope: str
    nonce: str | None

    @classmethod
    def parse(
        cls,
        params: Mapping[str, str],
        client_ids: frozenset[str],
        redirect_uris: Mapping[str, frozenset[str]],
    ) -> AuthorizationRequest:
        """Validate a request; client and redirect errors are shown, never redirected."""
        client_id = params.get("client_id", "")
        if client_id not in client_ids:
            raise OAuthError("invalid_client", "unknown client_id")
        redirect_uri = params.get("redirect_uri", "")
        if not allowed_redirect(redirect_uri, redirect_uris.get(client_id, frozenset())):
            raise OAuthError(
                "invalid_request",
                "redirect_uri must be an http loopback address or one registered for the client",
            )
        return cls(
            client_id=client_id,
            redirect_uri=redirect_uri,
            state=params.get("state"),
            code_challenge=params.get("code_challenge", ""),
            scope=params.get("scope", ""),
            nonce=params.get("nonce"),
        )

    def redirect_error(self, params: Mapping[str, str]) -> str | None:
        """The RFC 6749 §4.1.2.1 error to redirect with, or None; also validates the scope."""
        if params.get("response_type") != "code":
            return "unsupported_response_type"
        if params.get("code_challenge_method") != "S256":
            return "invalid_request"
        if not valid_pkce_value(self.code_challenge):
            return "invalid_request"
        try:
            granted_scope(self.scope or None)
        except OAuthError:
            return "invalid_scope"
        return None

    def form_fields(self) -> tuple[tuple[str, str | None], ...]:
        """The request as it travels through the sign-in form."""
        return (
            ("client_id", self.client_id),
            ("redirect_uri", self.redirect_uri),
            ("state", self.state),
            ("code_challenge", self.code_challenge),
            ("code_challenge_method", "S256"),
            ("response_type", "code"),
            ("scope", self.scope or None),
            ("nonce", self.nonce),
        )

    def redirect(self, issuer: str, **params: str) -> web.HTTPFound:
        """Back to the client, with the RFC 9207 `iss` parameter."""
        query: dict[str, str] = dict(params)
        if self.state is not None:
            query["state"] = self.state
        query["iss"] = issuer
        separator = "&" if urlsplit(self.redirect_uri).query else "?"
        return web.HTTPFound(
            f"{self.redirect_uri}{separator}{urlencode(query)}", headers=PAGE_HEADERS
        )


@dataclass(frozen=True)
class AuthorizationCode:
    client_id: str
    redirect_uri: str
    code_challenge: str
    scope: str
    nonce: str | None
    identity: Identity
    expires_at: float


class AuthorizationCodes:
    """Codes by hash; a replayed code revokes the refresh tokens its first use gave."""

    def __init__(self, ttl: float, refresh: RefreshTokens, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._refresh = refresh
        self._clock = clock
        self._codes: dict[str, AuthorizationCode] = {}
        #: Refresh token families issued from each redeemed code, revoked if it is replayed.
        self._redeemed: dict[str, tuple[float, str | None]] = {}

    def expire(self) -> None:
        now = self._clock()
        self._codes = {c: a for c, a in self._codes.items() if a.expires_at > now}
        self._redeemed = {c: r for c, r in self._redeemed.items() if r[0] > now}

    def issue(self, auth: AuthorizationRequest, identity: Identity) -> str:
        self.expire()
        code = secrets.token_urlsafe(32)
        self._codes[sha256(code)] = AuthorizationCode(
            client_id=auth.client_id,
            redirect_uri=auth.redirect_uri,
            code_challenge=auth.code_challenge,
            scope=granted_scope(auth.scope or None),
            nonce=auth.nonce,
            identity=identity,
            expires_at=self._clock() + self._ttl,
        )
        return code

    def redeem(self, form: Mapping[str, str], client_id: str) -> AuthorizationCode:
        self.expire()
        code_hash = sha256(form.get("code", ""))
        grant = self._codes.pop(code_hash, None)
        if grant is None:
            replayed = self._redeemed.pop(code_hash, None)
            if replayed is not None and replayed[1] is not None:
                self._refresh.revoke_family(replayed[1])
                log.warning("an authorization code was replayed; revoked the tokens it gave")
            raise OAuthError("invalid_grant", "the authorization code is invalid or expired")
        self._redeemed[code_hash] = (grant.expires_at, None)
        if grant.client_id != client_id:
            raise OAuthError("invalid_grant", "the code was issued to another client")
        if form.get("redirect_uri") != grant.redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri does not match the authorization")
        verifier = form.get("code_verifier", "")
        if not valid_pkce_value(verifier) or not secrets.compare_digest(
            pkce_challenge(verifier), grant.code_challenge
        ):
            raise OAuthError("invalid_grant", "the code_verifier does not match the challenge")
        return grant

    def gave_family(self, code: str, family: str | None) -> None:
        """Remember the refresh family a redeemed code gave, to revoke it on replay."""
        code_hash = sha256(code)
        if code_hash in self._redeemed:
            self._redeemed[code_hash] = (self._redeemed[code_hash][0], family)
