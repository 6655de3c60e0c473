"""`kuberde token`: mint credentials with the gateway's signing key.

Only the token goes to stdout, so `$(kuberde token user ...)` can be used directly; errors go
to stderr.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kuberde.auth.lifetimes import DEFAULT_AGENT_TTL, DEFAULT_MANAGEMENT_TTL, DEFAULT_USER_TTL
from kuberde.cli.base import Group, command
from kuberde.naming import InvalidName
from kuberde.policy import format_duration, parse_ttl

if TYPE_CHECKING:
    from kuberde.auth.tokens import TokenIssuer

__all__ = ["app"]

app = typer.Typer(
    cls=Group,
    help="Mint tokens signed with the gateway's key (kept in its state directory).",
    no_args_is_help=True,
)

StateDir = Annotated[
    Path,
    typer.Option(
        "--state-dir",
        metavar="DIR",
        help="Gateway state directory; the signing key is created there if missing.",
    ),
]


def _ttl_option(default: timedelta) -> object:
    return typer.Option(
        "--ttl",
        metavar="DURATION",
        help=f"Lifetime such as 90m, 1h or 30d (default {format_duration(default)}).",
    )


def _lifetime(value: str | None, default: timedelta) -> timedelta:
    if value is None:
        return default
    try:
        ttl = parse_ttl(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ttl") from None
    if ttl is None:
        raise typer.BadParameter("a token lifetime must be positive", param_hint="--ttl")
    return ttl


def _issuer(state_dir: Path) -> TokenIssuer:
    from kuberde.auth.keys import SigningKeyError, load_or_create_signing_key
    from kuberde.auth.tokens import TokenIssuer

    try:
        return TokenIssuer(load_or_create_signing_key(state_dir))
    except (SigningKeyError, OSError) as exc:
        typer.echo(f"kuberde: {exc}", err=True)
        raise typer.Exit(1) from None


@command(app)
def agent(
    state_dir: StateDir,
    owner: Annotated[str, typer.Option(help="The owning user's name.")],
    name: Annotated[str, typer.Option(help="The agent's name (the ID is user-OWNER-NAME).")],
    uid: Annotated[
        str | None, typer.Option(help="UID of the RDEAgent this credential is bound to.")
    ] = None,
    ttl: Annotated[str | None, _ttl_option(DEFAULT_AGENT_TTL)] = None,
) -> None:
    """Print an agent credential.

    Examples:

    \b
      kuberde token agent --state-dir ~/.local/state/kuberde --owner alice --name dev
    """
    lifetime = _lifetime(ttl, DEFAULT_AGENT_TTL)
    issuer = _issuer(state_dir)
    try:
        token = issuer.mint_agent(owner, name, uid=uid, ttl=lifetime)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(token)


@command(app)
def user(
    state_dir: StateDir,
    username: Annotated[str, typer.Option("--user", help="The user's name.")],
    admin: Annotated[bool, typer.Option("--admin", help="Grant the admin role.")] = False,
    ttl: Annotated[str | None, _ttl_option(DEFAULT_USER_TTL)] = None,
) -> None:
    """Print a user token.

    Examples:

    \b
      export KUBERDE_TOKEN=$(kuberde token user --state-dir /var/lib/kuberde --user alice)
    """
    lifetime = _lifetime(ttl, DEFAULT_USER_TTL)
    issuer = _issuer(state_dir)
    try:
        token = issuer.mint_user(username, admin=admin, ttl=lifetime)
    except InvalidName as exc:
        raise typer.BadParameter(str(exc), param_hint="--user") from None
    typer.echo(token)


@command(app)
def management(
    state_dir: StateDir,
    subject: Annotated[
        str, typer.Option(help="Who the token is for (shown in the gateway's logs).")
    ] = "kuberde-operator",
    ttl: Annotated[str | None, _ttl_option(DEFAULT_MANAGEMENT_TTL)] = None,
) -> None:
    """Print a token for the management API (`/mgmt/*`), as the operator uses.

    Examples:

    \b
      kuberde token management --state-dir /var/lib/kuberde --ttl 30d
    """
    lifetime = _lifetime(ttl, DEFAULT_MANAGEMENT_TTL)
    issuer = _issuer(state_dir)
    try:
        token = issuer.mint_management(subject, ttl=lifetime)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--subject") from None
    typer.echo(token)
