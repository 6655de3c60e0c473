"""The CLI's OAuth 2.0 / OpenID Connect client: sign-in flows, the stored login, renewal.

Only the standards are assumed, so any issuer works (Keycloak, the built-in one of
`kuberde up`): discovery (OIDC Discovery 1.0), the device authorization grant (RFC 8628),
the authorization code flow with PKCE S256 and a loopback redirect (RFC 7636, RFC 8252),
the refresh grant (RFC 6749 §6) and token revocation (RFC 7009).

The access token is the config file's `token`, so every command keeps using it as before;
the rest of the login (issuer, client, refresh token, expiry) sits beside it under `login`.
Tokens only ever travel in POST bodies and `Authorization` headers, never in URLs, argv,
logs or messages.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from kuberde.cli.config import (
    DEFAULT_SCOPE,
    CliConfig,
    ClientSettings,
    ConfigError,
    config_path,
    load,
    normalize_server,
    save,
)
from kuberde.tls import client_ssl_context

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "DEFAULT_SCOPE",
    "REFRESH_MARGIN",
    "AuthConfig",
    "Credentials",
    "DeviceAuthorization",
    "Identity",
    "LoginError",
    "LoginSession",
    "OAuthError",
    "ProviderMetadata",
    "RefreshError",
    "TokenGrant",
    "authorization_url",
    "browser_login",
    "code_challenge",
    "config_lock",
    "device_login",
    "discover",
    "fetch_auth_config",
    "http_session",
    "identity",
    "needs_refresh",
    "new_verifier",
    "next_interval",
    "parse_device_authorization",
    "parse_token_response",
    "refresh_grant",
    "revoke",
    "session_for",
    "stored_session",
    "unauthorized_message",
    "unverified_claims",
    "with_login",
    "without_login",
]

logger = logging.getLogger(__name__)

#: Renew when less than this many seconds are left, so a connection never starts with a
#: token that expires during the handshake.
REFRESH_MARGIN = 60.0
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
#: RFC 8628 §3.5: `slow_down` adds 5 seconds to the polling interval, for good.
SLOW_DOWN_STEP = 5.0
_DEFAULT_INTERVAL = 5.0
_LOCK_TIMEOUT = 30.0
_BROWSER_WAIT = 300.0
_LOCK_POLL = 0.05
_LOGIN_KEY = "login"
_CALLBACK_PATH = "/callback"
_MAX_BODY = 1024 * 1024
_ADMIN = "admin"


class LoginError(Exception):
    """Signing in, renewing or signing out failed; the message is meant for the user."""


class OAuthError(LoginError):
    """The issuer answered with an OAuth error code (RFC 6749 §5.2)."""

    def __init__(self, error: str, description: str | None, what: str) -> None:
        detail = f"{error} ({description})" if description else error
        super().__init__(f"{what} was refused: {detail}")
        self.error = error
        self.description = description


class RefreshError(LoginError):
    """The stored login could not be renewed; the user has to sign in again."""


def unauthorized_message(failure: RefreshError) -> str:
    """What to tell a user whose token the gateway refused and could not be renewed."""
    return f"not authorized, and {failure} — run `kuberde login`"


# ---- pure pieces ---------------------------------------------------------------------------


def unverified_claims(token: str) -> dict[str, Any] | None:
    """A JWT's claims without checking anything: only for display and for telling which
    login a token came from. The gateway is the one that verifies, so this decodes the
    payload with the standard library (PyJWT and `cryptography` cost every command ~50 ms)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


@dataclass(frozen=True)
class Identity:
    user: str | None
    admin: bool
    issuer: str | None
    expires_at: datetime | None


