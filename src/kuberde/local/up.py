"""`kuberde up`: the gateway and the local runtime in one process — the embedded default.

What the user is told, and the CLI configuration written for them, belong to the CLI layer
(`kuberde.cli.up_cmd`); this module hands it a `Ready` once the gateway listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from aiohttp import web

from kuberde.aio import wait_for_signal
from kuberde.auth import LocalTokenVerifier, TokenIssuer, load_or_create_signing_key
from kuberde.auth.issuer import (
    BUILTIN_CLIENT_ID,
    BUILTIN_USER_CLAIMS,
    DEFAULT_SCOPE,
    BuiltinIssuer,
    IssuerSettings,
)
from kuberde.auth.oidc import CompositeVerifier, OidcProvider, OidcUserVerifier, auth_config_route
from kuberde.auth.users import USERS_FILE, UsersFile, UsersFileError
from kuberde.gateway.app import GatewaySettings, create_app
from kuberde.gateway.connections import GuardedSite
from kuberde.gateway.presence import Presence
from kuberde.gateway.server import ListenAddress, bind_socket, socket_url, start_site
from kuberde.gateway.session_file import SESSIONS_FILE
from kuberde.gateway.standing import ListedTokenUsers, ListedUsers
from kuberde.gateway.web import BrowserSettings, add_browser
from kuberde.gateway.web.actions_api import add_action_routes
from kuberde.local.accounts import DEFAULT_HOMES_DIR, AccountError, Accounts
from kuberde.local.api import add_workspace_routes
from kuberde.local.demo import DemoWorkspace, current_user, demo_workspace
from kuberde.local.netns import OwnerNetworks
from kuberde.local.runtime import LocalRuntime, RuntimeSettings
from kuberde.local.store import STATE_DB_NAME, StateStore
from kuberde.local.web import LocalWorkspaces
from kuberde.resource import load_documents, parse_agent

__all__ = ["Ready", "issuer_settings_for", "run_up"]

log = logging.getLogger(__name__)

#: The local user's token (kept in their 0600 CLI config); `kuberde up` renews it each start.
LOCAL_USER_TOKEN_TTL = timedelta(days=30)


@dataclass(frozen=True)
class Ready:
    """`kuberde up` listens: its URL, the local user's token, and the demo (if it runs one)."""

    url: str
    token: str
    demo: DemoWorkspace | None


async def _load_files(runtime: LocalRuntime, files: list[Path]) -> int:
    """Apply every valid document; report the others by name. Returns the error count."""
    errors = 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            print(f"kuberde: cannot read {path}: {exc.strerror}", file=sys.stderr)
            errors += 1
            continue
        for result in load_documents(text, str(path)):
            if result.agent is None:
                print(f"kuberde: {result.error}", file=sys.stderr)
                errors += 1
                continue
            try:
                await runtime.apply(result.agent)
            except ValueError as exc:
                print(f"kuberde: {result.location}: {exc}", file=sys.stderr)
                errors += 1
    return errors


def _mapped_account(users: UsersFile) -> Callable[[str], str | None]:
    """The account the users file names for an owner (`account:`), if any."""

    def mapped(owner: str) -> str | None:
        try:
            user = users.get(owner)
        except UsersFileError as exc:
            raise AccountError(f"the users file is unusable: {exc}") from None
        return user.account if user is not None else None

    return mapped


def issuer_settings_for(public_url: str | None) -> IssuerSettings:
    """The built-in issuer's settings for a dashboard at `public_url` (a TLS proxy in front
    of the gateway, browsers not on loopback): its sign-in pages and its callback are there.
    Raises ValueError unless it is https (or on loopback)."""
    if not public_url:
        return IssuerSettings()
    public_url = public_url.rstrip("/")
    return IssuerSettings(
        redirect_uris={BUILTIN_CLIENT_ID: frozenset({public_url + "/auth/callback"})},
        browser_url=public_url,
    )


