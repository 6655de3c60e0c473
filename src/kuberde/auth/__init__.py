"""Credentials: the gateway's signing key, token minting and verification.

The names below are loaded on first use (PEP 562): `kuberde.auth.lifetimes` and the other
light submodules are imported by every CLI command, and must not bring PyJWT and
`cryptography` (~50 ms) with them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kuberde.auth.keys import SIGNING_KEY_FILE as SIGNING_KEY_FILE
    from kuberde.auth.keys import SigningKey as SigningKey
    from kuberde.auth.keys import SigningKeyError as SigningKeyError
    from kuberde.auth.keys import jwk_thumbprint as jwk_thumbprint
    from kuberde.auth.keys import load_or_create_signing_key as load_or_create_signing_key
    from kuberde.auth.keys import load_signing_key as load_signing_key
    from kuberde.auth.keys import public_jwk as public_jwk
    from kuberde.auth.lifetimes import DEFAULT_AGENT_TTL as DEFAULT_AGENT_TTL
    from kuberde.auth.lifetimes import DEFAULT_MANAGEMENT_TTL as DEFAULT_MANAGEMENT_TTL
    from kuberde.auth.lifetimes import DEFAULT_USER_TTL as DEFAULT_USER_TTL
    from kuberde.auth.tokens import ADMIN_ROLE as ADMIN_ROLE
    from kuberde.auth.tokens import AGENT_AUDIENCE as AGENT_AUDIENCE
    from kuberde.auth.tokens import ALGORITHM as ALGORITHM
    from kuberde.auth.tokens import CLOCK_LEEWAY as CLOCK_LEEWAY
    from kuberde.auth.tokens import LOCAL_ISSUER as LOCAL_ISSUER
    from kuberde.auth.tokens import MANAGEMENT_AUDIENCE as MANAGEMENT_AUDIENCE
    from kuberde.auth.tokens import USER_AUDIENCE as USER_AUDIENCE
    from kuberde.auth.tokens import AuthError as AuthError
    from kuberde.auth.tokens import AuthFailure as AuthFailure
    from kuberde.auth.tokens import LocalTokenVerifier as LocalTokenVerifier
    from kuberde.auth.tokens import Principal as Principal
    from kuberde.auth.tokens import PrincipalKind as PrincipalKind
    from kuberde.auth.tokens import TokenIssuer as TokenIssuer
    from kuberde.auth.tokens import TokenVerifier as TokenVerifier
    from kuberde.auth.tokens import bearer_token as bearer_token
    from kuberde.auth.tokens import decode_signed as decode_signed

#: The submodules whose `__all__` this package exports, lightest first: a name is looked up
#: in order, so `DEFAULT_USER_TTL` (which `tokens` re-exports too) costs no PyJWT.
SUBMODULES = ("lifetimes", "keys", "tokens")


def __getattr__(name: str) -> object:
    for submodule in SUBMODULES:
        module = importlib.import_module(f"{__name__}.{submodule}")
        if name in module.__all__:
            value: object = getattr(module, name)
            globals()[name] = value
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