def _strings(value: object) -> list[str]:
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def identity(claims: Mapping[str, Any]) -> Identity:
    """Who the claims name, by the gateway's defaults: `preferred_username` (else `sub`),
    admin through Keycloak's realm roles, a `roles` list or an `admin` group."""
    user = claims.get("preferred_username") or claims.get("sub")
    realm = claims.get("realm_access")
    roles = _strings(realm.get("roles")) if isinstance(realm, dict) else []
    roles += _strings(claims.get("roles"))
    groups = [group.strip("/") for group in _strings(claims.get("groups"))]
    exp = claims.get("exp")
    expires = (
        datetime.fromtimestamp(exp, UTC)
        if isinstance(exp, int | float) and not isinstance(exp, bool)
        else None
    )
    issuer = claims.get("iss")
    return Identity(
        user=user if isinstance(user, str) else None,
        admin=_ADMIN in roles or _ADMIN in groups,
        issuer=issuer if isinstance(issuer, str) else None,
        expires_at=expires,
    )


def new_verifier() -> str:
    """A PKCE code verifier: 64 random bytes, 86 characters of the unreserved alphabet."""
    return secrets.token_urlsafe(64)


def code_challenge(verifier: str) -> str:
    """RFC 7636 S256: BASE64URL(SHA256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorization_url(
    endpoint: str, *, client_id: str, redirect_uri: str, scope: str, state: str, challenge: str
) -> str:
    """The authorization request; OIDC Core §11 wants `prompt=consent` for offline access."""
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if "offline_access" in scope.split():
        params["prompt"] = "consent"
    separator = "&" if urlsplit(endpoint).query else "?"
    return endpoint + separator + urlencode(params)


@dataclass(frozen=True)
class TokenGrant:
    access_token: str
    refresh_token: str | None
    #: Epoch seconds; from `expires_in` on our own clock, else the JWT's `exp`.
    expires_at: float | None


def _seconds(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.isdigit():
        return float(value)
    return None


def parse_token_response(data: Mapping[str, Any], now: float) -> TokenGrant:
    """A successful token response (RFC 6749 §5.1); only Bearer tokens are usable here."""
    access = data.get("access_token")
    if not isinstance(access, str) or not access:
        raise LoginError("the issuer's token response has no access_token")
    token_type = data.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise LoginError(f"the issuer issued a {token_type!r} token; only Bearer tokens work")
    refresh = data.get("refresh_token")
    lifetime = _seconds(data.get("expires_in"))
    expires_at: float | None = None
    if lifetime is not None:
        expires_at = now + lifetime
    else:
        claims = unverified_claims(access)
        exp = claims.get("exp") if claims is not None else None
        expires_at = _seconds(exp)
    return TokenGrant(
        access_token=access,
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        expires_at=expires_at,
    )


@dataclass(frozen=True)
class DeviceAuthorization:
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float


def parse_device_authorization(data: Mapping[str, Any]) -> DeviceAuthorization:
    """RFC 8628 §3.2; `interval` defaults to 5 s."""
    fields = {}
    for key in ("device_code", "user_code", "verification_uri"):
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise LoginError(f"the issuer's device authorization response has no {key}")
        fields[key] = value
    complete = data.get("verification_uri_complete")
    expires_in = _seconds(data.get("expires_in"))
    if expires_in is None:
        raise LoginError("the issuer's device authorization response has no expires_in")
    interval = _seconds(data.get("interval"))
    return DeviceAuthorization(
        device_code=fields["device_code"],
        user_code=fields["user_code"],
        verification_uri=fields["verification_uri"],
        verification_uri_complete=complete if isinstance(complete, str) and complete else None,
        expires_in=expires_in,
        interval=_DEFAULT_INTERVAL if interval is None else interval,
    )


def next_interval(error: OAuthError, interval: float) -> float:
    """RFC 8628 §3.5: the interval before the next poll, or the error that ends the wait."""
    if error.error == "authorization_pending":
        return interval
    if error.error == "slow_down":
        return interval + SLOW_DOWN_STEP
    if error.error == "access_denied":
        raise LoginError("the sign-in was denied")
    if error.error == "expired_token":
        raise LoginError("the code expired before the sign-in was finished; run `kuberde login`")
    raise error


@dataclass(frozen=True)
class LoginSession:
    """What `kuberde login` keeps beside the access token (config key `login`).

    `subject` is the access token's `sub`: a token with the same issuer and subject belongs
    to this login even when it reached us through `$KUBERDE_TOKEN` (as with `kuberde ssh`).
    """

    server: str
    issuer: str
    client_id: str
    subject: str | None
    refresh_token: str | None
    expires_at: float | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def renewed(self, grant: TokenGrant) -> LoginSession:
        """After a refresh: a rotated refresh token replaces the old one (RFC 6749 §6)."""
        claims = unverified_claims(grant.access_token)
        subject = claims.get("sub") if claims is not None else None
        return dataclasses.replace(
            self,
            subject=subject if isinstance(subject, str) else None,
            refresh_token=grant.refresh_token or self.refresh_token,
            expires_at=grant.expires_at,
        )


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def stored_session(config: CliConfig) -> LoginSession | None:
    """The login in the config file, or None when there is none (or it is unreadable)."""
    raw = config.extra.get(_LOGIN_KEY)
    if not isinstance(raw, dict):
        return None
    server, issuer, client_id = (_optional_str(raw, k) for k in ("server", "issuer", "client_id"))
    if server is None or issuer is None or client_id is None:
        return None
    try:
        server = normalize_server(server)
    except ConfigError:
        return None
    return LoginSession(
        server=server,
        issuer=issuer,
        client_id=client_id,
        subject=_optional_str(raw, "subject"),
        refresh_token=_optional_str(raw, "refresh_token"),
        expires_at=_seconds(raw.get("expires_at")),
    )


def _same_issuer(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def session_for(config: CliConfig, server: str, token: str) -> LoginSession | None:
    """The stored login that `token` (used with `server`) belongs to, if any.

    A JWT belongs to it when issuer and subject match; an opaque token only when it is the
    stored one. A token passed by hand for someone else is never renewed as this login.
    """
    session = stored_session(config)
    if session is None or config.token is None or session.server != normalize_server(server):
        return None
    claims = unverified_claims(token)
    if claims is None:
        return session if token == config.token and session.subject is None else None
    issuer, subject = claims.get("iss"), claims.get("sub")
    if not isinstance(issuer, str) or not _same_issuer(issuer, session.issuer):
        return None
    return session if subject == session.subject else None


def needs_refresh(session: LoginSession, now: float, margin: float = REFRESH_MARGIN) -> bool:
    """True when the stored access token has less than `margin` seconds left."""
    return session.expires_at is not None and session.expires_at - now < margin


def with_login(config: CliConfig, session: LoginSession, access_token: str) -> CliConfig:
    extra = {**config.extra, _LOGIN_KEY: session.to_json()}
    return dataclasses.replace(config, server=session.server, token=access_token, extra=extra)


def without_login(config: CliConfig) -> CliConfig:
    """The config with the login and its access token removed; a token that belongs to
    something else (say, one `kuberde up` wrote over it) stays."""
    session = stored_session(config)
    token = config.token
    if session is not None and token is not None and session_for(config, session.server, token):
        token = None
    extra = {key: value for key, value in config.extra.items() if key != _LOGIN_KEY}
    return dataclasses.replace(config, token=token, extra=extra)


# ---- HTTP --------------------------------------------------------------------------------


def http_session(ca_file: str | None) -> aiohttp.ClientSession:
    """A session for the gateway and the issuer, trusting the system CAs plus `ca_file`
    (aiohttp is loaded here: commands that keep their stored login never need it)."""
    import aiohttp

    connector = aiohttp.TCPConnector(ssl=client_ssl_context(ca_file))
    timeout = aiohttp.ClientTimeout(total=30, sock_connect=10)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


async def _read_json(reply: aiohttp.ClientResponse) -> object:
    body = await reply.content.read(_MAX_BODY)
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


async def _get_json(http: aiohttp.ClientSession, url: str, what: str) -> dict[str, Any]:
    import aiohttp

    try:
        async with http.get(url, headers={"Accept": "application/json"}) as reply:
            data = await _read_json(reply)
            status = reply.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise LoginError(f"cannot fetch {what} from {url}: {exc or type(exc).__name__}") from None
    if status != 200:
        raise LoginError(f"cannot fetch {what}: {url} answered HTTP {status}")
    if not isinstance(data, dict):
        raise LoginError(f"{what} at {url} is not a JSON object")
    return data


async def _post_form(
    http: aiohttp.ClientSession, url: str, form: Mapping[str, str], what: str
) -> dict[str, Any]:
    """POST an OAuth request; an OAuth error becomes OAuthError. Redirects are refused: they
    would resend the secrets in the body somewhere else."""
    import aiohttp

    try:
        async with http.post(
            url, data=dict(form), headers={"Accept": "application/json"}, allow_redirects=False
        ) as reply:
            data = await _read_json(reply)
            status = reply.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise LoginError(
            f"{what} failed: cannot reach {url}: {exc or type(exc).__name__}"
        ) from None
    if status == 200 and isinstance(data, dict):
        return data
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        description = data.get("error_description")
        raise OAuthError(data["error"], description if isinstance(description, str) else None, what)
    raise LoginError(f"{what} failed: {url} answered HTTP {status}")


@dataclass(frozen=True)
class AuthConfig:
    """What the gateway's `GET /api/auth/config` says about signing in."""

    issuer: str
    client_id: str | None
    scope: str | None


