"""What crosses the app proxy in headers: the platform's credentials never reach a workspace,
and an app's cookies never reach beyond its own host.

Pure functions over header lists, so each rule is tested on its own.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

__all__ = [
    "HOP_BY_HOP",
    "app_request_headers",
    "app_response_headers",
    "filter_cookie_header",
    "sanitize_set_cookie",
]

Headers = list[tuple[str, str]]

#: RFC 9110 §7.6.1 connection-specific fields, plus the ones the proxy sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_WEBSOCKET_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)
_FORWARDED = frozenset({"forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"})


def filter_cookie_header(value: str, platform_cookies: Collection[str]) -> str:
    """A `Cookie` header without the platform's cookies (the app's own stay as they were)."""
    kept = []
    for part in value.split(";"):
        name = part.split("=", 1)[0].strip()
        if name and name not in platform_cookies:
            kept.append(part.strip())
    return "; ".join(kept)


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens |= {token.strip().lower() for token in value.split(",") if token.strip()}
    return tokens


def app_request_headers(
    headers: Iterable[tuple[str, str]],
    *,
    platform_cookies: Collection[str],
    client: str | None,
    scheme: str,
) -> Headers:
    """The browser's headers as the workspace gets them.

    Gone: hop-by-hop fields (and those `Connection` names), any `Authorization: Bearer`
    (the platform's scheme; an app's own Basic or `token` scheme passes), the platform's
    cookies, the WebSocket handshake fields (the proxy makes its own handshake), and any
    forwarding fields the client made up. Added: `X-Forwarded-For/-Proto/-Host`.
    """
    items = list(headers)
    dropped = HOP_BY_HOP | _WEBSOCKET_HANDSHAKE | _FORWARDED | _connection_tokens(items)
    result: Headers = []
    host = ""
    for name, value in items:
        lower = name.lower()
        if lower in dropped:
            continue
        if lower == "host":
            host = value
        if lower == "authorization" and value.strip().lower().startswith("bearer"):
            continue
        if lower == "cookie":
            value = filter_cookie_header(value, platform_cookies)
            if not value:
                continue
        result.append((name, value))
    if client:
        result.append(("X-Forwarded-For", client))
    result.append(("X-Forwarded-Proto", scheme))
    if host:
        result.append(("X-Forwarded-Host", host))
    return result


def sanitize_set_cookie(value: str, platform_cookies: Collection[str]) -> str | None:
    """A `Set-Cookie` scoped to the app's own host, or None to drop it.

    The `Domain` attribute goes, which makes the cookie host-only: an app cannot set a cookie
    for the dashboard or for another app. A cookie named like a platform cookie is dropped.
    """
    parts = [part.strip() for part in value.split(";")]
    name = parts[0].split("=", 1)[0].strip()
    if not name or name in platform_cookies:
        return None
    kept = [parts[0]] + [p for p in parts[1:] if p.split("=", 1)[0].strip().lower() != "domain"]
    return "; ".join(kept)


def app_response_headers(
    headers: Iterable[tuple[str, str]], *, platform_cookies: Collection[str]
) -> Headers:
    """The workspace's response headers as the browser gets them (framing is the proxy's)."""
    items = list(headers)
    dropped = HOP_BY_HOP | _WEBSOCKET_HANDSHAKE | _connection_tokens(items) | {"content-length"}
    result: Headers = []
    for name, value in items:
        lower = name.lower()
        if lower in dropped:
            continue
        if lower == "set-cookie":
            cleaned = sanitize_set_cookie(value, platform_cookies)
            if cleaned is None:
                continue
            value = cleaned
        result.append((name, value))
    return result
