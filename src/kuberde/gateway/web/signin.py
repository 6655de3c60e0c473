"""Browser sign-in: OIDC authorization code with PKCE, a server-side session, app handshakes.

`/auth/login` sends the browser to the issuer (external, or the built-in one of `kuberde
up`); `/auth/callback` trades the code for tokens, verifies the access token exactly as the
gateway verifies any user token, and starts a session. The browser keeps only the session's
random handle in an HttpOnly, SameSite=Lax cookie (Secure over TLS); tokens stay here and
are dropped once the user is known. `/auth/app` is the dashboard half of an app host's
handshake: a signed-in browser is sent back to the app host with a one-time code.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from kuberde.auth import AuthError
from kuberde.auth.oidc import FetchError, HttpJsonFetcher
from kuberde.gateway.app import Gateway
from kuberde.gateway.apphost import BadHost, split_host
from kuberde.gateway.sessions import BrowserSession, SessionStore
from kuberde.gateway.web.navigation import request_origin, safe_next
from kuberde.gateway.web.render import page
from kuberde.gateway.web.settings import BrowserSettings
from kuberde.tls import client_ssl_context

__all__ = ["SignIn", "pkce_challenge"]

log = logging.getLogger(__name__)

_TIMEOUT = aiohttp.ClientTimeout(total=15)
_ACCEPT_JSON = {"Accept": "application/json"}


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class SignIn:
    def __init__(self, gateway: Gateway, sessions: SessionStore, settings: BrowserSettings) -> None:
        self.gateway = gateway
        self.sessions = sessions
        self.settings = settings
        self._fetch = HttpJsonFetcher(ssl_context=client_ssl_context())
        self._endpoints: tuple[str, str] | None = None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/auth/login", self.login),
            web.get("/auth/callback", self.callback),
            web.post("/auth/logout", self.logout),
            web.get("/auth/app", self.app_handshake),
        ]

    # ---- the session of a request --------------------------------------------------------

    def session(self, request: web.Request) -> BrowserSession | None:
        return self.sessions.get(request.cookies.get(self.settings.cookies(request).session))

    def check_csrf(self, request: web.Request, session: BrowserSession, token: str | None) -> None:
        """Refuse a state-changing request without the session's CSRF token (or cross-site)."""
        origin = request.headers.get("Origin")
        if origin is not None and origin != request_origin(request):
            raise web.HTTPForbidden(text="cross-site request refused")
        if not token or not secrets.compare_digest(token, session.csrf_token):
            raise web.HTTPForbidden(text="missing or wrong CSRF token; reload the page")

    def login_redirect(self, request: web.Request) -> web.HTTPFound:
        return web.HTTPFound("/auth/login?" + urlencode({"next": request.path_qs}))

    # ---- OIDC ----------------------------------------------------------------------------

    def _redirect_uri(self, request: web.Request) -> str:
        base = self.settings.public_url or request_origin(request)
        return base.rstrip("/") + "/auth/callback"

    async def _discover(self) -> tuple[str, str]:
        if self._endpoints is None:
            url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
            document = await self._fetch(url)
            authorize, token = (
                document.get("authorization_endpoint"),
                document.get("token_endpoint"),
            )
            if not isinstance(authorize, str) or not isinstance(token, str):
                raise FetchError(f"{url} names no authorization or token endpoint")
            self._endpoints = (authorize, token)
        return self._endpoints

    def _unavailable(self, exc: Exception) -> web.Response:
        log.warning("browser sign-in cannot reach the issuer %s: %s", self.settings.issuer, exc)
        return page(
            "message.html",
            status=502,
            title="Sign-in unavailable",
            message="The sign-in service cannot be reached right now. Try again in a moment.",
            user=None,
        )

    async def login(self, request: web.Request) -> web.StreamResponse:
        try:
            authorize, _ = await self._discover()
        except FetchError as exc:
            return self._unavailable(exc)
        pending = self.sessions.begin_login(safe_next(request.query.get("next")))
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.settings.client_id,
                "redirect_uri": self._redirect_uri(request),
                "scope": self.settings.scope,
                "state": pending.state,
                "code_challenge": pkce_challenge(pending.code_verifier),
                "code_challenge_method": "S256",
            }
        )
        separator = "&" if "?" in authorize else "?"
        raise web.HTTPFound(f"{authorize}{separator}{query}", headers={"Cache-Control": "no-store"})

    async def _exchange(self, token_url: str, code: str, verifier: str, redirect: str) -> str:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect,
            "client_id": self.settings.client_id,
            "code_verifier": verifier,
        }
        ssl = client_ssl_context() if token_url.startswith("https") else True
        async with (
            aiohttp.ClientSession(timeout=_TIMEOUT) as http,
            http.post(token_url, data=form, ssl=ssl, headers=_ACCEPT_JSON) as reply,
        ):
            payload: Any = await reply.json(content_type=None)
            if reply.status != 200 or not isinstance(payload, dict):
                raise AuthError("bad_claims", f"the issuer refused the code ({reply.status})")
            token = payload.get("access_token")
            if not isinstance(token, str):
                raise AuthError("bad_claims", "the issuer returned no access token")
            return token

    async def callback(self, request: web.Request) -> web.StreamResponse:
        pending = self.sessions.finish_login(request.query.get("state", ""))
        if pending is None:
            return page(
                "message.html",
                status=400,
                title="Sign-in expired",
                message="This sign-in was used already or took too long. Please sign in again.",
                user=None,
                retry="/auth/login",
            )
        if "error" in request.query or "code" not in request.query:
            return page(
                "message.html",
                status=403,
                title="Not signed in",
                message="The sign-in was cancelled or refused.",
                user=None,
                retry="/auth/login",
            )
        try:
            _, token_url = await self._discover()
            token = await self._exchange(
                token_url,
                request.query["code"],
                pending.code_verifier,
                self._redirect_uri(request),
            )
            user = await self.gateway.verifier.verify_user(token)
        except (FetchError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return self._unavailable(exc)
        except AuthError as exc:
            log.info("browser sign-in refused: %s", exc)
            return page(
                "message.html",
                status=403,
                title="Not signed in",
                message=f"The sign-in could not be completed: {exc}",
                user=None,
                retry="/auth/login",
            )
        cookie, _ = self.sessions.create(user)
        log.info("browser session started for %s", user.name)
        response = web.HTTPFound(pending.next_url, headers={"Cache-Control": "no-store"})
        response.set_cookie(
            self.settings.cookies(request).session,
            cookie,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=self.settings.tls(request),
        )
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = self.session(request)
        if session is not None:
            form = await request.post()
            token = form.get("csrf")
            self.check_csrf(request, session, token if isinstance(token, str) else None)
            self.sessions.end(request.cookies.get(self.settings.cookies(request).session))
            log.info("browser session ended for %s", session.user.name)
        response = web.HTTPFound("/", headers={"Cache-Control": "no-store"})
        response.del_cookie(self.settings.cookies(request).session, path="/")
        return response

    async def app_handshake(self, request: web.Request) -> web.StreamResponse:
        """Send a signed-in browser back to an app host with a one-time code for its ticket."""
        host = request.query.get("host", "").lower()
        try:
            label = split_host(host, self.settings.apps_domain)
        except BadHost:
            label = None
        if label is None:
            raise web.HTTPBadRequest(text="host is not an app host of this gateway")
        session = self.session(request)
        if session is None:
            raise self.login_redirect(request)
        code = self.sessions.handshake_code(session, host)
        scheme = "https" if self.settings.tls(request) else "http"
        query = urlencode({"code": code, "next": safe_next(request.query.get("next"))})
        raise web.HTTPFound(
            f"{scheme}://{host}/__kuberde/auth?{query}",
            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
        )