async def fetch_auth_config(http: aiohttp.ClientSession, server: str) -> AuthConfig:
    url = normalize_server(server) + "/api/auth/config"
    data = await _get_json(http, url, "the gateway's sign-in settings")
    issuer = _optional_str(data, "issuer")
    if issuer is None:
        raise LoginError(f"{url} names no issuer; pass --issuer and --client-id")
    return AuthConfig(
        issuer=issuer,
        client_id=_optional_str(data, "client_id"),
        scope=_optional_str(data, "scope"),
    )


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    token_endpoint: str
    device_authorization_endpoint: str | None
    authorization_endpoint: str | None
    revocation_endpoint: str | None
    code_challenge_methods: tuple[str, ...] | None


async def discover(http: aiohttp.ClientSession, issuer: str) -> ProviderMetadata:
    """The issuer's discovery document; its `issuer` must be the one we asked (OIDC
    Discovery §4.3), or a document from somewhere else could redirect our tokens."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    data = await _get_json(http, url, "the issuer's discovery document")
    advertised = _optional_str(data, "issuer")
    if advertised is None or not _same_issuer(advertised, issuer):
        raise LoginError(f"the discovery document at {url} is for issuer {advertised!r}")
    token_endpoint = _optional_str(data, "token_endpoint")
    if token_endpoint is None:
        raise LoginError(f"the discovery document at {url} has no token_endpoint")
    methods = data.get("code_challenge_methods_supported")
    return ProviderMetadata(
        issuer=advertised,
        token_endpoint=token_endpoint,
        device_authorization_endpoint=_optional_str(data, "device_authorization_endpoint"),
        authorization_endpoint=_optional_str(data, "authorization_endpoint"),
        revocation_endpoint=_optional_str(data, "revocation_endpoint"),
        code_challenge_methods=tuple(_strings(methods)) if isinstance(methods, list) else None,
    )


async def device_login(
    http: aiohttp.ClientSession,
    metadata: ProviderMetadata,
    client_id: str,
    scope: str,
    *,
    notify: Callable[[DeviceAuthorization], None],
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> TokenGrant:
    """RFC 8628: get a user code, show it through `notify`, poll until the user approves."""
    endpoint = metadata.device_authorization_endpoint
    if endpoint is None:
        raise LoginError(
            f"{metadata.issuer} does not offer the device flow; use `kuberde login --browser`"
        )
    started = await _post_form(
        http, endpoint, {"client_id": client_id, "scope": scope}, "the device authorization request"
    )
    authorization = parse_device_authorization(started)
    deadline = clock() + authorization.expires_in
    notify(authorization)
    interval = authorization.interval
    form = {
        "grant_type": DEVICE_GRANT,
        "device_code": authorization.device_code,
        "client_id": client_id,
    }
    while True:
        await sleep(interval)
        if clock() >= deadline:
            raise LoginError(
                "the code expired before the sign-in was finished; run `kuberde login`"
            )
        try:
            answer = await _post_form(http, metadata.token_endpoint, form, "the token request")
        except OAuthError as exc:
            interval = next_interval(exc, interval)
            continue
        return parse_token_response(answer, time.time())


_DONE_PAGE = "Signed in to KubeRDE. You can close this window and return to the terminal.\n"
_FAILED_PAGE = "The sign-in failed; the terminal says why. You can close this window.\n"


async def browser_login(
    http: aiohttp.ClientSession,
    metadata: ProviderMetadata,
    client_id: str,
    scope: str,
    *,
    open_url: Callable[[str], object],
) -> TokenGrant:
    """Authorization code + PKCE S256 with a loopback redirect on 127.0.0.1 (RFC 8252 §7.3).

    A callback with the wrong `state` is answered 400 and ignored, so another local page
    cannot inject a code; a matching one ends the wait. RFC 9207's `iss`, when present,
    must be our issuer.
    """
    from aiohttp import web  # the server half of aiohttp, for this flow alone

    endpoint = metadata.authorization_endpoint
    if endpoint is None:
        raise LoginError(f"{metadata.issuer} does not offer the authorization code flow")
    methods = metadata.code_challenge_methods
    if methods is not None and "S256" not in methods:
        raise LoginError(f"{metadata.issuer} does not support PKCE with S256")
    verifier = new_verifier()
    state = secrets.token_urlsafe(32)
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def callback(request: web.Request) -> web.Response:
        query = request.query
        if not secrets.compare_digest(query.get("state", ""), state):
            return web.Response(status=400, text="This is not the sign-in this CLI started.\n")
        issuer = query.get("iss")
        if issuer is not None and not _same_issuer(issuer, metadata.issuer):
            failure = LoginError(f"the sign-in answer came from issuer {issuer!r}")
        elif "error" in query:
            failure = OAuthError(
                query["error"], query.get("error_description"), "the authorization request"
            )
        elif query.get("code"):
            if not answer.done():
                answer.set_result(query["code"])
            return web.Response(text=_DONE_PAGE)
        else:
            failure = LoginError("the issuer redirected back without a code")
        if not answer.done():
            answer.set_exception(failure)
        return web.Response(status=400, text=_FAILED_PAGE)

    app = web.Application()
    app.router.add_get(_CALLBACK_PATH, callback)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        await web.SockSite(runner, listener).start()
        redirect_uri = f"http://127.0.0.1:{port}{_CALLBACK_PATH}"
        open_url(
            authorization_url(
                endpoint,
                client_id=client_id,
                redirect_uri=redirect_uri,
                scope=scope,
                state=state,
                challenge=code_challenge(verifier),
            )
        )
        try:
            code = await asyncio.wait_for(answer, _BROWSER_WAIT)
        except TimeoutError:
            raise LoginError(f"no sign-in arrived within {_BROWSER_WAIT:g}s") from None
    finally:
        await runner.cleanup()
        listener.close()
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": client_id,
        "code_verifier": verifier,
    }
    return parse_token_response(
        await _post_form(http, metadata.token_endpoint, form, "the token request"), time.time()
    )


async def refresh_grant(
    http: aiohttp.ClientSession, metadata: ProviderMetadata, client_id: str, refresh_token: str
) -> TokenGrant:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    answer = await _post_form(http, metadata.token_endpoint, form, "the refresh request")
    return parse_token_response(answer, time.time())


async def revoke(
    http: aiohttp.ClientSession, metadata: ProviderMetadata, client_id: str, refresh_token: str
) -> bool:
    """RFC 7009; False when the issuer has no revocation endpoint."""
    import aiohttp

    if metadata.revocation_endpoint is None:
        return False
    form = {
        "token": refresh_token,
        "token_type_hint": "refresh_token",
        "client_id": client_id,
    }
    try:
        async with http.post(
            metadata.revocation_endpoint, data=form, allow_redirects=False
        ) as reply:
            data = await _read_json(reply)
            status = reply.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise LoginError(f"cannot reach {metadata.revocation_endpoint}: {exc}") from None
    if status != 200:
        error = data.get("error") if isinstance(data, dict) else None
        raise LoginError(
            f"{metadata.revocation_endpoint} refused the revocation: "
            + (error if isinstance(error, str) else f"HTTP {status}")
        )
    return True


# ---- the stored login ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def config_lock(path: Path) -> AsyncIterator[None]:
    """Serialize read-modify-write of the config file between `kuberde` processes: with
    refresh-token rotation, two processes refreshing at once would log the user out."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + _LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LoginError(
                        f"another kuberde held {path} for {_LOCK_TIMEOUT:g}s; try again"
                    ) from None
                await asyncio.sleep(_LOCK_POLL)
        yield
    finally:
        os.close(fd)


