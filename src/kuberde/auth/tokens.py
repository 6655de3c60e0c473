"""Signed tokens for users, agents and the management API, and the verifier contract.

The gateway depends only on `TokenVerifier`, so an OIDC verifier (which must fetch JWKS on
an unknown key ID, hence the async methods) can replace `LocalTokenVerifier` without
touching it. Each kind of principal has its own audience: a token minted for one kind can
never be accepted as another.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from kuberde.auth.keys import SigningKey
from kuberde.auth.lifetimes import DEFAULT_AGENT_TTL, DEFAULT_MANAGEMENT_TTL, DEFAULT_USER_TTL
from kuberde.clock import Clock, utc_now
from kuberde.naming import InvalidName, agent_id, validate_agent_id, validate_name

__all__ = [
    "ADMIN_ROLE",
    "AGENT_AUDIENCE",
    "ALGORITHM",
    "CLOCK_LEEWAY",
    "DEFAULT_AGENT_TTL",
    "DEFAULT_MANAGEMENT_TTL",
    "DEFAULT_USER_TTL",
    "LOCAL_ISSUER",
    "MANAGEMENT_AUDIENCE",
    "USER_AUDIENCE",
    "AuthError",
    "AuthFailure",
    "LocalTokenVerifier",
    "Principal",
    "PrincipalKind",
    "TokenIssuer",
    "TokenVerifier",
    "bearer_token",
    "decode_signed",
]

USER_AUDIENCE = "kuberde"
AGENT_AUDIENCE = "kuberde-agent"
MANAGEMENT_AUDIENCE = "kuberde-mgmt"
LOCAL_ISSUER = "kuberde-local"
ALGORITHM = "ES256"
CLOCK_LEEWAY = timedelta(seconds=30)
ADMIN_ROLE = "admin"

PrincipalKind = Literal["user", "agent", "management"]
AuthFailure = Literal[
    "missing",
    "malformed",
    "expired",
    "bad_signature",
    "bad_audience",
    "bad_issuer",
    "wrong_kind",
    "bad_claims",
    "unknown_key",
    "revoked",
]

_AUDIENCE_OF: dict[PrincipalKind, str] = {
    "user": USER_AUDIENCE,
    "agent": AGENT_AUDIENCE,
    "management": MANAGEMENT_AUDIENCE,
}
_KIND_OF_AUDIENCE: dict[str, PrincipalKind] = {aud: kind for kind, aud in _AUDIENCE_OF.items()}
_DESCRIPTION: dict[PrincipalKind, str] = {
    "user": "a user token",
    "agent": "an agent credential",
    "management": "a management token",
}
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
# RFC 6750 b64token: JWTs are three base64url segments joined by dots.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class AuthError(Exception):
    """A refused credential; `reason` is a fixed label for metrics and HTTP bodies.

    Messages never quote the token, so they are safe to log and return to clients.
    """

    def __init__(self, reason: AuthFailure, message: str) -> None:
        super().__init__(message)
        self.reason: AuthFailure = reason


@dataclass(frozen=True)
class Principal:
    """Who a verified credential speaks for.

    `name` is the username (users), the agent ID (agents) or the subject (management).
    `owner` is set for agents only and comes from the credential, never from the ID.
    """

    kind: PrincipalKind
    name: str
    owner: str | None = None
    admin: bool = False
    agent_uid: str | None = None
    expires_at: datetime | None = None
    #: When the credential was issued (`iat`), if it says: how fresh a sign-in is.
    issued_at: datetime | None = None
    #: The users-file standing the token was issued under (the built-in issuer's password
    #: fingerprint), checked again on each use; None: the token is good until it expires.
    credential: str | None = field(default=None, repr=False)


def bearer_token(authorization_header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header."""
    if authorization_header is None or not authorization_header.strip():
        raise AuthError("missing", "no Authorization header; a bearer token is required")
    scheme, _, token = authorization_header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError("malformed", "the Authorization header must use the Bearer scheme")
    token = token.strip()
    if not token:
        raise AuthError("missing", "the Authorization header carries no token")
    if not _B64TOKEN.fullmatch(token):
        raise AuthError("malformed", "the bearer token contains characters a token cannot have")
    return token


def _positive(ttl: timedelta) -> timedelta:
    if ttl <= timedelta(0):
        raise ValueError(f"token lifetime must be positive, got {ttl}")
    return ttl


