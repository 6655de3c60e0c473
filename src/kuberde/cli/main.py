"""The `kuberde` command."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from kuberde import __version__
from kuberde.cli import auth_commands, backup, commands, workspaces
from kuberde.cli.base import (
    USAGE_ERROR,
    Gateway,
    Group,
    command,
    fail,
    gateway_command,
    stdin_is_terminal,
)
from kuberde.cli.doctor import doctor
from kuberde.cli.operator_cmd import operator
from kuberde.cli.token import app as token_app
from kuberde.local.accounts import DEFAULT_HOMES_DIR
from kuberde.logs import configure_logging

app = typer.Typer(
    name="kuberde",
    cls=Group,
    help="Remote development environments that sleep when idle and wake on connect.\n\n"
    "Start with `kuberde up` (or `make run` in a clone), then `kuberde ls` and "
    "`kuberde ssh demo`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(token_app, name="token")
workspaces.register(app)
commands.register(app)
auth_commands.register(app)
backup.register(app)
command(app, "operator")(operator)
gateway_command(app, "doctor")(doctor)

DEFAULT_STATE_DIR = Path.home() / ".local" / "state" / "kuberde"


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def main_options(
    log_level: Annotated[
        str,
        typer.Option(
            envvar="KUBERDE_LOG_LEVEL",
            metavar="debug|info|warning|error",
            help="Log detail on stderr (every command also takes --log-level).",
        ),
    ] = "info",
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the client's version."
        ),
    ] = False,
) -> None:
    configure_logging(log_level)


def version(gateway: Gateway) -> None:
    """Show the client's version and the gateway's (`GET /api/version`).

    Examples:

    \b
      kuberde version
      kuberde version --server https://gateway.example
    """
    from kuberde.cli.config import ClientSettings, ConfigError, config_path, load, normalize_server

    typer.echo(f"Client version: {__version__}")
    try:
        stored = load(config_path())
        chosen = gateway.server or os.environ.get("KUBERDE_SERVER") or stored.server
        server = normalize_server(chosen) if chosen else None
    except ConfigError as exc:
        fail(str(exc), USAGE_ERROR)
    if server is None:
        typer.echo("Gateway version: unknown (no gateway configured: run `kuberde up`)")
        return
    ca_file = gateway.ca_file or os.environ.get("KUBERDE_CA_FILE") or stored.ca_file
    settings = ClientSettings(server=server, token="", ca_file=ca_file)
    from kuberde import aio
    from kuberde.cli.api import ApiError, request

    try:
        answer = aio.run(request(settings, "GET", "/api/version", authenticate=False))
    except ApiError as exc:
        fail(str(exc))
    typer.echo(f"Gateway version: {answer.get('version', 'unknown')} ({server})")


gateway_command(app, "version")(version)


class Shell(StrEnum):
    BASH = "bash"
    ZSH = "zsh"
    FISH = "fish"


@command(app, "completion")
def completion(
    shell: Annotated[Shell, typer.Argument(metavar="bash|zsh|fish", help="Your shell.")],
) -> None:
    """Print a shell completion script (commands, options and workspace names).

    Examples:

    \b
      source <(kuberde completion bash)
      kuberde completion zsh > "${fpath[1]}/_kuberde"
      kuberde completion fish > ~/.config/fish/completions/kuberde.fish
    """
    from typer._completion_shared import get_completion_script

    typer.echo(
        get_completion_script(prog_name="kuberde", complete_var="_KUBERDE_COMPLETE", shell=shell)
    )


@command(app, "server")
def server(
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on")] = "127.0.0.1:8080",
    state_dir: Annotated[
        Path, typer.Option(envvar="KUBERDE_STATE_DIR", help="Signing key and state")
    ] = DEFAULT_STATE_DIR,
    tls_cert: Annotated[str | None, typer.Option(help="PEM certificate: serve HTTPS/WSS")] = None,
    tls_key: Annotated[str | None, typer.Option(help="PEM private key for --tls-cert")] = None,
    wake_timeout: Annotated[
        float, typer.Option(help="Seconds a user waits for an offline agent to come online")
    ] = 120.0,
    header_timeout: Annotated[
        float, typer.Option(help="Seconds a new connection has to send its request headers")
    ] = 10.0,
    max_unauthenticated_per_address: Annotated[
        int, typer.Option(help="Connections one address may hold before authenticating")
    ] = 64,
    max_streams_per_user: Annotated[
        int, typer.Option(help="Connections (streams) one user may hold open at once")
    ] = 128,
    oidc_issuer: Annotated[
        str | None,
        typer.Option(envvar="KUBERDE_OIDC_ISSUER", help="Verify users' tokens from this issuer"),
    ] = None,
    oidc_audience: Annotated[
        str, typer.Option(help="Audience users' access tokens must carry")
    ] = "kuberde",
    oidc_client_id: Annotated[
        str, typer.Option(help="The CLI's client ID at the issuer; tokens with this azp pass")
    ] = "kuberde-cli",
    username_claim: Annotated[
        str, typer.Option(help="Claim holding the username")
    ] = "preferred_username",
    admin_role: Annotated[
        str, typer.Option(help="Role (in realm_access.roles) or group granting admin")
    ] = "admin",
    groups_claim: Annotated[
        str | None, typer.Option(help="Claim listing groups; the admin role as a group counts")
    ] = None,
    agent_id_claim: Annotated[
        str | None,
        typer.Option(help="Accept agents' client-credentials tokens whose claim names the agent"),
    ] = None,
    mgmt_token_file: Annotated[
        Path | None, typer.Option(help="File holding a shared token for /mgmt (re-read per use)")
    ] = None,
    signing_key_file: Annotated[
        Path | None,
        typer.Option(
            envvar="KUBERDE_SIGNING_KEY_FILE",
            help="Signing key shared with the operator (a mounted Secret)",
        ),
    ] = None,
    kubernetes: Annotated[
        bool,
        typer.Option(
            help="Learn agents from RDEAgents so offline ones can be authorized and woken"
        ),
    ] = False,
    namespace: Annotated[
        str, typer.Option(envvar="KUBERDE_NAMESPACE", help="Namespace of the RDEAgents")
    ] = "kuberde",
    kubeconfig: Annotated[
        Path | None, typer.Option(help="kubeconfig (default: $KUBECONFIG, in-cluster, ~/.kube)")
    ] = None,
    mgmt_service_account: Annotated[
        list[str] | None,
        typer.Option(help="NAMESPACE:NAME of a ServiceAccount allowed on /mgmt (TokenReview)"),
    ] = None,
    apps_domain: Annotated[
        str | None,
        typer.Option(
            envvar="KUBERDE_APPS_DOMAIN",
            help="Serve workspace apps at *.APPS_DOMAIN (wildcard DNS and certificate)",
        ),
    ] = None,
    public_url: Annotated[
        str | None,
        typer.Option(
            envvar="KUBERDE_PUBLIC_URL", help="The dashboard's URL, where app hosts send sign-ins"
        ),
    ] = None,
) -> None:
    """Run the gateway alone: agents dial in on /ws, users connect on /connect/NAME.

    Examples:

    \b
      kuberde server --listen 0.0.0.0:8080 --oidc-issuer https://sso.example/realms/dev
      kuberde server --kubernetes --tls-cert cert.pem --tls-key key.pem
    """
    from kuberde import aio
    from kuberde.auth.mgmt import service_account_username
    from kuberde.auth.oidc import AgentClaims, UserClaims
    from kuberde.gateway.app import GatewaySettings
    from kuberde.gateway.connections import ConnectionLimits
    from kuberde.gateway.limits import StreamQuotaSettings
    from kuberde.gateway.server import (
        BrowserOptions,
        GatewayAuth,
        KubernetesOptions,
        parse_listen,
        run_gateway,
    )

    try:
        address = parse_listen(listen)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--listen") from None
    accounts = []
    for account in mgmt_service_account or []:
        namespace, _, name = account.partition(":")
        if not namespace or not name:
            raise typer.BadParameter(
                f"{account!r} must look like NAMESPACE:NAME", param_hint="--mgmt-service-account"
            )
        accounts.append(service_account_username(namespace, name))
    for value, hint in (
        (header_timeout, "--header-timeout"),
        (max_unauthenticated_per_address, "--max-unauthenticated-per-address"),
        (max_streams_per_user, "--max-streams-per-user"),
    ):
        if value <= 0:
            raise typer.BadParameter("must be positive", param_hint=hint)
    if agent_id_claim and not oidc_issuer:
        raise typer.BadParameter("needs --oidc-issuer", param_hint="--agent-id-claim")
    auth = GatewayAuth(
        oidc_issuer=oidc_issuer or None,
        oidc_client_id=oidc_client_id,
        user_claims=UserClaims(
            audience=oidc_audience,
            client_id=oidc_client_id,
            username_claim=username_claim,
            admin_role=admin_role,
            groups_claim=groups_claim,
        ),
        agent_claims=AgentClaims(agent_claim=agent_id_claim) if agent_id_claim else None,
        mgmt_token_file=mgmt_token_file,
        mgmt_service_accounts=tuple(accounts),
    )
    with _start_up_errors():
        aio.run(
            run_gateway(
                listen=address,
                state_dir=state_dir,
                tls_cert=tls_cert,
                tls_key=tls_key,
                settings=GatewaySettings(
                    wake_timeout=wake_timeout,
                    connections=ConnectionLimits(
                        header_timeout=header_timeout,
                        max_unauthenticated_per_address=max_unauthenticated_per_address,
                    ),
                    streams=StreamQuotaSettings(
                        per_user=dataclasses.replace(
                            StreamQuotaSettings().per_user, max_streams=max_streams_per_user
                        )
                    ),
                ),
                auth=auth,
                kubernetes=KubernetesOptions(namespace, kubeconfig) if kubernetes else None,
                signing_key_file=signing_key_file,
                browser=BrowserOptions(
                    apps_domain=apps_domain or None, public_url=public_url or None
                ),
            )
        )


@contextlib.contextmanager
def _start_up_errors() -> Iterator[None]:
    """A file the gateway cannot start with (session file, signing key, users file, TLS
    files) or an address it cannot bind: one line saying which and why, exit 1."""
    from kuberde.auth.keys import SigningKeyError
    from kuberde.auth.users import UsersFileError

    try:
        yield
    except (OSError, SigningKeyError, UsersFileError) as exc:
        typer.echo(f"kuberde: {exc}", err=True)
        raise typer.Exit(1) from None


@command(app, "agent")
def agent() -> None:
    """Run a workspace agent, configured by environment as in a pod (SERVER_URL, LOCAL_TARGET,
    ALLOWED_PORTS, AGENT_TOKEN or AGENT_TOKEN_FILE, AGENT_ID).

    Examples:

    \b
      SERVER_URL=ws://127.0.0.1:8080/ws AGENT_TOKEN_FILE=agent.jwt kuberde agent
    """
    from kuberde.agent.client import main as agent_main

    raise typer.Exit(agent_main())


@command(app, "up")
def up(
    files: Annotated[
        list[Path] | None,
        typer.Option("-f", "--filename", metavar="FILE", help="RDEAgent YAML file (repeatable)."),
    ] = None,
    state_dir: Annotated[
        Path,
        typer.Option(
            envvar="KUBERDE_STATE_DIR", metavar="DIR", help="Workspace state, keys and logs"
        ),
    ] = DEFAULT_STATE_DIR,
    listen: Annotated[
        str, typer.Option(metavar="HOST:PORT", help="Where the gateway listens")
    ] = "127.0.0.1:8080",
    sweep_interval: Annotated[
        float, typer.Option(metavar="SECONDS", help="Seconds between lifecycle sweeps (TTL checks)")
    ] = 1.0,
    apps_domain: Annotated[
        str,
        typer.Option(
            metavar="DOMAIN", help="Workspace apps are served at *.DOMAIN (no DNS for localhost)"
        ),
    ] = "localhost",
    homes_dir: Annotated[
        Path,
        typer.Option(
            envvar="KUBERDE_HOMES_DIR",
            metavar="DIR",
            help="As root: where the homes of the workspace accounts (kuberde-OWNER) go",
        ),
    ] = DEFAULT_HOMES_DIR,
    public_url: Annotated[
        str | None,
        typer.Option(
            envvar="KUBERDE_PUBLIC_URL",
            metavar="URL",
            help="The dashboard's https URL when browsers reach it through a proxy, not loopback",
        ),
    ] = None,
) -> None:
    """Run the gateway and local workspaces (a demo one when no file is given).

    Examples:

    \b
      kuberde up
      kuberde up -f dev.yaml --listen 127.0.0.1:9090
    """
    from kuberde import aio
    from kuberde.cli.up_cmd import announce
    from kuberde.gateway.server import parse_listen
    from kuberde.local.up import issuer_settings_for, run_up

    try:
        address = parse_listen(listen)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--listen") from None
    try:
        issuer_settings = issuer_settings_for(public_url)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--public-url") from None
    with _start_up_errors():
        code = aio.run(
            run_up(
                files=list(files or []),
                state_dir=state_dir,
                listen=address,
                on_ready=announce,
                sweep_interval=sweep_interval,
                apps_domain=apps_domain,
                homes_dir=homes_dir,
                issuer_settings=issuer_settings,
            )
        )
    raise typer.Exit(code)


@command(app, "user-add")
def user_add(
    username: Annotated[
        str,
        typer.Argument(metavar="NAME", help="Lower-case user name (the owner in RDEAgents)."),
    ],
    admin: Annotated[bool, typer.Option(help="May reach every workspace.")] = False,
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin",
            help="Read the password from standard input (also when stdin is not a terminal).",
        ),
    ] = False,
    state_dir: Annotated[
        Path,
        typer.Option(
            envvar="KUBERDE_STATE_DIR", metavar="DIR", help="State directory of `kuberde up`."
        ),
    ] = DEFAULT_STATE_DIR,
) -> None:
    """Add or update a user of the built-in sign-in (`kuberde login` under `kuberde up`).

    On a terminal the password is asked for twice; otherwise it is the first line of
    standard input, as with `docker login --password-stdin`.

    Examples:

    \b
      kuberde user-add alice
      printf '%s\\n' "$PASSWORD" | kuberde user-add alice --password-stdin
    """
    from kuberde.auth.users import USERS_FILE, UsersFileError, set_user
    from kuberde.naming import InvalidName, validate_name

    try:
        validate_name(username, "user name")
    except InvalidName as exc:
        raise typer.BadParameter(str(exc), param_hint="USERNAME") from None
    password = _password(password_stdin)
    try:
        set_user(state_dir / USERS_FILE, username, password, admin=admin)
    except UsersFileError as exc:
        typer.echo(f"kuberde: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"user {username} saved in {state_dir / USERS_FILE}", err=True)


def _password(from_stdin: bool) -> str:
    """The first line of stdin when asked to or when it is no terminal; else a prompt on it.

    (getpass, behind the prompt, would read /dev/tty even when stdin is piped.)
    """
    if from_stdin or not stdin_is_terminal():
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            fail("no password on standard input", USAGE_ERROR)
        return password
    password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        fail("the password must not be empty", USAGE_ERROR)
    return str(password)


def main() -> None:
    if "_KUBERDE_COMPLETE" in os.environ:
        # A shell asks for completions (`kuberde completion SHELL`'s script): Typer's shell
        # classes are registered by its --install-completion machinery, which we leave out.
        from typer._completion_classes import completion_init

        completion_init()
    app()
