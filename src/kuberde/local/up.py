"""`kuberde up`: the gateway and the local runtime in one process — the embedded default."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import shlex
import shutil
import sys
from datetime import timedelta
from pathlib import Path

from kuberde.aio import wait_for_signal
from kuberde.auth import LocalTokenVerifier, TokenIssuer, load_or_create_signing_key
from kuberde.auth.issuer import (
    BUILTIN_CLIENT_ID,
    BUILTIN_USER_CLAIMS,
    DEFAULT_SCOPE,
    BuiltinIssuer,
)
from kuberde.auth.oidc import CompositeVerifier, OidcProvider, OidcUserVerifier, auth_config_route
from kuberde.auth.users import USERS_FILE, UsersFile
from kuberde.cli.config import CliConfig, ConfigError, config_path, load, save
from kuberde.gateway.app import GATEWAY_KEY, GatewaySettings, create_app
from kuberde.gateway.server import ListenAddress, bind_socket, socket_url, start_site
from kuberde.gateway.web import BrowserSettings, add_browser
from kuberde.local.api import add_workspace_routes
from kuberde.local.demo import DEMO_NAME, DemoWorkspace, current_user, demo_workspace
from kuberde.local.runtime import LocalRuntime, RuntimeSettings
from kuberde.local.store import STATE_DB_NAME, StateStore
from kuberde.local.web import LocalWorkspaces
from kuberde.resource import load_documents, parse_agent

__all__ = ["cli_program", "next_steps", "run_up"]

log = logging.getLogger(__name__)

#: The local user's token lives in their 0600 CLI config; `kuberde up` renews it each start.
LOCAL_USER_TOKEN_TTL = timedelta(days=30)


def _load_files(runtime: LocalRuntime, files: list[Path]) -> int:
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
                runtime.apply(result.agent)
            except ValueError as exc:
                print(f"kuberde: {result.location}: {exc}", file=sys.stderr)
                errors += 1
    return errors


def _write_cli_config(server: str, token: str) -> Path:
    existing = _stored_config()
    # `ssh` held the demo's key paths before they had fixed places (kuberde.cli.sshkeys).
    extra = {key: value for key, value in existing.extra.items() if key != "ssh"}
    return save(CliConfig(server=server, token=token, extra=extra))


def _stored_config() -> CliConfig:
    """The user's existing CLI config, so keys we do not manage survive; empty if unreadable."""
    try:
        return load(config_path())
    except ConfigError:
        return CliConfig()


def cli_program(argv0: str, on_path: str | None) -> str:
    """How the user's shell runs this CLI: `kuberde` when that is on PATH, else the path it
    was started by (`make run` starts `.venv/bin/kuberde`, which may not be on PATH)."""
    started = Path(argv0)
    if started.name != "kuberde" or (on_path and Path(on_path).resolve() == started.resolve()):
        return "kuberde"
    return str(started)


def plain_ssh_command(demo: DemoWorkspace, local_port: int, user: str) -> str:
    """Plain OpenSSH to the demo through a `port-forward`, with its host key checked and the
    user's SSH identity (their own key, else the managed one) offered explicitly."""
    words = ["ssh", "-p", str(local_port)]
    if demo.identity_file is not None:
        words += ["-i", str(demo.identity_file)]
    if demo.known_hosts is not None:
        words += ["-o", f"UserKnownHostsFile={demo.known_hosts}"]
    words += ["-o", f"HostKeyAlias={DEMO_NAME}.kuberde", f"{user}@127.0.0.1"]
    return shlex.join(words)


def next_steps(
    url: str, demo: DemoWorkspace | None, config_file: Path, program: str, *, user: str
) -> str:
    lines = [f"KubeRDE is up: gateway {url}", f"CLI configuration written to {config_file}"]
    if demo is not None and demo.kind == "ssh":
        lines += [
            "",
            "The demo workspace runs OpenSSH. In another terminal:",
            f"  {program} ls -o wide",
            f"  {program} ssh demo",
            f"  {program} config-ssh --write    # then plain `ssh demo.kuberde` works too",
            f"  {program} stop demo             # scale to zero; connecting wakes it again",
            "",
            "Or through a local port, like kubectl port-forward. Keep this running:",
            f"  {program} port-forward demo 2022:22",
            "and, in a third terminal, while it runs:",
            f"  {plain_ssh_command(demo, 2022, user)}",
        ]
    elif demo is not None:
        lines += [
            "",
            "The demo workspace serves HTTP (install openssh-server for an SSH demo):",
            f"  {program} ls -o wide",
            f"  {program} port-forward demo 8888:8080   # then open http://127.0.0.1:8888",
        ]
    lines.append("Press Ctrl-C to stop; workspace state is kept in the state directory.")
    return "\n".join(lines)


async def run_up(
    *,
    files: list[Path],
    state_dir: Path,
    listen: ListenAddress,
    sweep_interval: float = 1.0,
    apps_domain: str = "localhost",
) -> int:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = load_or_create_signing_key(state_dir)
    issuer = TokenIssuer(key)
    sock = bind_socket(listen)
    url = socket_url(sock, tls=False)
    # Users' tokens come from the built-in issuer at our own URL, verified like any OIDC
    # provider's; agents and the management API keep the local key's credentials.
    users = OidcUserVerifier(OidcProvider(url), BUILTIN_USER_CLAIMS)
    local = LocalTokenVerifier.from_signing_key(key)
    verifier = CompositeVerifier(users=[users], agents=[local], management=[local])
    app = create_app(verifier, GatewaySettings())
    oidc = BuiltinIssuer(
        url, key, state_dir, users=UsersFile(state_dir / USERS_FILE), user_verifier=users
    )
    app.router.add_routes(
        [*oidc.routes(), auth_config_route(url, BUILTIN_CLIENT_ID, DEFAULT_SCOPE)]
    )
    gateway = app[GATEWAY_KEY]
    store = StateStore(state_dir / STATE_DB_NAME)
    runtime = LocalRuntime(
        RuntimeSettings(
            state_dir=state_dir,
            gateway_ws_url=url.replace("http", "ws", 1) + "/ws",
            sweep_interval=sweep_interval,
        ),
        store,
        issuer,
        gateway,
    )
    gateway.directory = runtime
    add_workspace_routes(app, runtime)
    add_browser(
        app,
        BrowserSettings(
            issuer=url, client_id=BUILTIN_CLIENT_ID, apps_domain=apps_domain, public_url=url
        ),
        LocalWorkspaces(runtime),
    )

    user = current_user()
    demo = None
    if files:
        if _load_files(runtime, files):
            print("kuberde: some documents were rejected; the others are running", file=sys.stderr)
    else:
        demo = demo_workspace(state_dir, user)
        runtime.apply(parse_agent(demo.document))

    runner = await start_site(app, sock, None)
    token = oidc.mint_access_token(user, ttl=LOCAL_USER_TOKEN_TTL)
    config_file = _write_cli_config(url, token)
    program = cli_program(sys.argv[0], shutil.which("kuberde"))
    steps = next_steps(url, demo, config_file, program, user=getpass.getuser())
    print(steps, file=sys.stderr, flush=True)
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
        await runner.cleanup()
        store.close()
    return 0