@web.middleware
async def _agents_only_on_unix_sockets(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """An owner's Unix socket (`kuberde.local.netns`) is for their agent: /ws, nothing else."""
    transport = request.transport
    on_unix_socket = transport is not None and isinstance(transport.get_extra_info("sockname"), str)
    if on_unix_socket and request.path != "/ws":
        raise web.HTTPNotFound(text="only the agent endpoint /ws is served here")
    return await handler(request)


def _agent_sites(
    gateway: asyncio.Future[web.AppRunner], settings: GatewaySettings
) -> Callable[[socket.socket], Awaitable[Callable[[], Awaitable[None]]]]:
    """Serving an owner's agent socket, by the gateway once it runs (`gateway` resolves then)."""

    async def serve(sock: socket.socket) -> Callable[[], Awaitable[None]]:
        site = GuardedSite(await gateway, sock, limits=settings.connections)
        await site.start()
        return site.stop

    return serve


async def run_up(
    *,
    files: list[Path],
    state_dir: Path,
    listen: ListenAddress,
    on_ready: Callable[[Ready], None],
    sweep_interval: float = 1.0,
    apps_domain: str = "localhost",
    homes_dir: Path = DEFAULT_HOMES_DIR,
    issuer_settings: IssuerSettings | None = None,
) -> int:
    """`issuer_settings` from `issuer_settings_for` (its browser URL is the dashboard's)."""
    issuer_settings = issuer_settings or IssuerSettings()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Workloads must not read anything in here (key, database, users, logs), whatever the
    # directory's mode was when it was created.
    state_dir.chmod(0o700)
    key = load_or_create_signing_key(state_dir)
    issuer = TokenIssuer(key)
    sock = bind_socket(listen)
    url = socket_url(sock, tls=False)
    users_file = UsersFile(state_dir / USERS_FILE)
    listed = ListedUsers(users_file)
    # Users' tokens come from the built-in issuer at our own URL, verified like any OIDC
    # provider's, and refused once their user no longer stands in the users file; agents
    # and the management API keep the local key's credentials.
    users = ListedTokenUsers(OidcUserVerifier(OidcProvider(url), BUILTIN_USER_CLAIMS), listed)
    local = LocalTokenVerifier.from_signing_key(key)
    verifier = CompositeVerifier(users=[users], agents=[local], management=[local])
    presence = Presence()
    store = StateStore(state_dir / STATE_DB_NAME)
    settings = RuntimeSettings(state_dir=state_dir, sweep_interval=sweep_interval)
    accounts = Accounts.for_this_process(homes_dir, _mapped_account(users_file))
    gateway_settings = GatewaySettings()
    gateway: asyncio.Future[web.AppRunner] = asyncio.get_running_loop().create_future()
    networks = OwnerNetworks.prepare(
        state_dir=state_dir,
        root=accounts.isolated,
        host_gateway_url=url.replace("http", "ws", 1) + "/ws",
        serve=_agent_sites(gateway, gateway_settings),
        logs_dir=settings.logs_dir,
    )
    runtime = LocalRuntime(settings, store, issuer, presence, accounts, networks)
    app = create_app(
        verifier, gateway_settings, directory=runtime, presence=presence, standing=listed
    )
    app.middlewares.insert(0, _agents_only_on_unix_sockets)
    browser_url = issuer_settings.browser_url or url
    oidc = BuiltinIssuer(
        url, key, state_dir, users=users_file, user_verifier=users, settings=issuer_settings
    )
    app.router.add_routes(
        [*oidc.routes(), auth_config_route(url, BUILTIN_CLIENT_ID, DEFAULT_SCOPE)]
    )
    add_workspace_routes(app, runtime)
    workspaces = LocalWorkspaces(runtime)
    add_action_routes(app, workspaces, apps_domain)
    add_browser(
        app,
        BrowserSettings(
            issuer=url,
            client_id=BUILTIN_CLIENT_ID,
            apps_domain=apps_domain,
            public_url=browser_url,
            sessions_file=state_dir / SESSIONS_FILE,
        ),
        workspaces,
        listed,
    )

    user = current_user()
    demo = None
    if files:
        if await _load_files(runtime, files):
            print("kuberde: some documents were rejected; the others are running", file=sys.stderr)
    else:
        try:
            demo = demo_workspace(state_dir, user, runtime.accounts.for_owner(user))
        except AccountError as exc:
            print(f"kuberde: cannot set up the demo workspace: {exc}", file=sys.stderr)
            await networks.close()
            store.close()
            return 1
        await runtime.apply(parse_agent(demo.document))

    runner = await start_site(app, sock, None)
    gateway.set_result(runner)
    on_ready(Ready(url, oidc.mint_access_token(user, ttl=LOCAL_USER_TOKEN_TTL), demo))
    loop_task = asyncio.create_task(runtime.run())
    try:
        signal_task = asyncio.create_task(wait_for_signal())
        done, _ = await asyncio.wait({loop_task, signal_task}, return_when=asyncio.FIRST_COMPLETED)
        if loop_task in done:
            loop_task.result()
        else:
            log.info("received %s; stopping workspaces", signal_task.result().name)
        signal_task.cancel()
    finally:
        loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop_task
        await runtime.shutdown()
        await networks.close()
        await runner.cleanup()
        store.close()
    return 0
