"""`kuberde server`: the gateway process (state directory, signing key, TLS, listener).

Credentials signed with the gateway's key are always accepted for agents and the management
API. `GatewayAuth` adds the production options: users from an OIDC provider (then only
from it), agents holding client-credentials tokens, and a shared or ServiceAccount token for
`/mgmt`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from kuberde import __version__
from kuberde.aio import wait_for_signal
from kuberde.auth import (
    LocalTokenVerifier,
    SigningKey,
    TokenVerifier,
    load_signing_key,
)
from kuberde.auth.mgmt import KubernetesTokenReview, SharedTokenVerifier, TokenReviewVerifier
from kuberde.auth.oidc import (
    AgentClaims,
    AgentVerifier,
    CompositeVerifier,
    HttpJsonFetcher,
    ManagementVerifier,
    OidcAgentVerifier,
    OidcProvider,
    OidcUserVerifier,
    UserClaims,
    UserVerifier,
    auth_config_route,
)
from kuberde.gateway.app import GATEWAY_KEY, GatewaySettings, create_app
from kuberde.gateway.connections import ConnectionLimits, GuardedSite, raise_fd_limit
from kuberde.gateway.directory import AgentDirectory
from kuberde.gateway.kubernetes import KubernetesDirectory
from kuberde.gateway.session_file import SESSIONS_FILE
from kuberde.gateway.web import BrowserSettings, add_browser
from kuberde.gateway.web.actions_api import add_action_routes, add_kubectl_hints
from kuberde.gateway.web.directory_workspaces import DirectoryWorkspaces
from kuberde.kube import KubeApi, load_configuration
from kuberde.tls import client_ssl_context, server_ssl_context

__all__ = [
    "BrowserOptions",
    "GatewayAuth",
    "KubernetesOptions",
    "ListenAddress",
    "bind_socket",
    "build_verifier",
    "parse_listen",
    "run_gateway",
    "socket_url",
    "start_site",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int


def parse_listen(value: str) -> ListenAddress:
    """Parse HOST:PORT ([::1]:8080 for IPv6); port 0 picks a free port."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen {value!r} must look like HOST:PORT, e.g. 127.0.0.1:8080")
    return ListenAddress(host.strip("[]") or "0.0.0.0", int(port))


def bind_socket(listen: ListenAddress) -> socket.socket:
    """Bind the listening socket up front, so the real port (for port 0) is known early."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listen.host, listen.port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {listen.host}:{listen.port}: {exc.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def socket_url(sock: socket.socket, tls: bool) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


class BadRequestLog(logging.Filter):
    """aiohttp logs a malformed request (an oversized header, a broken request line) at
    ERROR with a traceback; it is the client's mistake, answered with 400: one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg, record.args, record.exc_info = "bad request: %s", (error.message,), None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_BAD_REQUEST_LOG = BadRequestLog()


async def start_site(
    app: web.Application,
    sock: socket.socket,
    ssl_context: ssl.SSLContext | None,
    limits: ConnectionLimits | None = None,
) -> web.AppRunner:
    """Serve `app` on `sock`, with the connection limits and timeouts of `limits`."""
    limits = limits or ConnectionLimits()
    log.debug("open-file limit: %d", raise_fd_limit())
    logging.getLogger("aiohttp.server").addFilter(_BAD_REQUEST_LOG)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=5.0,
        keepalive_timeout=limits.keepalive_timeout,
    )
    await runner.setup()
    await GuardedSite(runner, sock, limits=limits, ssl_context=ssl_context).start()
    return runner


@dataclass(frozen=True)
class GatewayAuth:
    oidc_issuer: str | None = None
    #: The CLI's client at the provider, published at /api/auth/config; `azp` may name it.
    oidc_client_id: str = "kuberde-cli"
    user_claims: UserClaims = field(default_factory=UserClaims)
    #: Accept agents' client-credentials tokens bound by these claims (needs `oidc_issuer`).
    agent_claims: AgentClaims | None = None
    mgmt_token_file: Path | None = None
    #: ServiceAccount usernames allowed on /mgmt via TokenReview.
    mgmt_service_accounts: tuple[str, ...] = ()


