"""Credentials: the gateway's signing key, token minting and verification."""

from __future__ import annotations

from kuberde.auth.keys import (
    SIGNING_KEY_FILE,
    SigningKey,
    SigningKeyError,
    jwk_thumbprint,
    load_or_create_signing_key,
    public_jwk,
)
from kuberde.auth.tokens import (
    ADMIN_ROLE,
    AGENT_AUDIENCE,
    ALGORITHM,
    CLOCK_LEEWAY,
    DEFAULT_AGENT_TTL,
    DEFAULT_MANAGEMENT_TTL,
    DEFAULT_USER_TTL,
    LOCAL_ISSUER,
    MANAGEMENT_AUDIENCE,
    USER_AUDIENCE,
    AuthError,
    AuthFailure,
    LocalTokenVerifier,
    Principal,
    PrincipalKind,
    TokenIssuer,
    TokenVerifier,
    bearer_token,
)

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
    "SIGNING_KEY_FILE",
    "USER_AUDIENCE",
    "AuthError",
    "AuthFailure",
    "LocalTokenVerifier",
    "Principal",
    "PrincipalKind",
    "SigningKey",
    "SigningKeyError",
    "TokenIssuer",
    "TokenVerifier",
    "bearer_token",
    "jwk_thumbprint",
    "load_or_create_signing_key",
    "public_jwk",
]
