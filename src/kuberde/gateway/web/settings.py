"""Settings of the browser side of the gateway: sign-in, the dashboard and the app proxy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from kuberde.gateway.sessions import SessionLimits

__all__ = ["PLATFORM_COOKIES", "BrowserSettings", "CookieNames"]


@dataclass(frozen=True)
class CookieNames:
    session: str
    app: str


#: Over TLS the `__Host-` prefix makes browsers refuse the cookie unless it is host-only,
#: Secure and for path /: an app on a sibling host cannot plant one for the dashboard.
_TLS = CookieNames(session="__Host-kuberde-session", app="__Host-kuberde-app")
_PLAIN = CookieNames(session="kuberde-session", app="kuberde-app")
#: Never forwarded to a workspace, never accepted from one in Set-Cookie.
PLATFORM_COOKIES = frozenset({_TLS.session, _TLS.app, _PLAIN.session, _PLAIN.app})


@dataclass(frozen=True)
class BrowserSettings:
    #: The OIDC issuer browsers sign in with (an external provider, or the built-in one).
    issuer: str
    #: Its client for the gateway: public, authorization code + PKCE, redirect
    #: `{dashboard}/auth/callback`.
    client_id: str = "kuberde-cli"
    scope: str = "openid profile"
    #: Apps are served at `*.{apps_domain}`; None turns the app proxy off.
    apps_domain: str | None = None
    #: The dashboard's own URL, where app hosts send browsers to sign in; None: the
    #: dashboard is at the apps domain itself (`http://localhost:8080` for `*.localhost`).
    public_url: str | None = None
    wake_timeout: float = 120.0
    max_message_size: int = 4 * 1024 * 1024
    limits: SessionLimits = field(default_factory=SessionLimits)
    #: Where sessions are kept across restarts (`<state dir>/browser-sessions.db`); None:
    #: in memory only.
    sessions_file: Path | None = None

    def tls(self, request: web.Request) -> bool:
        if self.public_url is not None:
            return urlsplit(self.public_url).scheme == "https"
        return request.secure

    def cookies(self, request: web.Request) -> CookieNames:
        return _TLS if self.tls(request) else _PLAIN

    def dashboard_url(self, request: web.Request) -> str:
        """The dashboard's origin as seen from `request` (app host or dashboard host)."""
        if self.public_url is not None:
            return self.public_url.rstrip("/")
        scheme = "https" if request.secure else "http"
        port = request.url.port
        default = 443 if scheme == "https" else 80
        host = self.apps_domain or request.url.host or "localhost"
        return f"{scheme}://{host}" + ("" if port in (None, default) else f":{port}")
