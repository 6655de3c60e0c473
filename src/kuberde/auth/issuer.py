"""The built-in OpenID Connect issuer of `kuberde up`, served by the gateway itself.

It speaks the standard protocols so the CLI needs no special case: discovery, JWKS (the
gateway's signing key), the device authorization grant (RFC 8628), rotating refresh tokens
(RFC 6749 §6), the authorization code flow with PKCE S256 (RFC 7636) and a loopback redirect
(RFC 8252), and revocation (RFC 7009). Access tokens are RFC 9068 JWTs for audience
`kuberde`; the gateway verifies them through `OidcProvider` pointed at this issuer's URL,
exactly as it verifies an external provider's.

Who may approve a sign-in:
- anyone named in `users.yaml` (see `kuberde.auth.users`), with their password, on the
  verification page (`/oauth/device`) or the authorization page (`/oauth/authorize`). The
  form carries the password, so a forged cross-site post gains nothing; repeated failures
  lock the name out for a while.
- a holder of a valid user token, for themselves: `POST /oauth/device/approve` with the
  token as a bearer credential. That is how the OS user who ran `kuberde up` (whose token
  `kuberde up` writes into their CLI config) signs in elsewhere, and how tests script it.

Refresh tokens are stored only as SHA-256 hashes in the state directory. Each use returns a
new one; presenting a spent one revokes its whole family (theft detection, OAuth 2.0
Security BCP §4.14). Removing a user from `users.yaml` stops their refresh tokens working.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jwt
from aiohttp import web

from kuberde.auth.keys import SigningKey
from kuberde.auth.oidc import UserClaims, UserVerifier
from kuberde.auth.tokens import (
    ADMIN_ROLE,
    ALGORITHM,
    DEFAULT_USER_TTL,
    USER_AUDIENCE,
    AuthError,
    bearer_token,
)
from kuberde.auth.users import UsersFile, UsersFileError
from kuberde.naming import InvalidName, validate_name

__all__ = [
    "BUILTIN_CLIENT_ID",
    "BUILTIN_USER_CLAIMS",
    "DEVICE_CODE_GRANT",
    "REFRESH_TOKENS_FILE",
    "BuiltinIssuer",
    "IssuerSettings",
]

log = logging.getLogger(__name__)

BUILTIN_CLIENT_ID = "kuberde-cli"
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
REFRESH_TOKENS_FILE = "refresh-tokens.json"
#: How the gateway reads this issuer's tokens (the role list is a top-level `roles` claim).
BUILTIN_USER_CLAIMS = UserClaims(roles_claim="roles")
SUPPORTED_SCOPES = frozenset({"openid", "profile", "offline_access"})
DEFAULT_SCOPE = "openid profile offline_access"
#: RFC 8628 §6.1: no vowels (no words), no look-alike digits; 20^8 codes.
_USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
_USER_CODE_LENGTH = 8
_SLOW_DOWN_STEP = 5
_MAX_TRACKED_NAMES = 10_000
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_PAGE_HEADERS = {
    **_NO_STORE,
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class IssuerSettings:
    access_token_ttl: timedelta = DEFAULT_USER_TTL
    refresh_token_ttl: timedelta = timedelta(days=30)
    device_code_ttl: float = 600.0
    poll_interval: int = 5
    authorization_code_ttl: float = 120.0
    client_ids: frozenset[str] = frozenset({BUILTIN_CLIENT_ID})
    max_failed_logins: int = 5
    lockout_seconds: float = 300.0


class OAuthError(Exception):
    """An RFC 6749 §5.2 error response."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True)
class _Identity:
    username: str
    admin: bool
    #: Signed in with a password from the users file (which must still list them on refresh).
    by_password: bool


@dataclass
class _DeviceGrant:
    client_id: str
    scope: str
    user_code: str
    expires_at: float
    interval: int
    last_poll: float | None = None
    approved: _Identity | None = None
    denied: bool = False


@dataclass(frozen=True)
class _AuthorizationCode:
    client_id: str
    redirect_uri: str
    code_challenge: str
    scope: str
    nonce: str | None
    identity: _Identity
    expires_at: float


