"""The OpenID Connect discovery document, so clients find every endpoint from the issuer URL."""

from __future__ import annotations

from typing import Any

from kuberde.auth.issuer.protocol import DEVICE_CODE_GRANT, SUPPORTED_SCOPES
from kuberde.auth.tokens import ALGORITHM


def discovery_document(issuer: str, pages: str) -> dict[str, Any]:
    """`pages` is where browsers open the sign-in page (the issuer URL unless a public URL
    fronts it); every other endpoint is called by clients at the issuer URL."""
    return {
        "issuer": issuer,
        "authorization_endpoint": pages + "/oauth/authorize",
        "token_endpoint": issuer + "/oauth/token",
        "device_authorization_endpoint": issuer + "/oauth/device/code",
        "revocation_endpoint": issuer + "/oauth/revoke",
        "jwks_uri": issuer + "/oauth/jwks",
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