async def build_verifier(
    auth: GatewayAuth, key: SigningKey, directory: AgentDirectory | None
) -> TokenVerifier:
    local = LocalTokenVerifier.from_signing_key(key)
    users: list[UserVerifier] = [local]
    agents: list[AgentVerifier] = [local]
    management: list[ManagementVerifier] = [local]
    if auth.oidc_issuer:
        provider = OidcProvider(auth.oidc_issuer, HttpJsonFetcher(ssl_context=client_ssl_context()))
        users = [OidcUserVerifier(provider, auth.user_claims)]
        if auth.agent_claims is not None:
            lookup = directory.lookup if directory is not None else None
            agents.append(OidcAgentVerifier(provider, auth.agent_claims, lookup=lookup))
    elif auth.agent_claims is not None:
        raise ValueError("client-credentials agents need an OIDC issuer")
    if auth.mgmt_token_file is not None:
        management.append(SharedTokenVerifier(auth.mgmt_token_file))
    if auth.mgmt_service_accounts:
        reviewer = await KubernetesTokenReview.load()
        management.append(TokenReviewVerifier(reviewer, allowed_users=auth.mgmt_service_accounts))
    return CompositeVerifier(users=users, agents=agents, management=management)


@dataclass(frozen=True)
class BrowserOptions:
    """Browser sign-in and the dashboard need an OIDC issuer; apps need a wildcard domain."""

    #: Apps are served at `*.{apps_domain}` (a wildcard DNS name and certificate).
    apps_domain: str | None = None
    #: The dashboard's URL (`https://kuberde.example.com`); default: the request's origin.
    public_url: str | None = None


@dataclass(frozen=True)
class KubernetesOptions:
    """`kuberde server --kubernetes`: learn agents (owner, UID, phase) from RDEAgents."""

    namespace: str = "kuberde"
    kubeconfig: Path | None = None


async def run_gateway(
    *,
    listen: ListenAddress,
    state_dir: Path,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    settings: GatewaySettings | None = None,
    directory: AgentDirectory | None = None,
    verifier: TokenVerifier | None = None,
    auth: GatewayAuth | None = None,
    kubernetes: KubernetesOptions | None = None,
    signing_key_file: Path | None = None,
    browser: BrowserOptions | None = None,
) -> None:
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("--tls-cert and --tls-key must be given together")
    key = load_signing_key(signing_key_file, state_dir)
    settings = settings or GatewaySettings()
    watcher: asyncio.Task[None] | None = None
    api: KubeApi | None = None
    requests: KubernetesDirectory | None = None
    if kubernetes is not None:
        api = KubeApi.connect(
            await load_configuration(kubernetes.kubeconfig),
            timeout=10.0,
            user_agent=f"kuberde-gateway/{__version__}",
        )
        kube_directory = KubernetesDirectory(api, kubernetes.namespace)
        directory = requests = kube_directory
        watcher = asyncio.create_task(kube_directory.run())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10.0):
                await kube_directory.synced.wait()
    auth = auth or GatewayAuth()
    if verifier is None:
        verifier = await build_verifier(auth, key, directory)
    app = create_app(verifier, settings, directory)
    workspaces = DirectoryWorkspaces(app[GATEWAY_KEY], requests)
    browser = browser or BrowserOptions()
    if kubernetes is not None and requests is not None:
        # Apps are served (so have URLs) only where browsers can sign in.
        apps_domain = browser.apps_domain if auth.oidc_issuer else None
        api_routes = add_action_routes(app, workspaces, apps_domain)
        add_kubectl_hints(app, api_routes, kubernetes.namespace)
    if auth.oidc_issuer:
        app.router.add_routes([auth_config_route(auth.oidc_issuer, auth.oidc_client_id, "openid")])
        add_browser(
            app,
            BrowserSettings(
                issuer=auth.oidc_issuer,
                client_id=auth.oidc_client_id,
                apps_domain=browser.apps_domain,
                public_url=browser.public_url,
                wake_timeout=settings.wake_timeout,
                sessions_file=state_dir / SESSIONS_FILE,
            ),
            workspaces,
        )
    ssl_context = server_ssl_context(tls_cert, tls_key) if tls_cert and tls_key else None
    sock = bind_socket(listen)
    runner = await start_site(app, sock, ssl_context, settings.connections)
    url = socket_url(sock, tls=ssl_context is not None)
    print(f"KubeRDE gateway listening on {url}", file=sys.stderr, flush=True)
    try:
        received = await wait_for_signal()
        log.info("received %s; shutting down", received.name)
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await runner.cleanup()
        if api is not None:
            await api.close()
