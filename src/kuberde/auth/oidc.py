"""Verifying access tokens from an OpenID Connect provider (Keycloak, or our built-in issuer).

`OidcProvider` holds what is shared by every token of one issuer: its discovery document
and its JWKS, fetched lazily, cached, and refetched when a token names a key ID we do not
hold (at most once per `min_refresh_interval`, so forged key IDs cannot make us hammer the
provider). The algorithm of a token must be the one of the published key it names: keys are
asymmetric only, so `none` and HS* (including "HS256 keyed with the public key") never
verify.

`OidcUserVerifier` and `OidcAgentVerifier` turn the verified claims into a `Principal`;
`CompositeVerifier` gives the gateway its single `TokenVerifier`, with users, agents and the
management API each verified by their own list of verifiers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import aiohttp
import jwt
from aiohttp import web

from kuberde.auth.tokens import (
    ADMIN_ROLE,
    AGENT_AUDIENCE,
    CLOCK_LEEWAY,
    USER_AUDIENCE,
    AuthError,
    Principal,
    TokenVerifier,
    decode_signed,
)
from kuberde.clock import Clock, utc_now
from kuberde.naming import InvalidName, validate_agent_id, validate_name

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "AgentClaims",
    "AgentLookup",
    "AgentVerifier",
    "CompositeVerifier",
    "Fetch",
    "FetchError",
    "HttpJsonFetcher",
    "KnownAgent",
    "ManagementVerifier",
    "OidcAgentVerifier",
    "OidcProvider",
    "OidcUserVerifier",
    "UserClaims",
    "UserVerifier",
    "auth_config_route",
    "claim_at",
]

log = logging.getLogger(__name__)

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_REQUIRED_CLAIMS = ["exp", "iat", "iss"]
#: Header `typ` values of access tokens (RFC 9068 `at+jwt`, or the generic `JWT`).
_ACCESS_TOKEN_TYPES = frozenset({"jwt", "at+jwt", "application/at+jwt"})
DEFAULT_FETCH_TIMEOUT = 10.0
MAX_DOCUMENT_BYTES = 1024 * 1024

Fetch = Callable[[str], Awaitable[Mapping[str, Any]]]


class FetchError(Exception):
    """A discovery or JWKS document could not be fetched or is not a JSON object."""


class HttpJsonFetcher:
    """GETs a JSON object with a timeout and a size limit; a new session per call.

    Calls are rare (discovery once, JWKS on rotation), so a per-call session costs nothing
    and leaves no connection pool to close when the gateway stops.
    """

    def __init__(
        self, *, timeout: float = DEFAULT_FETCH_TIMEOUT, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True

    async def __call__(self, url: str) -> Mapping[str, Any]:
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.get(url, headers={"Accept": "application/json"}, ssl=self._ssl) as resp,
            ):
                if resp.status != 200:
                    raise FetchError(f"GET {url} returned HTTP {resp.status}")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    body.extend(chunk)
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise FetchError(f"GET {url} returned more than {MAX_DOCUMENT_BYTES} bytes")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise FetchError(f"GET {url} failed: {str(exc) or type(exc).__name__}") from None
        try:
            document = _json_object(bytes(body))
        except ValueError:
            raise FetchError(f"GET {url} did not return a JSON object") from None
        return document


def _json_object(data: bytes) -> dict[str, Any]:
    document = json.loads(data)
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return document


@dataclass(frozen=True)
class _Key:
    algorithm: str
    key: Any


def _algorithm_of(jwk: Mapping[str, Any]) -> str | None:
    """The one algorithm a published key may verify, or None for keys we never use."""
    if jwk.get("use", "sig") != "sig":
        return None
    operations = jwk.get("key_ops")
    if operations is not None and (not isinstance(operations, list) or "verify" not in operations):
        return None
    declared = jwk.get("alg")
    if declared is not None:
        return declared if declared in ASYMMETRIC_ALGORITHMS else None
    kty = jwk.get("kty")
    if kty == "RSA":
        return "RS256"
    if kty == "EC":
        return _EC_ALGORITHMS.get(str(jwk.get("crv")))
    if kty == "OKP" and jwk.get("crv") == "Ed25519":
        return "EdDSA"
    return None


def _parse_jwks(document: Mapping[str, Any]) -> dict[str | None, _Key]:
    """Usable signature keys by `kid`; symmetric (`oct`) and encryption keys are dropped."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise FetchError("the JWKS document has no 'keys' list")
    keys: dict[str | None, _Key] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        algorithm = _algorithm_of(entry)
        if algorithm is None:
            continue
        try:
            parsed = jwt.PyJWK({**entry, "alg": algorithm})
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring an unusable key in the JWKS: %s", exc)
            continue
        kid = entry.get("kid")
        keys[kid if isinstance(kid, str) else None] = _Key(algorithm, parsed.key)
    return keys


