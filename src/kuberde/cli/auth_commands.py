"""`kuberde login`, `logout` and `whoami`; `register` mounts them.

Messages go to stderr and `whoami`'s answer to stdout. No command ever prints a token.
Exit codes: 0 done, 1 the sign-in or the issuer failed, 2 usage or configuration error.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import webbrowser
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kuberde.cli.base import Gateway, gateway_command
from kuberde.cli.config import (
    CA_FILE_ENV,
    DEFAULT_SCOPE,
    SERVER_ENV,
    CliConfig,
    ConfigError,
    config_path,
    load,
    normalize_server,
    resolve,
    save,
)
from kuberde.policy import format_duration, format_timestamp

if TYPE_CHECKING:
    from kuberde.cli.login import DeviceAuthorization, TokenGrant

__all__ = ["login", "logout", "register", "whoami"]

FAILED = 1
USAGE_ERROR = 2


def register(app: typer.Typer) -> None:
    """Mount the sign-in commands on the main `kuberde` app."""
    gateway_command(app, "login")(login)
    gateway_command(app, "logout", token=False)(logout)
    gateway_command(app, "whoami")(whoami)


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"kuberde: {message}", err=True)
    return typer.Exit(code)


def _run(main: Coroutine[Any, Any, None]) -> None:
    from kuberde import aio
    from kuberde.cli.login import LoginError

    try:
        aio.run(main)
    except LoginError as exc:
        raise _fail(str(exc), FAILED) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _load(path: Path) -> CliConfig:
    try:
        return load(path)
    except ConfigError as exc:
        raise _fail(str(exc), USAGE_ERROR) from None


def _server(flag: str | None, environ: Mapping[str, str], stored: CliConfig) -> str:
    chosen = flag or environ.get(SERVER_ENV) or stored.server
    if not chosen:
        raise _fail("no server: pass --server URL (the gateway) or set KUBERDE_SERVER", USAGE_ERROR)
    try:
        return normalize_server(chosen)
    except ConfigError as exc:
        raise _fail(str(exc), USAGE_ERROR) from None


def _same_server(config: CliConfig, server: str) -> bool:
    try:
        return config.server is not None and normalize_server(config.server) == server
    except ConfigError:
        return False


def _show_code(authorization: DeviceAuthorization) -> None:
    typer.echo(
        f"To sign in, open {authorization.verification_uri} "
        f"and enter code {authorization.user_code}",
        err=True,
    )
    if authorization.verification_uri_complete:
        typer.echo(f"(or open {authorization.verification_uri_complete})", err=True)
    typer.echo("Waiting for the sign-in to finish…", err=True)


def _url_opener(open_browser: bool) -> Callable[[str], None]:
    def show(url: str) -> None:
        typer.echo(f"To sign in, open this URL in a browser:\n  {url}", err=True)

    def launch(url: str) -> None:
        typer.echo(f"Opening a browser to sign in; if none opens, visit:\n  {url}", err=True)
        # A daemon thread: a console browser (w3m, lynx) may hold it until it exits.
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()

    return launch if open_browser else show


def login(
    gateway: Gateway,
    issuer: Annotated[
        str | None,
        typer.Option(
            "--issuer",
            metavar="URL",
            help="OIDC issuer URL (default: the one the gateway names at /api/auth/config).",
            show_default=False,
        ),
    ] = None,
    client_id: Annotated[
        str | None,
        typer.Option(
            "--client-id",
            metavar="ID",
            help="OAuth client ID (default: the gateway's).",
            show_default=False,
        ),
    ] = None,
    browser: Annotated[
        bool,
        typer.Option(
            "--browser",
            help="Sign in in a local browser (authorization code + PKCE) instead of with a code.",
        ),
    ] = False,
    no_open: Annotated[
        bool,
        typer.Option("--no-open", help="With --browser: print the URL instead of opening it."),
    ] = False,
    scope: Annotated[
        str | None,
        typer.Option(
            "--scope",
            metavar="SCOPES",
            help=f"Scopes to request (default: {DEFAULT_SCOPE!r}).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Sign in with the organisation's OIDC provider; the token is kept in the CLI config.

    `--ca-file` is trusted for the gateway and the issuer, and saved with the login.
    `--token` saves a token you already have (say, from `kuberde token user`) instead of
    signing in.

    Examples:

    \b
      kuberde login --server https://gateway.example
      kuberde login --browser
      kuberde login --server http://127.0.0.1:8080 --token "$TOKEN"
    """
    environ = os.environ
    path = config_path(environ)
    stored = _load(path)
    target = _server(gateway.server, environ, stored)
    ca_file = gateway.ca_file
    kept_ca = stored.ca_file if _same_server(stored, target) else None
    if gateway.token is not None:
        _run(_save_token(path, target, gateway.token, ca_file or kept_ca))
        return
    trusted = ca_file or environ.get(CA_FILE_ENV) or kept_ca
    _run(
        _login(
            path,
            target,
            issuer=issuer,
            client_id=client_id,
            scope=scope,
            ca_file=trusted,
            saved_ca_file=ca_file or kept_ca,
            browser=browser,
            open_browser=not no_open,
        )
    )


async def _save_token(path: Path, server: str, token: str, ca_file: str | None) -> None:
    """Store a token given by hand for `server`, replacing any login (never renewed)."""
    from kuberde.cli.login import config_lock, without_login

    async with config_lock(path):
        config = without_login(_load(path))
        save(dataclasses.replace(config, server=server, token=token, ca_file=ca_file), path)
    typer.echo(f"Saved the token for {server} in {path}.", err=True)


