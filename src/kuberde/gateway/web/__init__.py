"""The gateway's browser side: sign-in, the dashboard at `/` and the app proxy on app hosts."""

from __future__ import annotations

from aiohttp import web

from kuberde.gateway.app import GATEWAY_KEY
from kuberde.gateway.apps import AppProxy
from kuberde.gateway.session_file import SessionFile
from kuberde.gateway.sessions import SessionStore, Standing
from kuberde.gateway.web.dashboard import Dashboard
from kuberde.gateway.web.settings import BrowserSettings
from kuberde.gateway.web.signin import SignIn
from kuberde.gateway.web.workspaces import Workspaces

__all__ = ["BrowserSettings", "add_browser"]

SESSIONS_KEY = web.AppKey("browser_sessions", SessionStore)


def add_browser(
    app: web.Application,
    settings: BrowserSettings,
    workspaces: Workspaces,
    standing: Standing | None = None,
) -> None:
    """Serve the dashboard and sign-in on the gateway's host, and apps on their own hosts;
    `standing` says whether a session's user still stands (default: `UntilTokenExpiry`)."""
    gateway = app[GATEWAY_KEY]
    backend = SessionFile(settings.sessions_file) if settings.sessions_file else None
    sessions = SessionStore(
        settings.limits, backend=backend, standing=standing, on_end=gateway.held.changed
    )
    if backend is not None:

        async def close(_: web.Application) -> None:
            backend.close()

        app.on_cleanup.append(close)
    signin = SignIn(gateway, sessions, settings)
    app[SESSIONS_KEY] = sessions
    app.router.add_routes([*signin.routes(), *Dashboard(signin, settings, workspaces).routes()])
    if settings.apps_domain is not None:
        proxy = AppProxy(gateway, sessions, settings, workspaces)
        app.middlewares.append(proxy.middleware)

        async def close_upstreams(_: web.Application) -> None:
            proxy.upstreams.close_all()

        app.on_cleanup.append(close_upstreams)