@dataclass(frozen=True)
class _AuthorizationRequest:
    client_id: str
    redirect_uri: str
    state: str | None
    code_challenge: str
    scope: str
    nonce: str | None


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _normalize_user_code(value: str) -> str:
    return "".join(ch for ch in value.upper() if ch.isalnum())


def _pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _valid_pkce_value(value: str) -> bool:
    """RFC 7636 §4.1: 43-128 characters of [A-Za-z0-9-._~]."""
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    return 43 <= len(value) <= 128 and all(ch in allowed for ch in value)


def _loopback_redirect(uri: str) -> bool:
    """RFC 8252 §7.3: http on a loopback address, any port; nothing else is ever redirected to."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return False
    if parts.scheme != "http" or parts.fragment or parts.username or parts.password:
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def _scope(requested: str | None, allowed: str = DEFAULT_SCOPE) -> str:
    if not requested:
        return allowed
    scopes = requested.split()
    unknown = [s for s in scopes if s not in SUPPORTED_SCOPES]
    if unknown:
        raise OAuthError("invalid_scope", f"unsupported scope {unknown[0]!r}")
    granted = set(allowed.split())
    if not set(scopes) <= granted:
        raise OAuthError("invalid_scope", "the scope exceeds what was granted")
    return " ".join(scopes)


class _RefreshTokens:
    """Hashed refresh tokens in a 0600 JSON file, rotated on every use."""

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        self._path = path
        self._clock = clock
        self._entries: dict[str, dict[str, Any]] = self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            document = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable refresh token store %s: %s", self._path, exc)
            return {}
        entries = document.get("tokens") if isinstance(document, dict) else None
        return entries if isinstance(entries, dict) else {}

    def _save(self) -> None:
        now = self._clock()
        self._entries = {h: e for h, e in self._entries.items() if e["expires_at"] > now}
        fd, temp_name = tempfile.mkstemp(
            dir=self._path.parent, prefix=f".{self._path.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump({"tokens": self._entries}, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp_name, self._path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)

    def issue(
        self, identity: _Identity, client_id: str, scope: str, ttl: float, family: str | None
    ) -> str:
        token = secrets.token_urlsafe(32)
        self._entries[_sha256(token)] = {
            "family": family or secrets.token_urlsafe(12),
            "username": identity.username,
            "admin": identity.admin,
            "by_password": identity.by_password,
            "client_id": client_id,
            "scope": scope,
            "expires_at": self._clock() + ttl,
            "spent": False,
        }
        self._save()
        return token

    def spend(self, token: str, client_id: str) -> tuple[_Identity, str, str]:
        """Mark a token used; return (identity, scope, family). A reused token kills its family."""
        entry = self._entries.get(_sha256(token))
        if entry is None or entry["expires_at"] <= self._clock():
            raise OAuthError("invalid_grant", "the refresh token is invalid or expired")
        if entry["client_id"] != client_id:
            raise OAuthError("invalid_grant", "the refresh token was issued to another client")
        if entry["spent"]:
            self.revoke_family(entry["family"])
            log.warning(
                "a spent refresh token of %s was presented again; revoked its sign-in",
                entry["username"],
            )
            raise OAuthError("invalid_grant", "the refresh token was already used")
        entry["spent"] = True
        self._save()
        identity = _Identity(entry["username"], entry["admin"], entry["by_password"])
        return identity, entry["scope"], entry["family"]

    def family_of(self, token: str) -> str | None:
        entry = self._entries.get(_sha256(token))
        return entry["family"] if entry is not None else None

    def revoke_family(self, family: str) -> None:
        self._entries = {h: e for h, e in self._entries.items() if e["family"] != family}
        self._save()


@dataclass
class _FailedLogins:
    """Failed password attempts per username, to lock out guessing."""

    limit: int
    window: float
    attempts: dict[str, list[float]] = field(default_factory=dict)

    def locked(self, username: str, now: float) -> bool:
        recent = [t for t in self.attempts.get(username, []) if now - t < self.window]
        if recent:
            self.attempts[username] = recent
        else:
            self.attempts.pop(username, None)
        return len(recent) >= self.limit

    def failed(self, username: str, now: float) -> None:
        if len(self.attempts) >= _MAX_TRACKED_NAMES:
            self.attempts = {
                name: times
                for name, times in self.attempts.items()
                if now - times[-1] < self.window
            }
        self.attempts.setdefault(username, []).append(now)


def _page(title: str, body: str, status: int = 200) -> web.Response:
    document = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:28em;margin:3em auto}"
        "input{display:block;margin:.3em 0 1em;width:100%}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(
        text=document, status=status, content_type="text/html", headers=_PAGE_HEADERS
    )


def _hidden(name: str, value: str | None) -> str:
    if value is None:
        return ""
    return f"<input type='hidden' name='{name}' value='{html.escape(value, quote=True)}'>"


_CREDENTIAL_FIELDS = (
    "<label>Username <input name='username' autocomplete='username' required></label>"
    "<label>Password <input name='password' type='password' "
    "autocomplete='current-password' required></label>"
    "<button name='action' value='approve'>Approve</button> "
    "<button name='action' value='deny'>Deny</button>"
)


class BuiltinIssuer:
    """Routes for the issuer, mounted on the gateway's application by `kuberde up`."""

    def __init__(
        self,
        issuer: str,
        key: SigningKey,
        state_dir: Path,
        *,
        users: UsersFile,
        user_verifier: UserVerifier,
        settings: IssuerSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self._key = key
        self._users = users
        self._user_verifier = user_verifier
        self.settings = settings or IssuerSettings()
        self._clock = clock
        self._refresh = _RefreshTokens(state_dir / REFRESH_TOKENS_FILE, clock)
        self._devices: dict[str, _DeviceGrant] = {}
        self._user_codes: dict[str, str] = {}
        self._codes: dict[str, _AuthorizationCode] = {}
        #: Refresh token families issued from each redeemed code, revoked if it is replayed.
        self._redeemed: dict[str, tuple[float, str | None]] = {}
        self._failed = _FailedLogins(self.settings.max_failed_logins, self.settings.lockout_seconds)

    # ---- wiring ----------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/.well-known/openid-configuration", self.discovery),
            web.get("/oauth/jwks", self.jwks),
            web.post("/oauth/device/code", self.device_authorization),
            web.get("/oauth/device", self.verification_page),
            web.post("/oauth/device", self.verification_submit),
            web.post("/oauth/device/approve", self.device_approve),
            web.get("/oauth/authorize", self.authorize_page),
            web.post("/oauth/authorize", self.authorize_submit),
            web.post("/oauth/token", self.token),
            web.post("/oauth/revoke", self.revoke),
        ]

    def _url(self, path: str) -> str:
        return self.issuer + path

    # ---- tokens ----------------------------------------------------------------------------

    def _sign(self, claims: dict[str, Any], token_type: str) -> str:
        return jwt.encode(
            claims,
            self._key.private_key,
            algorithm=ALGORITHM,
            headers={"kid": self._key.kid, "typ": token_type},
        )

    def mint_access_token(
        self,
        username: str,
        *,
        admin: bool = False,
        ttl: timedelta | None = None,
        client_id: str = BUILTIN_CLIENT_ID,
        scope: str = DEFAULT_SCOPE,
    ) -> str:
        """An RFC 9068 access token for `username`, as the token endpoint issues them."""
        validate_name(username, "username")
        lifetime = ttl if ttl is not None else self.settings.access_token_ttl
        if lifetime <= timedelta(0):
            raise ValueError(f"token lifetime must be positive, got {lifetime}")
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": username,
            "aud": USER_AUDIENCE,
            "iat": now,
            "exp": now + int(lifetime.total_seconds()),
            "jti": secrets.token_urlsafe(16),
            "client_id": client_id,
            "scope": scope,
            "preferred_username": username,
        }
        if admin:
            claims["roles"] = [ADMIN_ROLE]
        return self._sign(claims, "at+jwt")

    def _id_token(self, identity: _Identity, client_id: str, nonce: str | None) -> str:
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": identity.username,
            "aud": client_id,
            "iat": now,
            "exp": now + int(self.settings.access_token_ttl.total_seconds()),
            "preferred_username": identity.username,
        }
        if nonce is not None:
            claims["nonce"] = nonce
        return self._sign(claims, "JWT")

    def _token_response(
        self,
        identity: _Identity,
        client_id: str,
        scope: str,
        *,
        family: str | None = None,
        nonce: str | None = None,
    ) -> tuple[dict[str, Any], str | None]:
        settings = self.settings
        refresh = self._refresh.issue(
            identity, client_id, scope, settings.refresh_token_ttl.total_seconds(), family
        )
        body: dict[str, Any] = {
            "access_token": self.mint_access_token(
                identity.username, admin=identity.admin, client_id=client_id, scope=scope
            ),
            "token_type": "Bearer",
            "expires_in": int(settings.access_token_ttl.total_seconds()),
            "refresh_token": refresh,
            "scope": scope,
        }
        if "openid" in scope.split():
            body["id_token"] = self._id_token(identity, client_id, nonce)
        return body, self._refresh.family_of(refresh)

    def _current_identity(self, identity: _Identity) -> _Identity:
        """Re-read a password user from the users file, so removal or demotion takes effect.

        A sign-in approved with a token keeps the identity the gateway verified then.
        """
        if not identity.by_password:
            return identity
        try:
            user = self._users.get(identity.username)
        except UsersFileError as exc:
            raise OAuthError("server_error", f"the users file is unusable: {exc}", 500) from None
        if user is None:
            raise OAuthError("invalid_grant", "the user no longer exists")
        return _Identity(user.username, user.admin, by_password=True)

    # ---- discovery and keys -----------------------------------------------------------------

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": self._url("/oauth/authorize"),
                "token_endpoint": self._url("/oauth/token"),
                "device_authorization_endpoint": self._url("/oauth/device/code"),
                "revocation_endpoint": self._url("/oauth/revoke"),
                "jwks_uri": self._url("/oauth/jwks"),
                "response_types_supported": ["code"],
                "response_modes_supported": ["query"],
                "grant_types_supported": ["authorization_code", "refresh_token", DEVICE_CODE_GRANT],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": [ALGORITHM],
                "token_endpoint_auth_methods_supported": ["none"],
                "revocation_endpoint_auth_methods_supported": ["none"],
                "code_challenge_methods_supported": ["S256"],
                "scopes_supported": sorted(SUPPORTED_SCOPES),
                "claims_supported": ["sub", "iss", "aud", "exp", "iat", "preferred_username"],
                "authorization_response_iss_parameter_supported": True,
            }
        )

    async def jwks(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [self._key.public_jwk()]})

    # ---- device authorization (RFC 8628) ---------------------------------------------------

    def _client(self, form: Mapping[str, str], request: web.Request) -> str:
        if "Authorization" in request.headers:
            raise OAuthError(
                "invalid_client", "public clients send client_id in the request body", 401
            )
        client_id = form.get("client_id", "")
        if client_id not in self.settings.client_ids:
            raise OAuthError("invalid_client", "unknown client_id", 401)
        return client_id

    def _expire(self) -> None:
        """Forget old grants; device codes linger one lifetime more to answer `expired_token`."""
        now = self._clock()
        for device_hash, grant in list(self._devices.items()):
            if grant.expires_at + self.settings.device_code_ttl <= now:
                del self._devices[device_hash]
                self._user_codes.pop(grant.user_code, None)
        self._codes = {c: a for c, a in self._codes.items() if a.expires_at > now}
        self._redeemed = {c: r for c, r in self._redeemed.items() if r[0] > now}

    def _new_user_code(self) -> str:
        while True:
            code = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(_USER_CODE_LENGTH))
            if code not in self._user_codes:
                return code

    async def device_authorization(self, request: web.Request) -> web.Response:
        try:
            form = await _form(request)
            client_id = self._client(form, request)
            scope = _scope(form.get("scope"))
        except OAuthError as exc:
            return _oauth_error(exc)
        self._expire()
        device_code = secrets.token_urlsafe(32)
        user_code = self._new_user_code()
        settings = self.settings
        self._devices[_sha256(device_code)] = _DeviceGrant(
            client_id=client_id,
            scope=scope,
            user_code=user_code,
            expires_at=self._clock() + settings.device_code_ttl,
            interval=settings.poll_interval,
        )
        self._user_codes[user_code] = _sha256(device_code)
        shown = f"{user_code[:4]}-{user_code[4:]}"
        verification_uri = self._url("/oauth/device")
        complete = f"{verification_uri}?{urlencode({'user_code': shown})}"
        return web.json_response(
            {
                "device_code": device_code,
                "user_code": shown,
                "verification_uri": verification_uri,
                "verification_uri_complete": complete,
                "expires_in": int(settings.device_code_ttl),
                "interval": settings.poll_interval,
            },
            headers=_NO_STORE,
        )

    def _pending_grant(self, user_code: str) -> _DeviceGrant | None:
        self._expire()
        device_hash = self._user_codes.get(_normalize_user_code(user_code))
        grant = self._devices.get(device_hash) if device_hash else None
        if grant is None or grant.approved is not None or grant.denied:
            return None
        return grant if grant.expires_at > self._clock() else None

    def _verification_form(self, user_code: str, message: str = "") -> str:
        return (
            f"{message}<form method='post' action='{self._url('/oauth/device')}'>"
            "<label>Code shown on your device <input name='user_code' required "
            f"value='{html.escape(user_code, quote=True)}'></label>"
            f"{_CREDENTIAL_FIELDS}</form>"
        )

    async def verification_page(self, request: web.Request) -> web.Response:
        user_code = request.query.get("user_code", "")
        return _page("Sign in to KubeRDE", self._verification_form(user_code))

    async def _authenticate(self, username: str, password: str) -> _Identity | None:
        now = self._clock()
        try:
            validate_name(username, "username")
        except InvalidName:
            return None  # no such user can exist: not worth a hash, nor a lockout entry
        if self._failed.locked(username, now):
            log.warning("sign-in for %r refused: too many failed attempts", username[:64])
            return None
        user = await self._users.authenticate(username, password)
        if user is None:
            self._failed.failed(username, now)
            log.info("failed password sign-in for %r", username[:64])
            return None
        return _Identity(user.username, user.admin, by_password=True)

    async def verification_submit(self, request: web.Request) -> web.Response:
        try:
            form = await _form(request)
        except OAuthError as exc:
            return _page("Sign in to KubeRDE", f"<p>{html.escape(exc.description)}</p>", 400)
        user_code = form.get("user_code", "")
        grant = self._pending_grant(user_code)
        if grant is None:
            message = "<p>That code is unknown, expired or already used.</p>"
            return _page("Sign in to KubeRDE", self._verification_form("", message), 400)
        identity = await self._authenticate(form.get("username", ""), form.get("password", ""))
        if identity is None:
            message = "<p>Wrong username or password.</p>"
            return _page("Sign in to KubeRDE", self._verification_form(user_code, message), 401)
        if form.get("action") == "deny":
            grant.denied = True
            return _page("Sign-in denied", "<p>The device was not signed in.</p>")
        grant.approved = identity
        log.info("device sign-in approved for %s", identity.username)
        return _page(
            "Signed in",
            f"<p>Signed in as {html.escape(identity.username)}. "
            "You can close this window and return to your terminal.</p>",
        )

    async def device_approve(self, request: web.Request) -> web.Response:
        """Approve a user code as the bearer of a valid user token (the local owner, tests)."""
        try:
            token = bearer_token(request.headers.get("Authorization"))
            principal = await self._user_verifier.verify_user(token)
        except AuthError as exc:
            return web.json_response(
                {"error": "invalid_token", "error_description": str(exc)},
                status=401,
                headers={**_NO_STORE, "WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        try:
            form = await _form(request)
        except OAuthError as exc:
            return _oauth_error(exc)
        grant = self._pending_grant(form.get("user_code", ""))
        if grant is None:
            return _oauth_error(
                OAuthError("invalid_grant", "the user code is unknown, expired or already used")
            )
        grant.approved = _Identity(principal.name, principal.admin, by_password=False)
        log.info("device sign-in approved for %s with their token", principal.name)
        return web.json_response({"approved": True, "user": principal.name}, headers=_NO_STORE)

    def _device_grant(self, form: Mapping[str, str], client_id: str) -> _DeviceGrant:
        device_code = form.get("device_code", "")
        self._expire()
        device_hash = _sha256(device_code)
        grant = self._devices.get(device_hash)
        if grant is None:
            raise OAuthError("invalid_grant", "the device code is unknown or already used")
        if grant.client_id != client_id:
            raise OAuthError("invalid_grant", "the device code was issued to another client")
        if grant.expires_at <= self._clock():
            self._forget_device(device_hash)
            raise OAuthError("expired_token", "the device code has expired; sign in again")
        if grant.denied:
            self._forget_device(device_hash)
            raise OAuthError("access_denied", "the sign-in was denied")
        if grant.approved is None:
            now = self._clock()
            too_soon = grant.last_poll is not None and now - grant.last_poll < grant.interval
            grant.last_poll = now
            if too_soon:
                grant.interval += _SLOW_DOWN_STEP
                raise OAuthError("slow_down", f"poll at most every {grant.interval} seconds")
            raise OAuthError("authorization_pending", "the sign-in has not been approved yet")
        self._forget_device(device_hash)
        return grant

    def _forget_device(self, device_hash: str) -> None:
        grant = self._devices.pop(device_hash, None)
        if grant is not None:
            self._user_codes.pop(grant.user_code, None)

    # ---- authorization code with PKCE ------------------------------------------------------

    def _authorization_request(self, params: Mapping[str, str]) -> _AuthorizationRequest:
        """Validate a request; client and redirect errors are shown, never redirected."""
        client_id = params.get("client_id", "")
        if client_id not in self.settings.client_ids:
            raise OAuthError("invalid_client", "unknown client_id")
        redirect_uri = params.get("redirect_uri", "")
        if not _loopback_redirect(redirect_uri):
            raise OAuthError("invalid_request", "redirect_uri must be an http loopback address")
        return _AuthorizationRequest(
            client_id=client_id,
            redirect_uri=redirect_uri,
            state=params.get("state"),
            code_challenge=params.get("code_challenge", ""),
            scope=params.get("scope", ""),
            nonce=params.get("nonce"),
        )

    def _redirect(self, auth: _AuthorizationRequest, **params: str) -> web.HTTPFound:
        query: dict[str, str] = dict(params)
        if auth.state is not None:
            query["state"] = auth.state
        query["iss"] = self.issuer
        separator = "&" if urlsplit(auth.redirect_uri).query else "?"
        return web.HTTPFound(
            f"{auth.redirect_uri}{separator}{urlencode(query)}", headers=_PAGE_HEADERS
        )

    def _check_authorization(
        self, auth: _AuthorizationRequest, params: Mapping[str, str]
    ) -> str | None:
        """The RFC 6749 §4.1.2.1 error to redirect with, or None; also validates the scope."""
        if params.get("response_type") != "code":
            return "unsupported_response_type"
        if params.get("code_challenge_method") != "S256":
            return "invalid_request"
        if not _valid_pkce_value(auth.code_challenge):
            return "invalid_request"
        try:
            _scope(auth.scope or None)
        except OAuthError:
            return "invalid_scope"
        return None

    def _authorize_form(self, auth: _AuthorizationRequest, message: str = "") -> str:
        fields = "".join(
            _hidden(name, value)
            for name, value in (
                ("client_id", auth.client_id),
                ("redirect_uri", auth.redirect_uri),
                ("state", auth.state),
                ("code_challenge", auth.code_challenge),
                ("code_challenge_method", "S256"),
                ("response_type", "code"),
                ("scope", auth.scope or None),
                ("nonce", auth.nonce),
            )
        )
        return (
            f"{message}<p>Sign in to let the KubeRDE command line act as you.</p>"
            f"<form method='post' action='{self._url('/oauth/authorize')}'>"
            f"{fields}{_CREDENTIAL_FIELDS}</form>"
        )

    async def authorize_page(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        try:
            auth = self._authorization_request(params)
        except OAuthError as exc:
            return _page("Sign-in request refused", f"<p>{html.escape(exc.description)}</p>", 400)
        error = self._check_authorization(auth, params)
        if error is not None:
            raise self._redirect(auth, error=error)
        return _page("Sign in to KubeRDE", self._authorize_form(auth))

    async def authorize_submit(self, request: web.Request) -> web.Response:
        try:
            params = await _form(request)
            auth = self._authorization_request(params)
        except OAuthError as exc:
            return _page("Sign-in request refused", f"<p>{html.escape(exc.description)}</p>", 400)
        error = self._check_authorization(auth, params)
        if error is not None:
            raise self._redirect(auth, error=error)
        if params.get("action") == "deny":
            raise self._redirect(auth, error="access_denied")
        identity = await self._authenticate(params.get("username", ""), params.get("password", ""))
        if identity is None:
            message = "<p>Wrong username or password.</p>"
            return _page("Sign in to KubeRDE", self._authorize_form(auth, message), 401)
        self._expire()
        code = secrets.token_urlsafe(32)
        self._codes[_sha256(code)] = _AuthorizationCode(
            client_id=auth.client_id,
            redirect_uri=auth.redirect_uri,
            code_challenge=auth.code_challenge,
            scope=_scope(auth.scope or None),
            nonce=auth.nonce,
            identity=identity,
            expires_at=self._clock() + self.settings.authorization_code_ttl,
        )
        log.info("browser sign-in approved for %s", identity.username)
        raise self._redirect(auth, code=code)

    def _redeem_code(self, form: Mapping[str, str], client_id: str) -> _AuthorizationCode:
        self._expire()
        code_hash = _sha256(form.get("code", ""))
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
        if not _valid_pkce_value(verifier) or not secrets.compare_digest(
            _pkce_challenge(verifier), grant.code_challenge
        ):
            raise OAuthError("invalid_grant", "the code_verifier does not match the challenge")
        return grant

    # ---- token and revocation endpoints ----------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        try:
            form = await _form(request)
            client_id = self._client(form, request)
            grant_type = form.get("grant_type")
            family: str | None = None
            nonce: str | None = None
            code_hash: str | None = None
            if grant_type == DEVICE_CODE_GRANT:
                device = self._device_grant(form, client_id)
                assert device.approved is not None
                identity, scope = device.approved, device.scope
            elif grant_type == "refresh_token":
                spent, granted, family = self._refresh.spend(
                    form.get("refresh_token", ""), client_id
                )
                identity = self._current_identity(spent)
                scope = _scope(form.get("scope"), granted)
            elif grant_type == "authorization_code":
                code = self._redeem_code(form, client_id)
                identity, scope, nonce = code.identity, code.scope, code.nonce
                code_hash = _sha256(form.get("code", ""))
            else:
                raise OAuthError("unsupported_grant_type", "unsupported grant_type")
            body, issued_family = self._token_response(
                identity, client_id, scope, family=family, nonce=nonce
            )
        except OAuthError as exc:
            return _oauth_error(exc)
        if code_hash is not None and code_hash in self._redeemed:
            self._redeemed[code_hash] = (self._redeemed[code_hash][0], issued_family)
        return web.json_response(body, headers=_NO_STORE)

    async def revoke(self, request: web.Request) -> web.Response:
        """RFC 7009: revoke a refresh token's whole sign-in; unknown tokens are not an error."""
        try:
            form = await _form(request)
            self._client(form, request)
        except OAuthError as exc:
            return _oauth_error(exc)
        family = self._refresh.family_of(form.get("token", ""))
        if family is not None:
            self._refresh.revoke_family(family)
        return web.Response(status=200, headers=_NO_STORE)


async def _form(request: web.Request) -> dict[str, str]:
    if request.method != "POST":
        return {}
    if request.content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    posted = await request.post()
    return {key: value for key, value in posted.items() if isinstance(value, str)}


def _oauth_error(exc: OAuthError) -> web.Response:
    headers = dict(_NO_STORE)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="kuberde"'
    return web.json_response(
        {"error": exc.error, "error_description": exc.description},
        status=exc.status,
        headers=headers,
    )