async def _login(
    path: Path,
    server: str,
    *,
    issuer: str | None,
    client_id: str | None,
    scope: str | None,
    ca_file: str | None,
    saved_ca_file: str | None,
    browser: bool,
    open_browser: bool,
) -> None:
    from kuberde.cli.login import (
        LoginError,
        LoginSession,
        browser_login,
        config_lock,
        device_login,
        discover,
        fetch_auth_config,
        http_session,
        identity,
        unverified_claims,
        with_login,
    )

    async with http_session(ca_file) as http:
        if issuer is None or client_id is None:
            advertised = await fetch_auth_config(http, server)
            issuer = issuer or advertised.issuer
            client_id = client_id or advertised.client_id
            scope = scope or advertised.scope
        if client_id is None:
            raise LoginError(f"{server} names no OAuth client for the CLI; pass --client-id")
        metadata = await discover(http, issuer)
        requested = scope or DEFAULT_SCOPE
        grant: TokenGrant
        if browser:
            grant = await browser_login(
                http, metadata, client_id, requested, open_url=_url_opener(open_browser)
            )
        else:
            grant = await device_login(http, metadata, client_id, requested, notify=_show_code)
    claims = unverified_claims(grant.access_token)
    subject = claims.get("sub") if claims is not None else None
    session = LoginSession(
        server=server,
        issuer=metadata.issuer,
        client_id=client_id,
        subject=subject if isinstance(subject, str) else None,
        refresh_token=grant.refresh_token,
        expires_at=grant.expires_at,
    )
    async with config_lock(path):
        config = dataclasses.replace(_load(path), ca_file=saved_ca_file)
        save(with_login(config, session, grant.access_token), path)
    if claims is None:
        typer.echo(
            "kuberde: warning: the issuer's access token is not a JWT, so the gateway cannot "
            "verify it; ask for the client to issue JWT access tokens",
            err=True,
        )
    who = identity(claims).user if claims is not None else None
    typer.echo(f"Logged in to {server}" + (f" as {who}." if who else "."), err=True)
    if grant.refresh_token is None:
        typer.echo(
            "kuberde: the issuer gave no refresh token: run `kuberde login` again when the "
            "token expires",
            err=True,
        )


def logout(gateway: Gateway) -> None:
    """Forget the stored login (revoking its refresh token where the issuer allows it).

    Examples:

    \b
      kuberde logout
    """
    path = config_path(os.environ)
    target = _server(gateway.server, os.environ, _load(path))
    _run(_logout(path, target, gateway.ca_file))


async def _logout(path: Path, server: str, ca_file: str | None) -> None:
    from kuberde.cli.login import (
        LoginError,
        config_lock,
        discover,
        http_session,
        revoke,
        stored_session,
        without_login,
    )

    async with config_lock(path):
        config = _load(path)
        session = stored_session(config)
        if session is None or session.server != server:
            typer.echo(f"Not logged in to {server}.", err=True)
            return
        save(without_login(config), path)
    typer.echo(f"Logged out of {server}.", err=True)
    if session.refresh_token is None:
        return
    try:
        async with http_session(ca_file or config.ca_file) as http:
            metadata = await discover(http, session.issuer)
            revoked = await revoke(http, metadata, session.client_id, session.refresh_token)
    except LoginError as exc:
        typer.echo(
            f"kuberde: warning: the refresh token was deleted here but not revoked: {exc}",
            err=True,
        )
        return
    if not revoked:
        typer.echo(
            f"{session.issuer} offers no token revocation: the deleted refresh token stays "
            "valid there until it expires",
            err=True,
        )


def _expiry(expires_at: datetime | None, renewable: bool, now: datetime) -> str:
    if expires_at is None:
        return "never"
    stamp = format_timestamp(expires_at)
    if expires_at > now:
        return f"{stamp} (in {format_duration(expires_at - now)})"
    then = "renewed on the next connection" if renewable else "run `kuberde login`"
    return f"{stamp} (expired {format_duration(now - expires_at)} ago; {then})"


def whoami(gateway: Gateway) -> None:
    """Show who the stored token (or `--token`) speaks for, as the token says (the gateway
    verifies it).

    Examples:

    \b
      kuberde whoami
      kuberde whoami --token "$KUBERDE_TOKEN"
    """
    from kuberde.cli.login import identity, session_for, unverified_claims

    path = config_path(os.environ)
    try:
        settings = resolve(
            gateway.server, gateway.token, os.environ, ca_file_flag=gateway.ca_file, path=path
        )
    except ConfigError as exc:
        raise _fail(f"not logged in: {exc}", USAGE_ERROR) from None
    claims = unverified_claims(settings.token)
    if claims is None:
        raise _fail("the token is not a JWT, so it does not say whom it belongs to", FAILED)
    who = identity(claims)
    session = session_for(_load(path), settings.server, settings.token)
    renewable = session is not None and session.refresh_token is not None
    rows = [
        ("user", who.user or "<unknown>"),
        ("admin", "yes" if who.admin else "no"),
        ("issuer", who.issuer or "<unknown>"),
        ("expires", _expiry(who.expires_at, renewable, datetime.now(UTC))),
        ("server", settings.server),
    ]
    for label, value in rows:
        typer.echo(f"{label + ':':9}{value}")