def _unavailable(issuer: str) -> AuthError:
    return AuthError(
        "unknown_key",
        f"the signing keys of the identity provider {issuer} cannot be fetched right now",
    )


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted claim path (`realm_access.roles`), or None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


class OidcProvider:
    """One issuer: its keys, and the signature, issuer, expiry and audience checks."""

    def __init__(
        self,
        issuer: str,
        fetch: Fetch | None = None,
        *,
        leeway: timedelta = CLOCK_LEEWAY,
        jwks_max_age: float = 3600.0,
        min_refresh_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Clock = utc_now,
    ) -> None:
        """`clock` times the JWKS cache; `wall_clock` is what token expiry is checked against
        (injectable, so a test moves it past a token's expiry instead of waiting)."""
        if not issuer:
            raise ValueError("the issuer URL must not be empty")
        self.issuer = issuer
        self._fetch = fetch or HttpJsonFetcher()
        self._leeway = leeway
        self._max_age = jwks_max_age
        self._min_refresh_interval = min_refresh_interval
        self._clock = clock
        self._wall_clock = wall_clock
        self._jwks_uri: str | None = None
        self._keys: dict[str | None, _Key] | None = None
        self._fetched_at = 0.0
        self._last_miss_refresh: float | None = None
        self._failed_at: float | None = None
        self._generation = 0
        self._lock = asyncio.Lock()

    async def _discover(self) -> str:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._fetch(url)
        if document.get("issuer") != self.issuer:
            raise FetchError(
                f"the discovery document at {url} names issuer {document.get('issuer')!r}, "
                f"not {self.issuer!r}"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise FetchError(f"the discovery document at {url} has no jwks_uri")
        return jwks_uri

    async def _refresh(self, seen_generation: int) -> None:
        """Fetch discovery (if needed) and the JWKS, unless someone did while we waited."""
        async with self._lock:
            if self._generation != seen_generation:
                return
            try:
                if self._jwks_uri is None:
                    self._jwks_uri = await self._discover()
                keys = _parse_jwks(await self._fetch(self._jwks_uri))
            except FetchError as exc:
                # Rediscover next time: the provider may have moved its JWKS.
                self._jwks_uri = None
                if self._keys is None:
                    self._failed_at = self._clock()
                    log.warning("cannot fetch the signing keys of %s: %s", self.issuer, exc)
                    raise _unavailable(self.issuer) from None
                log.warning("keeping cached signing keys of %s: %s", self.issuer, exc)
                self._fetched_at = self._clock()
                return
            self._keys = keys
            self._fetched_at = self._clock()
            self._generation += 1
            log.info("fetched %d signing key(s) of %s", len(keys), self.issuer)

    def _find(self, kid: str | None) -> _Key | None:
        if self._keys is None:
            return None
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    async def _key(self, kid: str | None) -> _Key:
        now = self._clock()
        if (
            self._keys is None
            and self._failed_at is not None
            and now - self._failed_at < self._min_refresh_interval
        ):
            raise _unavailable(self.issuer)
        if self._keys is None or now - self._fetched_at >= self._max_age:
            await self._refresh(self._generation)
        found = self._find(kid)
        if found is None and self._lock.locked():
            async with self._lock:  # a refresh is under way: its keys may hold this kid
                found = self._find(kid)
        if found is None and (
            self._last_miss_refresh is None
            or now - self._last_miss_refresh >= self._min_refresh_interval
        ):
            self._last_miss_refresh = now
            await self._refresh(self._generation)
            found = self._find(kid)
        if found is None:
            raise AuthError(
                "unknown_key", "the token was signed by a key the provider does not list"
            )
        return found

    async def claims(
        self, token: str, *, audiences: Collection[str], client_id: str | None = None
    ) -> dict[str, Any]:
        """Verified claims; the audience matches one of `audiences`, or `azp` is `client_id`."""
        if not isinstance(token, str) or not token:
            raise AuthError("missing", "no token was given")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise AuthError("malformed", "the token is not a well-formed JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ASYMMETRIC_ALGORITHMS:
            raise AuthError("bad_signature", "the token is not signed with an asymmetric algorithm")
        token_type = header.get("typ")
        if token_type is not None and str(token_type).lower() not in _ACCESS_TOKEN_TYPES:
            raise AuthError("wrong_kind", "the token is not an access token")
        # Checked before any key lookup, so a foreign token never triggers a JWKS fetch.
        if unverified.get("iss") != self.issuer:
            raise AuthError("bad_issuer", f"the token was not issued by {self.issuer}")
        kid = header.get("kid")
        key = await self._key(kid if isinstance(kid, str) else None)
        if key.algorithm != algorithm:
            raise AuthError("bad_signature", "the token's algorithm does not match its key")
        claims = decode_signed(
            token,
            key.key,
            algorithm=key.algorithm,
            issuer=self.issuer,
            leeway=self._leeway,
            required=_REQUIRED_CLAIMS,
            clock=self._wall_clock,
        )
        _check_audience(claims, audiences, client_id)
        # Keycloak marks ID, refresh and logout tokens with `typ`; only access tokens pass.
        typ = claims.get("typ")
        if typ is not None and str(typ).lower() != "bearer":
            raise AuthError("wrong_kind", "the token is not an access token")
        return claims


def _check_audience(
    claims: Mapping[str, Any], audiences: Collection[str], client_id: str | None
) -> None:
    aud = claims.get("aud", [])
    listed = [aud] if isinstance(aud, str) else aud
    if not isinstance(listed, list) or not all(isinstance(a, str) for a in listed):
        raise AuthError("bad_claims", "the token's audience is not a string or list of strings")
    if any(a in audiences for a in listed):
        return
    if client_id is not None and claims.get("azp") == client_id:
        return
    raise AuthError("bad_audience", f"the token is not meant for {' or '.join(sorted(audiences))}")


def _expiry(claims: Mapping[str, Any]) -> datetime:
    exp = claims["exp"]
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise AuthError("bad_claims", "the token's expiry is not a number")
    return datetime.fromtimestamp(exp, UTC)


def _issued(claims: Mapping[str, Any]) -> datetime | None:
    iat = claims.get("iat")
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        return None
    return datetime.fromtimestamp(iat, UTC)


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise AuthError("bad_claims", f"the token's {what} are not a list of strings")
    return value


@dataclass(frozen=True)
class UserClaims:
    """Where a user's identity is in the provider's tokens (defaults: Keycloak's)."""

    audience: str = USER_AUDIENCE
    #: Also accept tokens whose `azp` is this client (Keycloak's `aud` is often `account`).
    client_id: str | None = None
    username_claim: str = "preferred_username"
    roles_claim: str = "realm_access.roles"
    admin_role: str = ADMIN_ROLE
    #: A claim listing groups; membership of `admin_role` (or `/admin_role`) grants admin.
    groups_claim: str | None = None
    #: A claim binding the token to its user's standing (`Principal.credential`): the
    #: built-in issuer's; an external provider has none.
    credential_claim: str | None = None


@dataclass(frozen=True)
class AgentClaims:
    """How an OAuth2 client-credentials token is bound to one agent (runbook compatibility).

    The provider must put the agent ID in `agent_claim` (a hard-coded claim mapper on the
    agent's client in Keycloak, or `azp` when the client ID is the agent ID). The owner comes
    from `owner_claim` or, failing that, from the gateway's directory; the RDEAgent uid from
    `uid_claim` or the directory: the binding to the object is the provider's client itself.
    """

    agent_claim: str = "kuberde_agent_id"
    owner_claim: str = "kuberde_owner"
    uid_claim: str = "kuberde_agent_uid"
    audience: str = AGENT_AUDIENCE
    client_id: str | None = None


class UserVerifier(Protocol):
    async def verify_user(self, token: str) -> Principal: ...


class AgentVerifier(Protocol):
    async def verify_agent(self, token: str) -> Principal: ...


class ManagementVerifier(Protocol):
    async def verify_management(self, token: str) -> Principal: ...


class KnownAgent(Protocol):
    """What the gateway's directory knows of an agent (`AgentRecord` fits)."""

    @property
    def owner(self) -> str: ...

    @property
    def uid(self) -> str | None: ...


AgentLookup = Callable[[str], KnownAgent | None]


class OidcUserVerifier:
    """Users from an OIDC provider's access tokens."""

    def __init__(
        self,
        provider: OidcProvider,
        claims: UserClaims | None = None,
        *,
        agent_claim: str = AgentClaims.agent_claim,
    ) -> None:
        self.provider = provider
        self.settings = claims or UserClaims()
        self._agent_claim = agent_claim

    async def verify_user(self, token: str) -> Principal:
        settings = self.settings
        claims = await self.provider.claims(
            token, audiences=[settings.audience], client_id=settings.client_id
        )
        if self._agent_claim in claims:
            raise AuthError("wrong_kind", "an agent credential cannot be used as a user token")
        try:
            username = validate_name(claim_at(claims, settings.username_claim), "username")
        except InvalidName:
            raise AuthError(
                "bad_claims",
                f"the token's {settings.username_claim!r} claim is not a valid username",
            ) from None
        roles = _strings(claim_at(claims, settings.roles_claim), "roles")
        admin = settings.admin_role in roles
        if settings.groups_claim is not None:
            groups = _strings(claim_at(claims, settings.groups_claim), "groups")
            admin = admin or any(g.lstrip("/") == settings.admin_role for g in groups)
        credential = claims.get(settings.credential_claim) if settings.credential_claim else None
        if credential is not None and not isinstance(credential, str):
            raise AuthError("bad_claims", "the token's credential claim is not a string")
        return Principal(
            kind="user",
            name=username,
            admin=admin,
            expires_at=_expiry(claims),
            issued_at=_issued(claims),
            credential=credential,
        )


class OidcAgentVerifier:
    """Agents holding client-credentials tokens bound to their agent ID by a claim."""

    def __init__(
        self,
        provider: OidcProvider,
        claims: AgentClaims | None = None,
        *,
        lookup: AgentLookup | None = None,
    ) -> None:
        self.provider = provider
        self.settings = claims or AgentClaims()
        self._lookup = lookup

    async def verify_agent(self, token: str) -> Principal:
        settings = self.settings
        claims = await self.provider.claims(
            token, audiences=[settings.audience], client_id=settings.client_id
        )
        bound = claims.get(settings.agent_claim)
        if bound is None:
            raise AuthError("wrong_kind", "the token is not bound to an agent")
        try:
            agent = validate_agent_id(bound)
        except InvalidName:
            raise AuthError("bad_claims", "the token's agent ID is invalid") from None
        record = self._lookup(agent) if self._lookup is not None else None
        owner = claims.get(settings.owner_claim)
        if owner is None and record is not None:
            owner = record.owner
        try:
            owner = validate_name(owner, "owner")
        except InvalidName:
            raise AuthError(
                "bad_claims", "the token names no valid owner and the agent is unknown"
            ) from None
        uid = claims.get(settings.uid_claim)
        if uid is None and record is not None:
            uid = record.uid
        if uid is not None and (not isinstance(uid, str) or not uid):
            raise AuthError("bad_claims", "the token's agent uid is not a non-empty string")
        return Principal(
            kind="agent", name=agent, owner=owner, agent_uid=uid, expires_at=_expiry(claims)
        )


_NOT_MINE = frozenset({"bad_issuer", "unknown_key"})


async def _first_accepting(
    attempts: Sequence[Callable[[str], Awaitable[Principal]]], token: str, what: str
) -> Principal:
    """The first verifier's principal; otherwise the error of one that recognised the token.

    `bad_issuer`/`unknown_key` only say "not one of mine", so another verifier's more
    specific refusal (expired, wrong audience...) is the one worth reporting; among those,
    the last: the gateway's own key comes first and refuses foreign algorithms outright.
    """
    if not attempts:
        raise AuthError("wrong_kind", f"this gateway accepts no {what}")
    errors: list[AuthError] = []
    for attempt in attempts:
        try:
            return await attempt(token)
        except AuthError as exc:
            errors.append(exc)
    specific = [error for error in errors if error.reason not in _NOT_MINE]
    raise specific[-1] if specific else errors[0]


class CompositeVerifier(TokenVerifier):
    """The gateway's one verifier: each kind of principal tried against its own verifiers."""

    def __init__(
        self,
        *,
        users: Sequence[UserVerifier],
        agents: Sequence[AgentVerifier],
        management: Sequence[ManagementVerifier],
    ) -> None:
        self._users = [v.verify_user for v in users]
        self._agents = [v.verify_agent for v in agents]
        self._management = [v.verify_management for v in management]

    async def verify_user(self, token: str) -> Principal:
        return await _first_accepting(self._users, token, "user tokens")

    async def verify_agent(self, token: str) -> Principal:
        return await _first_accepting(self._agents, token, "agent credentials")

    async def verify_management(self, token: str) -> Principal:
        return await _first_accepting(self._management, token, "management credentials")


def auth_config_route(issuer: str, client_id: str, scope: str) -> web.RouteDef:
    """`GET /api/auth/config`: where `kuberde login` signs in for this gateway."""
    document = {"issuer": issuer, "client_id": client_id, "scope": scope}

    async def auth_config(request: web.Request) -> web.Response:
        return web.json_response(document)

    return web.get("/api/auth/config", auth_config)
