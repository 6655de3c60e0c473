"""`kuberde server`: the gateway process (state directory, signing key, TLS, listener)."""

from __future__ import annotations

import logging
import socket
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

__all__ = [
    "ListenAddress",
    "bind_socket",
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


async def start_site(
    app: web.Application, sock: socket.socket, ssl_context: ssl.SSLContext | None
) -> web.AppRunner:
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=ssl_context).start()
    return runner


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
    sock = bind_socket(listen)
    runner = await start_site(app, sock, ssl_context)
    url = socket_url(sock, tls=ssl_context is not None)
    print(f"KubeRDE gateway listening on {url}", file=sys.stderr, flush=True)
    try:
        received = await wait_for_signal()
        log.info("received %s; shutting down", received.name)
    finally:
        await runner.cleanup()
