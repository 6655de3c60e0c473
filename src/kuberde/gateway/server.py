"""`kuberde server`: the gateway process (state directory, signing key, TLS, listener)."""

from __future__ import annotations

import logging
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from kuberde.aio import wait_for_signal
from kuberde.auth import LocalTokenVerifier, TokenVerifier, load_or_create_signing_key
from kuberde.gateway.app import GatewaySettings, create_app
from kuberde.gateway.directory import AgentDirectory
from kuberde.tls import server_ssl_context

__all__ = ["ListenAddress", "parse_listen", "run_gateway", "start_site"]

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


async def start_site(
    app: web.Application, listen: ListenAddress, ssl_context: ssl.SSLContext | None
) -> tuple[web.AppRunner, str]:
    """Start serving `app`; return the runner and the URL it is reachable at."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, listen.host, listen.port, ssl_context=ssl_context)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    port = sockets[0].getsockname()[1] if sockets else listen.port
    scheme = "https" if ssl_context else "http"
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    return runner, f"{scheme}://{host}:{port}"


async def run_gateway(
    *,
    listen: ListenAddress,
    state_dir: Path,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    settings: GatewaySettings | None = None,
    directory: AgentDirectory | None = None,
    verifier: TokenVerifier | None = None,
) -> None:
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("--tls-cert and --tls-key must be given together")
    key = load_or_create_signing_key(state_dir)
    app = create_app(verifier or LocalTokenVerifier.from_signing_key(key), settings, directory)
    ssl_context = server_ssl_context(tls_cert, tls_key) if tls_cert and tls_key else None
    runner, url = await start_site(app, listen, ssl_context)
    print(f"KubeRDE gateway listening on {url}", file=sys.stderr, flush=True)
    try:
        received = await wait_for_signal()
        log.info("received %s; shutting down", received.name)
    finally:
        await runner.cleanup()