class TokenIssuer:
    """Mints tokens signed with the gateway's key (the local, non-OIDC issuer)."""

    def __init__(self, key: SigningKey) -> None:
        self._key = key

    def _mint(self, kind: PrincipalKind, subject: str, ttl: timedelta, **extra: Any) -> str:
        now = datetime.now(UTC)
        claims: dict[str, Any] = {
            "iss": LOCAL_ISSUER,
            "aud": _AUDIENCE_OF[kind],
            "sub": subject,
            "iat": int(now.timestamp()),
            "exp": int((now + _positive(ttl)).timestamp()),
            "jti": secrets.token_urlsafe(16),
            **extra,
        }
        return jwt.encode(
            claims,
            self._key.private_key,
            algorithm=ALGORITHM,
            headers={"kid": self._key.kid, "typ": "JWT"},
        )

    def mint_user(
        self, username: str, *, admin: bool = False, ttl: timedelta = DEFAULT_USER_TTL
    ) -> str:
        validate_name(username, "username")
        extra: dict[str, Any] = {"roles": [ADMIN_ROLE]} if admin else {}
        return self._mint("user", username, ttl, **extra)

    def mint_agent(
        self, owner: str, name: str, *, uid: str | None = None, ttl: timedelta | None = None
    ) -> str:
        """An agent credential; `uid` binds it to one RDEAgent object, not just its name."""
        subject = agent_id(owner, name)
        extra: dict[str, Any] = {"owner": owner}
        if uid is not None:
            if not uid:
                raise ValueError("uid must be non-empty when given")
            extra["uid"] = uid
        return self._mint("agent", subject, DEFAULT_AGENT_TTL if ttl is None else ttl, **extra)

    def mint_management(
        self, subject: str = "kuberde-operator", *, ttl: timedelta = DEFAULT_MANAGEMENT_TTL
    ) -> str:
        if not subject:
            raise ValueError("subject must be non-empty")
        return self._mint("management", subject, ttl)


class TokenVerifier(Protocol):
    """What the gateway needs from any credential verifier (local keys today, OIDC later)."""

    async def verify_user(self, token: str) -> Principal: ...

    async def verify_agent(self, token: str) -> Principal: ...

    async def verify_management(self, token: str) -> Principal: ...


def _audience_check(claims: Mapping[str, Any], kind: PrincipalKind) -> None:
    """Refuse a token of another kind with `wrong_kind`, anything else with `bad_audience`."""
    aud = claims["aud"]
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise AuthError("bad_claims", "the token's audience is not a string or list of strings")
    for audience in audiences:
        other = _KIND_OF_AUDIENCE.get(audience)
        if other is not None and other != kind:
            raise AuthError(
                "wrong_kind",
                f"{_DESCRIPTION[other]} cannot be used where {_DESCRIPTION[kind]} is required",
            )
    if _AUDIENCE_OF[kind] not in audiences:
        raise AuthError("bad_audience", f"the token is not meant for {_AUDIENCE_OF[kind]!r}")


def _expiry(claims: Mapping[str, Any]) -> datetime:
    exp = claims["exp"]
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise AuthError("bad_claims", "the token's expiry is not a number")
    return datetime.fromtimestamp(exp, UTC)


class _VerifiedTokens:
    """Claims of tokens whose signature already verified, by SHA-256 digest of the token.

    Every new stream is a new WebSocket with the same bearer token; checking its ECDSA
    signature again costs ~0.2 ms of a ~2 ms stream setup. A hit needs the very key object
    that verified it (a key dropped from a JWKS or rotated out is a miss) and the same
    issuer, and the expiry is checked again; only successes are kept.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[bytes, tuple[Any, str, dict[str, Any]]] = OrderedDict()

    def get(self, digest: bytes, key: Any, issuer: str) -> dict[str, Any] | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        verified_by, verified_for, claims = entry
        if verified_by is not key or verified_for != issuer:
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return claims

    def put(self, digest: bytes, key: Any, issuer: str, claims: dict[str, Any]) -> None:
        self._entries[digest] = (key, issuer, claims)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)


_verified_tokens = _VerifiedTokens()


def decode_signed(
    token: str,
    key: Any,
    *,
    algorithm: str,
    issuer: str,
    leeway: float | timedelta,
    required: Sequence[str],
    clock: Clock = utc_now,
) -> dict[str, Any]:
    """`jwt.decode`, its failures turned into AuthErrors that say what is wrong.

    Shared by our own tokens and OIDC providers' so both refuse alike; the audience is left
    to the caller, which knows which kinds of token it must tell apart. Callers must not
    change the claims they get: a token seen again gets the same dict. The expiry is checked
    here against `clock` (injectable, so tests need not wait for a token to expire), for a
    token seen again as for a new one.
    """
    seconds = leeway.total_seconds() if isinstance(leeway, timedelta) else leeway
    digest = hashlib.sha256(token.encode()).digest()
    known = _verified_tokens.get(digest, key, issuer)
    if known is not None:
        _check_expiry(known, seconds, clock())
        return known
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            issuer=issuer,
            leeway=leeway,
            options={"require": list(required), "verify_aud": False, "verify_exp": False},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("expired", "the token has expired") from None
    except jwt.InvalidSignatureError:
        raise AuthError("bad_signature", "the token's signature does not verify") from None
    except jwt.InvalidAlgorithmError:
        raise AuthError("bad_signature", f"the token must be signed with {algorithm}") from None
    except jwt.InvalidIssuerError:
        raise AuthError("bad_issuer", f"the token was not issued by {issuer}") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError("bad_claims", f"the token lacks the {exc.claim!r} claim") from None
    except jwt.DecodeError:
        raise AuthError("malformed", "the token is not a well-formed JWT") from None
    except jwt.InvalidTokenError:
        raise AuthError("bad_claims", "the token's claims are invalid") from None
    _check_expiry(claims, seconds, clock())
    _verified_tokens.put(digest, key, issuer, claims)
    return claims


def _check_expiry(claims: Mapping[str, Any], leeway: float, now: datetime) -> None:
    """PyJWT's rule (expired once `exp <= now - leeway`), against our clock."""
    expires = claims.get("exp")
    if expires is None:
        return  # not required of this kind of token; `required` names the claims that are
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        raise AuthError("bad_claims", "the token's claims are invalid")
    if expires <= now.timestamp() - leeway:
        raise AuthError("expired", "the token has expired")


