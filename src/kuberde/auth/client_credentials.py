"""The agent's OAuth2 client-credentials token (RFC 6749 §4.4), for runbook compatibility.

An agent configured with `AUTH_CLIENT_ID`, `AUTH_CLIENT_SECRET` and `AUTH_TOKEN_URL` asks the
provider (Keycloak) for an access token before each dial, reusing the cached one until it
is close to expiry. The gateway accepts such a token only if a claim binds it to the agent
ID (`kuberde.auth.oidc.OidcAgentVerifier`). The secret goes in HTTP Basic authentication
(RFC 6749 §2.3.1) and is never logged; neither is the token.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote_plus

import aiohttp

__all__ = ["ClientCredentials", "ClientCredentialsSource", "TokenEndpointError"]

#: Refresh once this share of a token's lifetime is left, and never later than 30 s before.
REFRESH_SHARE = 0.2
MIN_REFRESH_MARGIN = 30.0
DEFAULT_TIMEOUT = 15.0
_MAX_RESPONSE_BYTES = 256 * 1024


class TokenEndpointError(Exception):
    """No token could be obtained; the message is safe to log (no secret, no token)."""


@dataclass(frozen=True)
class ClientCredentials:
    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None


@dataclass(frozen=True)
class _Cached:
    token: str = field(repr=False)
    refresh_at: float


def _basic(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: both parts are form-urlencoded before the Basic encoding."""
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


class ClientCredentialsSource:
    """Hands out a current access token, fetching a new one when the cached one runs low."""

    def __init__(
        self,
        credentials: ClientCredentials,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._credentials = credentials
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock
        self._cached: _Cached | None = None

    def invalidate(self) -> None:
        """Forget the cached token (the gateway refused it); the next call fetches anew."""
        self._cached = None

    async def token(self) -> str:
        cached = self._cached
        if cached is not None and self._clock() < cached.refresh_at:
            return cached.token
        requested_at = self._clock()
        token, lifetime = await self._fetch()
        if lifetime is not None:
            margin = max(MIN_REFRESH_MARGIN, lifetime * REFRESH_SHARE)
            self._cached = _Cached(token, requested_at + max(0.0, lifetime - margin))
        else:
            self._cached = None
        return token

    async def _fetch(self) -> tuple[str, float | None]:
        credentials = self._credentials
        form = {"grant_type": "client_credentials"}
        if credentials.scope:
            form["scope"] = credentials.scope
        url = credentials.token_url
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.post(
                    url,
                    data=form,
                    headers={
                        "Accept": "application/json",
                        "Authorization": _basic(credentials.client_id, credentials.client_secret),
                    },
                    ssl=self._ssl,
                    allow_redirects=False,
                ) as response,
            ):
                status = response.status
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body.extend(chunk)
                    if len(body) > _MAX_RESPONSE_BYTES:
                        raise TokenEndpointError(f"token endpoint {url} answered too much")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TokenEndpointError(
                f"token endpoint {url} unreachable: {str(exc) or type(exc).__name__}"
            ) from None
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise TokenEndpointError(f"token endpoint {url} answered HTTP {status} without JSON")
        if status != 200:
            error = document.get("error")
            described = document.get("error_description")
            detail = ": ".join(str(part)[:200] for part in (error, described) if part)
            raise TokenEndpointError(
                f"token endpoint {url} refused client {credentials.client_id!r} "
                f"(HTTP {status}{': ' + detail if detail else ''})"
            )
        token = document.get("access_token")
        if not isinstance(token, str) or not token:
            raise TokenEndpointError(f"token endpoint {url} returned no access_token")
        if str(document.get("token_type", "")).lower() != "bearer":
            raise TokenEndpointError(f"token endpoint {url} returned a non-Bearer token")
        expires_in = document.get("expires_in")
        lifetime = (
            float(expires_in)
            if isinstance(expires_in, int | float) and not isinstance(expires_in, bool)
            else None
        )
        return token, lifetime