class Credentials:
    """The token for one gateway, renewed from the stored login before it expires and
    once more when the gateway refuses it.

    Share one per process and gateway: concurrent connections then wait for a single
    refresh. A token that does not belong to the stored login is used as it is.
    """

    def __init__(
        self,
        settings: ClientSettings,
        *,
        path: Path | None = None,
        margin: float = REFRESH_MARGIN,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._path = config_path() if path is None else path
        self._margin = margin
        self._clock = clock
        self._lock = asyncio.Lock()
        self._failed: tuple[str, RefreshError] | None = None

    @property
    def settings(self) -> ClientSettings:
        return self._settings

    async def fresh(self) -> ClientSettings:
        """The settings to connect with. If renewing fails the current token is still
        tried (it may have time left); the gateway's answer decides."""
        async with self._lock:
            session, stored = self._lookup(self._settings.token)
            if session is None or stored is None:
                return self._settings
            if not needs_refresh(session, self._clock(), self._margin):
                return self._adopt(stored)
            try:
                return self._adopt(await self._renew(stored))
            except RefreshError as exc:
                self._failed = (self._settings.token, exc)
                logger.warning("%s", exc)
                return self._settings

    async def renew(self, rejected: ClientSettings) -> ClientSettings | None:
        """New settings after the gateway answered 401 to `rejected`; None when no stored
        login covers its token. Raises RefreshError when renewing fails."""
        async with self._lock:
            if self._failed is not None and self._failed[0] == rejected.token:
                raise self._failed[1]
            session, stored = self._lookup(rejected.token)
            if session is None or stored is None:
                return None
            if stored != rejected.token and not needs_refresh(session, self._clock(), self._margin):
                return self._adopt(stored)
            try:
                return self._adopt(await self._renew(rejected.token))
            except RefreshError as exc:
                self._failed = (rejected.token, exc)
                raise

    def _lookup(self, token: str) -> tuple[LoginSession | None, str | None]:
        try:
            config = load(self._path)
        except ConfigError:
            return None, None
        return session_for(config, self._settings.server, token), config.token

    def _adopt(self, token: str) -> ClientSettings:
        if token != self._settings.token:
            self._settings = dataclasses.replace(self._settings, token=token)
        return self._settings

    async def _renew(self, stale: str) -> str:
        """Refresh under the file lock, unless another process already replaced `stale`."""
        try:
            async with config_lock(self._path):
                config = load(self._path)
                session = session_for(config, self._settings.server, stale)
                if session is None or config.token is None:
                    raise RefreshError("could not renew the login: it was removed or replaced")
                if config.token != stale and not needs_refresh(
                    session, self._clock(), self._margin
                ):
                    return config.token
                if session.refresh_token is None:
                    raise RefreshError(
                        "could not renew the login: the issuer gave no refresh token"
                    )
                async with http_session(self._settings.ca_file) as http:
                    metadata = await discover(http, session.issuer)
                    grant = await refresh_grant(
                        http, metadata, session.client_id, session.refresh_token
                    )
                save(with_login(config, session.renewed(grant), grant.access_token), self._path)
                return grant.access_token
        except RefreshError:
            raise
        except (LoginError, ConfigError) as exc:
            raise RefreshError(f"could not renew the login: {exc}") from None