def _decoded(
    token: str, keys: Mapping[str, ec.EllipticCurvePublicKey], kind: PrincipalKind
) -> dict[str, Any]:
    if not isinstance(token, str) or not token:
        raise AuthError("missing", "no token was given")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise AuthError("malformed", "the token is not a well-formed JWT") from None
    if header.get("alg") != ALGORITHM:
        raise AuthError("bad_signature", f"the token must be signed with {ALGORITHM}")
    kid = header.get("kid")
    public_key = keys.get(kid) if isinstance(kid, str) else None
    if public_key is None:
        raise AuthError("unknown_key", "the token was signed by a key this gateway does not know")
    claims = decode_signed(
        token,
        public_key,
        algorithm=ALGORITHM,
        issuer=LOCAL_ISSUER,
        leeway=CLOCK_LEEWAY,
        required=_REQUIRED_CLAIMS,
    )
    _audience_check(claims, kind)
    return claims


class LocalTokenVerifier(TokenVerifier):
    """Verifies ES256 tokens from `TokenIssuer` against a set of public keys by key ID."""

    def __init__(self, public_keys: Mapping[str, ec.EllipticCurvePublicKey]) -> None:
        if not public_keys:
            raise ValueError("at least one public key is required")
        for kid, key in public_keys.items():
            if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
                key.curve, ec.SECP256R1
            ):
                raise ValueError(f"key {kid!r} is not a P-256 public key")
        self._keys = dict(public_keys)

    @classmethod
    def from_signing_key(cls, key: SigningKey) -> LocalTokenVerifier:
        return cls({key.kid: key.public_key})

    async def verify_user(self, token: str) -> Principal:
        claims = _decoded(token, self._keys, "user")
        try:
            username = validate_name(claims["sub"], "username")
        except InvalidName:
            raise AuthError("bad_claims", "the token's subject is not a valid username") from None
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise AuthError("bad_claims", "the token's roles are not a list of strings")
        return Principal(
            kind="user", name=username, admin=ADMIN_ROLE in roles, expires_at=_expiry(claims)
        )

    async def verify_agent(self, token: str) -> Principal:
        claims = _decoded(token, self._keys, "agent")
        subject, owner, uid = claims["sub"], claims.get("owner"), claims.get("uid")
        try:
            validate_agent_id(subject)
            validate_name(owner, "owner")
        except InvalidName:
            raise AuthError("bad_claims", "the credential's agent ID or owner is invalid") from None
        # The owner claim must account for the ID's prefix; nothing parses it out of the ID.
        prefix = f"user-{owner}-"
        try:
            if not subject.startswith(prefix):
                raise InvalidName("agent ID outside the owner's prefix")
            validate_name(subject[len(prefix) :])
        except InvalidName:
            raise AuthError(
                "bad_claims", "the credential's agent ID does not belong to its owner"
            ) from None
        if uid is not None and (not isinstance(uid, str) or not uid):
            raise AuthError("bad_claims", "the credential's uid is not a non-empty string")
        return Principal(
            kind="agent", name=subject, owner=owner, agent_uid=uid, expires_at=_expiry(claims)
        )

    async def verify_management(self, token: str) -> Principal:
        claims = _decoded(token, self._keys, "management")
        if not claims["sub"]:
            raise AuthError("bad_claims", "the token's subject is empty")
        return Principal(kind="management", name=claims["sub"], expires_at=_expiry(claims))
