"""What every flow of the built-in issuer shares: OAuth errors, identities, scopes, forms."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from aiohttp import web

from kuberde.auth.oidc import UserClaims

BUILTIN_CLIENT_ID = "kuberde-cli"
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
#: The access token's claim holding `Identity.credential`, so the gateway can tell a token
#: of a user since removed, or whose password changed, as it tells a refresh token.
CREDENTIAL_CLAIM = "kuberde_credential"
#: How the gateway reads this issuer's tokens (the role list is a top-level `roles` claim).
BUILTIN_USER_CLAIMS = UserClaims(roles_claim="roles", credential_claim=CREDENTIAL_CLAIM)
SUPPORTED_SCOPES = frozenset({"openid", "profile", "offline_access"})
DEFAULT_SCOPE = "openid profile offline_access"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    """An RFC 6749 §5.2 error response."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True)
class Identity:
    username: str
    admin: bool
    #: Signed in with a password from the users file (which must still list them on refresh).
    by_password: bool
    #: Fingerprint of the user's password hash when the sign-in began, if the users file
    #: lists them: a refresh after the password changed, or the user was removed, fails.
    credential: str | None = None


def sha256(value: str) -> str:
    """How codes and tokens are stored: never in the clear."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def granted_scope(requested: str | None, allowed: str = DEFAULT_SCOPE) -> str:
    """The scope to grant for `requested`, never more than `allowed`."""
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


async def read_form(request: web.Request) -> dict[str, str]:
    """The posted form's text fields; OAuth endpoints take nothing else."""
    if request.method != "POST":
        return {}
    if request.content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    posted = await request.post()
    return {key: value for key, value in posted.items() if isinstance(value, str)}


def oauth_error(exc: OAuthError) -> web.Response:
    headers = dict(NO_STORE)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="kuberde"'
    return web.json_response(
        {"error": exc.error, "error_description": exc.description},
        status=exc.status,
        headers=headers,
    )
