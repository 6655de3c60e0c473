"""The issuer's HTTP endpoints: each flow's handlers, token minting and the shared sign-in."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web

from kuberde.auth.issuer.authcode import (
    AuthorizationCodes,
    AuthorizationRequest,
    registrable_redirect,
)
from kuberde.auth.issuer.device import DeviceGrants, shown_user_code
from kuberde.auth.issuer.discovery import discovery_document
from kuberde.auth.issuer.lockout import SignInLimiter, SignInLimits
from kuberde.auth.issuer.pages import (
    SIGN_IN_TITLE,
    authorize_form,
    message_page,
    page,
    verification_form,
)
from kuberde.auth.issuer.protocol import (
    BUILTIN_CLIENT_ID,
    CREDENTIAL_CLAIM,
    DEFAULT_SCOPE,
    DEVICE_CODE_GRANT,
    NO_STORE,
    Identity,
    OAuthError,
    granted_scope,
    oauth_error,
    read_form,
)
from kuberde.auth.issuer.refresh import REFRESH_TOKENS_FILE, RefreshTokens
from kuberde.auth.keys import SigningKey
from kuberde.auth.oidc import UserVerifier
from kuberde.auth.tokens import (
    ADMIN_ROLE,
    ALGORITHM,
    DEFAULT_USER_TTL,
    USER_AUDIENCE,
    AuthError,
    Principal,
    bearer_token,
)
from kuberde.auth.users import LocalUser, UsersFile, UsersFileError, password_fingerprint
from kuberde.naming import InvalidName, validate_name

log = logging.getLogger("kuberde.auth.issuer")

_WRONG_PASSWORD = "Wrong username or password."


@dataclass(frozen=True)
class IssuerSettings:
    access_token_ttl: timedelta = DEFAULT_USER_TTL
    refresh_token_ttl: timedelta = timedelta(days=30)
    device_code_ttl: float = 600.0
    poll_interval: int = 5
    authorization_code_ttl: float = 120.0
    client_ids: frozenset[str] = frozenset({BUILTIN_CLIENT_ID})
    sign_in: SignInLimits = field(default_factory=SignInLimits)
    #: A bearer token approves a device code only this soon after it was issued; older
    #: ones need the password too (a stolen token must not become a 30-day sign-in).
    approval_token_max_age: float = 300.0
    #: Redirect URIs registered per client, beyond loopback (matched exactly): the
    #: dashboard's `{public URL}/auth/callback` when it is not on loopback.
    redirect_uris: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: Where browsers reach the issuer's pages (sign-in forms), if not at the issuer URL.
    browser_url: str | None = None

    def __post_init__(self) -> None:
        for client, uris in self.redirect_uris.items():
            if client not in self.client_ids:
                raise ValueError(f"redirect URIs for an unknown client {client!r}")
            for uri in uris:
                if not registrable_redirect(uri):
                    raise ValueError(
                        f"redirect URI {uri!r} of client {client!r} must be https "
                        "(or http on a loopback address), without a fragment or user info"
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
        self._refresh = RefreshTokens(state_dir / REFRESH_TOKENS_FILE, clock)
        self._devices = DeviceGrants(
            self.settings.device_code_ttl, self.settings.poll_interval, clock
        )
        self._codes = AuthorizationCodes(self.settings.authorization_code_ttl, self._refresh, clock)
        self._limiter = SignInLimiter(self.settings.sign_in)

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
        """A page browsers open: at the browser URL when the issuer URL is not theirs."""
        return (self.settings.browser_url or self.issuer).rstrip("/") + path

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
        credential: str | None = None,
    ) -> str:
        """An RFC 9068 access token for `username`, as the token endpoint issues them.

        `credential` (`Identity.credential`) binds it to the user's entry in the users
        file; without one (the token `kuberde up` mints for the OS user who runs it) it
        is good until it expires."""
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
        if credential is not None:
            claims[CREDENTIAL_CLAIM] = credential
        return self._sign(claims, "at+jwt")

    def _id_token(self, identity: Identity, client_id: str, nonce: str | None) -> str:
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
        identity: Identity,
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
                identity.username,
                admin=identity.admin,
                client_id=client_id,
                scope=scope,
                credential=identity.credential,
            ),
            "token_type": "Bearer",
            "expires_in": int(settings.access_token_ttl.total_seconds()),
            "refresh_token": refresh,
            "scope": scope,
        }
        if "openid" in scope.split():
            body["id_token"] = self._id_token(identity, client_id, nonce)
        return body, self._refresh.family_of(refresh)

    def _listed_user(self, username: str) -> LocalUser | None:
        try:
            return self._users.get(username)
        except UsersFileError as exc:
            raise OAuthError("server_error", f"the users file is unusable: {exc}", 500) from None

    def _current_identity(self, identity: Identity) -> Identity:
        """Re-read the user from the users file, so removal, demotion or a new password ends
        or changes the sign-in. A sign-in approved with the token of someone the users file
        never listed keeps the identity the gateway verified then.
        """
        if not identity.by_password and identity.credential is None:
            return identity
        user = self._listed_user(identity.username)
        if user is None:
            raise OAuthError("invalid_grant", "the user no longer exists")
        if password_fingerprint(user) != identity.credential:
            raise OAuthError("invalid_grant", "the password changed; sign in again")
        admin = user.admin if identity.by_password else identity.admin
        return Identity(user.username, admin, identity.by_password, identity.credential)

    def _client(self, form: Mapping[str, str], request: web.Request) -> str:
        if "Authorization" in request.headers:
            raise OAuthError(
                "invalid_client", "public clients send client_id in the request body", 401
            )
        client_id = form.get("client_id", "")
        if client_id not in self.settings.client_ids:
            raise OAuthError("invalid_client", "unknown client_id", 401)
        return client_id

    async def _authenticate(
        self, form: Mapping[str, str], request: web.Request
    ) -> Identity | tuple[int, str]:
        """The identity the form's username and password prove, or (status, why not)."""
        address = request.remote or ""
        username, password = form.get("username", ""), form.get("password", "")
        now = self._clock()
        try:
            validate_name(username, "username")
        except InvalidName:
            return 401, _WRONG_PASSWORD  # no such user can exist: not worth a hash, nor a limit
        refusal = self._limiter.refusal(username, address, now)
        if refusal is not None:
            log.warning("sign-in for %r from %s refused: %s", username[:64], address, refusal)
            return 429, refusal
        user = await self._users.authenticate(username, password)
        if user is None:
            self._limiter.failed(username, address, now)
            log.info("failed password sign-in for %r from %s", username[:64], address)
            return 401, _WRONG_PASSWORD
        self._limiter.succeeded(username, address, now)
        return Identity(
            user.username, user.admin, by_password=True, credential=password_fingerprint(user)
        )

    # ---- discovery and keys -----------------------------------------------------------------

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response(discovery_document(self.issuer, self._url("")))

    async def jwks(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [self._key.public_jwk()]})

    # ---- device authorization (RFC 8628) ---------------------------------------------------

    async def device_authorization(self, request: web.Request) -> web.Response:
        try:
            form = await read_form(request)
            client_id = self._client(form, request)
            scope = granted_scope(form.get("scope"))
        except OAuthError as exc:
            return oauth_error(exc)
        device_code, user_code = self._devices.start(client_id, scope)
        shown = shown_user_code(user_code)
        verification_uri = self._url("/oauth/device")
        complete = f"{verification_uri}?{urlencode({'user_code': shown})}"
        settings = self.settings
        return web.json_response(
            {
                "device_code": device_code,
                "user_code": shown,
                "verification_uri": verification_uri,
                "verification_uri_complete": complete,
                "expires_in": int(settings.device_code_ttl),
                "interval": settings.poll_interval,
            },
            headers=NO_STORE,
        )

    async def verification_page(self, request: web.Request) -> web.Response:
        user_code = request.query.get("user_code", "")
        return page(SIGN_IN_TITLE, verification_form(self._url("/oauth/device"), user_code))

    async def verification_submit(self, request: web.Request) -> web.Response:
        try:
            form = await read_form(request)
        except OAuthError as exc:
            return message_page(SIGN_IN_TITLE, exc.description, 400)
        action = self._url("/oauth/device")
        user_code = form.get("user_code", "")
        grant = self._devices.pending(user_code)
        if grant is None:
            message = "That code is unknown, expired or already used."
            return page(SIGN_IN_TITLE, verification_form(action, "", message), 400)
        identity = await self._authenticate(form, request)
        if isinstance(identity, tuple):
            status, why = identity
            return page(SIGN_IN_TITLE, verification_form(action, user_code, why), status)
        if form.get("action") == "deny":
            grant.denied = True
            return message_page("Sign-in denied", "The device was not signed in.")
        grant.approved = identity
        log.info("device sign-in approved for %s", identity.username)
        return message_page(
            "Signed in",
            f"Signed in as {identity.username}. "
            "You can close this window and return to your terminal.",
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
                headers={**NO_STORE, "WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        try:
            form = await read_form(request)
        except OAuthError as exc:
            return oauth_error(exc)
        grant = self._devices.pending(form.get("user_code", ""))
        if grant is None:
            return oauth_error(
                OAuthError("invalid_grant", "the user code is unknown, expired or already used")
            )
        identity = await self._approver(principal, form, request)
        if isinstance(identity, OAuthError):
            return oauth_error(identity)
        grant.approved = identity
        log.info("device sign-in approved for %s with their token", principal.name)
        return web.json_response({"approved": True, "user": principal.name}, headers=NO_STORE)

    async def _approver(
        self, principal: Principal, form: Mapping[str, str], request: web.Request
    ) -> Identity | OAuthError:
        """Who approves: the token holder with their password, or with a fresh token."""
        if "password" in form:
            proved = await self._authenticate(
                {"username": principal.name, "password": form["password"]}, request
            )
            if isinstance(proved, tuple):
                return OAuthError("access_denied", proved[1], proved[0])
            return proved
        issued = principal.issued_at
        max_age = self.settings.approval_token_max_age
        if issued is None or self._clock() - issued.timestamp() > max_age:
            return OAuthError(
                "login_required",
                f"approving a sign-in needs a token issued in the last {max_age:g} seconds, "
                "or your password (form field `password`)",
                401,
            )
        user = self._listed_user(principal.name)
        credential = password_fingerprint(user) if user is not None else None
        return Identity(principal.name, principal.admin, by_password=False, credential=credential)

    # ---- authorization code with PKCE ------------------------------------------------------

    def _authorize_page(self, auth: AuthorizationRequest, message: str = "") -> str:
        return authorize_form(self._url("/oauth/authorize"), auth.form_fields(), message)

    async def _authorization(
        self, request: web.Request
    ) -> tuple[AuthorizationRequest, dict[str, str]] | web.Response:
        """The validated request from the query (GET) or form (POST), or the page refusing it.

        Raises the redirect for errors RFC 6749 §4.1.2.1 reports to the client.
        """
        try:
            params = await read_form(request) if request.method == "POST" else dict(request.query)
            auth = AuthorizationRequest.parse(
                params, self.settings.client_ids, self.settings.redirect_uris
            )
        except OAuthError as exc:
            return message_page("Sign-in request refused", exc.description, 400)
        error = auth.redirect_error(params)
        if error is not None:
            raise auth.redirect(self.issuer, error=error)
        return auth, params

    async def authorize_page(self, request: web.Request) -> web.Response:
        validated = await self._authorization(request)
        if isinstance(validated, web.Response):
            return validated
        return page(SIGN_IN_TITLE, self._authorize_page(validated[0]))

    async def authorize_submit(self, request: web.Request) -> web.Response:
        validated = await self._authorization(request)
        if isinstance(validated, web.Response):
            return validated
        auth, params = validated
        if params.get("action") == "deny":
            raise auth.redirect(self.issuer, error="access_denied")
        identity = await self._authenticate(params, request)
        if isinstance(identity, tuple):
            status, why = identity
            return page(SIGN_IN_TITLE, self._authorize_page(auth, why), status)
        code = self._codes.issue(auth, identity)
        log.info("browser sign-in approved for %s", identity.username)
        raise auth.redirect(self.issuer, code=code)

    # ---- token and revocation endpoints ----------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        try:
            form = await read_form(request)
            client_id = self._client(form, request)
            grant_type = form.get("grant_type")
            family: str | None = None
            nonce: str | None = None
            if grant_type == DEVICE_CODE_GRANT:
                device = self._devices.redeem(form.get("device_code", ""), client_id)
                assert device.approved is not None
                identity, scope = device.approved, device.scope
            elif grant_type == "refresh_token":
                spent, granted, family = self._refresh.spend(
                    form.get("refresh_token", ""), client_id
                )
                identity = self._current_identity(spent)
                scope = granted_scope(form.get("scope"), granted)
            elif grant_type == "authorization_code":
                code = self._codes.redeem(form, client_id)
                identity, scope, nonce = code.identity, code.scope, code.nonce
            else:
                raise OAuthError("unsupported_grant_type", "unsupported grant_type")
            body, issued_family = self._token_response(
                identity, client_id, scope, family=family, nonce=nonce
            )
        except OAuthError as exc:
            await self._refresh.persist()  # a replayed token or code revoked its sign-in
            return oauth_error(exc)
        if grant_type == "authorization_code":
            self._codes.gave_family(form.get("code", ""), issued_family)
        await self._refresh.persist()
        return web.json_response(body, headers=NO_STORE)

    async def revoke(self, request: web.Request) -> web.Response:
        """RFC 7009: revoke a refresh token's whole sign-in; unknown tokens are not an error."""
        try:
            form = await read_form(request)
            self._client(form, request)
        except OAuthError as exc:
            return oauth_error(exc)
        family = self._refresh.family_of(form.get("token", ""))
        if family is not None:
            self._refresh.revoke_family(family)
            await self._refresh.persist()
        return web.Response(status=200, headers=NO_STORE)
