"""The built-in OpenID Connect issuer of `kuberde up`, served by the gateway itself.

It speaks the standard protocols so the CLI needs no special case: discovery, JWKS (the
gateway's signing key), the device authorization grant (RFC 8628), rotating refresh tokens
(RFC 6749 §6), the authorization code flow with PKCE S256 (RFC 7636) and a loopback redirect
(RFC 8252), and revocation (RFC 7009). Access tokens are RFC 9068 JWTs for audience
`kuberde`; the gateway verifies them through `OidcProvider` pointed at this issuer's URL,
exactly as it verifies an external provider's.

One module per job: `protocol` (errors, identities, scopes, forms), `discovery`, `device`
(device grant), `authcode` (authorization code + PKCE), `pages` (HTML), `refresh` (the
refresh token store), `lockout` (failed sign-ins), and `service` (the HTTP endpoints).

Who may approve a sign-in:
- anyone named in `users.yaml` (see `kuberde.auth.users`), with their password, on the
  verification page (`/oauth/device`) or the authorization page (`/oauth/authorize`). The
  form carries the password, so a forged cross-site post gains nothing. Attempts are
  limited per source address and globally, and repeated failures lock a name out at that
  address only (`lockout`), so guessing never locks the real user out.
- a holder of a valid user token, for themselves: `POST /oauth/device/approve` with the
  token as a bearer credential, issued in the last five minutes or sent with the user's
  `password` field, so a stolen token cannot become a 30-day sign-in. That is how the OS
  user who ran `kuberde up` signs in elsewhere, and how tests script it.

Refresh tokens are stored only as SHA-256 hashes in the state directory. Each use returns a
new one; presenting a spent one revokes its whole family (theft detection, OAuth 2.0
Security BCP §4.14). Removing a user from `users.yaml`, or setting a new password, stops
their refresh tokens working, however the sign-in was approved.
"""

from kuberde.auth.issuer.protocol import (
    BUILTIN_CLIENT_ID,
    BUILTIN_USER_CLAIMS,
    DEFAULT_SCOPE,
    DEVICE_CODE_GRANT,
)
from kuberde.auth.issuer.refresh import REFRESH_TOKENS_FILE
from kuberde.auth.issuer.service import BuiltinIssuer, IssuerSettings

__all__ = [
    "BUILTIN_CLIENT_ID",
    "BUILTIN_USER_CLAIMS",
    "DEFAULT_SCOPE",
    "DEVICE_CODE_GRANT",
    "REFRESH_TOKENS_FILE",
    "BuiltinIssuer",
    "IssuerSettings",
]
