"""`kuberde agent`: keep one multiplexed session to the gateway open, forever.

Each pass of the loop re-reads the credential, dials `SERVER_URL`, serves the streams the
gateway opens until the session ends, then waits a jittered backoff and dials again. The
agent never relies on a pod restart: rejected credentials, an unreachable gateway and a
replaced session are all retried. Only a configuration error (AGENT_ID not matching the
credential, an unusable CA file) ends it, with exit code 2.

Logs describe state changes once ("gateway unreachable ...", then "connected ..."); the
repeats go to debug, so an outage of hours is a few lines, not thousands. The credential is
never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import aiohttp

from kuberde import aio
from kuberde.agent.bridge import serve_stream
from kuberde.agent.config import (
    AgentConfig,
    ConfigError,
    Credential,
    CredentialUnavailable,
    from_env,
    load_credential,
)
from kuberde.auth.client_credentials import ClientCredentialsSource, TokenEndpointError
from kuberde.backoff import Backoff
from kuberde.linkbuffers import bound_kernel_buffers
from kuberde.mux import (
    BULK_FRAME,
    BULK_WINDOW,
    Session,
    SessionConfig,
    Stream,
)
from kuberde.tls import client_ssl_context
from kuberde.wslink import WebSocketLink

__all__ = ["EXIT_CONFIG", "EXIT_OK", "Agent", "CredentialRejected", "main", "run_agent"]

log = logging.getLogger("kuberde.agent")

# Bulk window and frame sizes: the agent carries large transfers (scp, rsync) to users.
_SESSION_CONFIG = SessionConfig(receive_window=BULK_WINDOW, max_frame_payload=BULK_FRAME)

EXIT_OK = 0
EXIT_CONFIG = 2
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
HANDSHAKE_TIMEOUT = 15.0
STREAM_DRAIN_TIMEOUT = 5.0
_MAX_REASON = 300
#: What a user's connection still open when the agent stops is reset with.
STOPPING = "the workspace is stopping"


class CredentialRejected(Exception):
    """The gateway refused the upgrade with 401/403; `reason` comes from its JSON body."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"credential rejected ({status}): {reason}")
        self.status = status
        self.reason = reason


async def _raise_if_rejected(response: aiohttp.ClientResponse) -> None:
    """Session-wide `raise_for_status` hook.

    `ws_connect` drops the response of a failed upgrade without reading it; this hook runs
    before that, so the gateway's reason (`{"error": ..., "reason": ...}`) can be reported.
    """
    if response.status not in (401, 403):
        return
    reason = response.reason or "refused"
    with contextlib.suppress(Exception):
        body = json.loads(await asyncio.wait_for(response.read(), 5.0))
        parts = [body.get(key) for key in ("reason", "error")] if isinstance(body, dict) else []
        text = ": ".join(part for part in parts if isinstance(part, str) and part)
        reason = text[:_MAX_REASON] or reason
    raise CredentialRejected(response.status, reason)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """How one pass of the loop ended: a state name (logged when it changes) and its text."""

    state: str
    level: int
    text: str
    retry_note: str = "will keep retrying; next attempt in"


class _StatusLog:
    """Logs a state once when entered; staying in it only logs at debug level."""

    def __init__(self) -> None:
        self._state: str | None = None

    def enter(self, state: str, level: int, message: str) -> None:
        if state == self._state:
            log.debug("%s", message)
        else:
            self._state = state
            log.log(level, "%s", message)


class Agent:
    """The reconnect loop; one instance per process."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        stop: asyncio.Event,
        backoff: Backoff | None = None,
        ssl_context: ssl.SSLContext | None = None,
        token_source: ClientCredentialsSource | None = None,
    ) -> None:
        self._config = config
        self._stop = stop
        self._backoff = backoff or Backoff()
        self._ssl = ssl_context
        self._token_source = token_source
        self._status = _StatusLog()

    async def run(self) -> int:
        timeout = aiohttp.ClientTimeout(
            total=None, connect=HANDSHAKE_TIMEOUT, sock_read=HANDSHAKE_TIMEOUT
        )
        socket_path = self._config.unix_socket
        connector = aiohttp.UnixConnector(socket_path) if socket_path is not None else None
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, raise_for_status=_raise_if_rejected
        ) as http:
            while not self._stop.is_set():
                try:
                    outcome = await self._attempt(http)
                except ConfigError as exc:
                    log.error("%s", exc)
                    return EXIT_CONFIG
                if outcome is None or self._stop.is_set():
                    break
                delay = self._backoff.next_delay()
                self._status.enter(
                    outcome.state,
                    outcome.level,
                    f"{outcome.text} ({outcome.retry_note} {delay:.1f}s)",
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        log.info("stopped")
        return EXIT_OK

    async def _attempt(self, http: aiohttp.ClientSession) -> _Outcome | None:
        """One dial and, if it succeeds, one session; None when stopped meanwhile."""
        try:
            credential = await self._credential()
        except CredentialUnavailable as exc:
            return _Outcome("no-credential", logging.ERROR, str(exc))
        try:
            ws = await self._dial(http, credential.token)
        except CredentialRejected as exc:
            if self._token_source is not None:
                self._token_source.invalidate()
            reason = exc.reason.replace(credential.token, "<credential>")
            return _Outcome(
                f"rejected-{exc.status}",
                logging.ERROR,
                f"credential rejected ({exc.status}): {reason}",
            )
        except aiohttp.WSServerHandshakeError as exc:
            return _Outcome(
                f"refused-{exc.status}",
                logging.WARNING,
                f"gateway refused the WebSocket upgrade (HTTP {exc.status}: {exc.message})",
            )
        except aiohttp.ClientConnectorCertificateError as exc:
            return _Outcome(
                "untrusted",
                logging.ERROR,
                f"the gateway's TLS certificate is not trusted ({_describe(exc)}); "
                "set KUBERDE_CA_FILE to the CA that signed it",
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return _Outcome(
                "unreachable", logging.WARNING, f"gateway unreachable: {_describe(exc)}"
            )
        if ws is None:
            return None
        name = credential.subject or self._config.agent_id or "agent"
        self._status.enter(
            "connected", logging.INFO, f"connected to {self._config.server_url} as {name}"
        )
        started = time.monotonic()
        reason = await self._serve(ws, name)
        self._backoff.session_ended(time.monotonic() - started)
        return _Outcome(
            "disconnected", logging.WARNING, f"disconnected: {reason}", "reconnecting in"
        )

    async def _credential(self) -> Credential:
        """The configured credential, or a client-credentials token from the provider."""
        if self._token_source is None:
            return load_credential(self._config)
        try:
            token = await self._token_source.token()
        except TokenEndpointError as exc:
            raise CredentialUnavailable(str(exc)) from None
        return Credential(token=token, subject=self._config.agent_id)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse, name: str) -> str:
        """Run one session until it ends or we are stopped; return why it ended."""
        streams: set[asyncio.Task[None]] = set()

        def serve(stream: Stream) -> None:
            task = asyncio.create_task(self._serve_stream(stream), name=f"stream-{stream.id}")
            streams.add(task)
            task.add_done_callback(streams.discard)

        session = Session(
            WebSocketLink(ws), is_client=True, name=name, config=_SESSION_CONFIG, on_stream=serve
        )
        runner = asyncio.create_task(session.run(), name=f"agent-session-{name}")
        helpers = [asyncio.create_task(_close_after_go_away(session))]
        stopper = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not runner.done():
                log.info(
                    "going away: letting %d open stream(s) finish (up to %gs)",
                    session.stream_count,
                    self._config.shutdown_grace,
                )
                await session.shutdown(self._config.shutdown_grace, STOPPING)
                await runner
        finally:
            for task in (*helpers, stopper, runner):
                task.cancel()
            await asyncio.gather(*helpers, stopper, runner, return_exceptions=True)
            await _finish(streams)
        return session.close_reason or "session closed"

    async def _serve_stream(self, stream: Stream) -> None:
        try:
            await serve_stream(stream, self._config)
        except Exception:
            log.exception("stream %d failed", stream.id)
            stream.reset("internal error in the agent")

    async def _dial(
        self, http: aiohttp.ClientSession, token: str
    ) -> aiohttp.ClientWebSocketResponse | None:
        """Open the WebSocket unless a stop request comes first (then None)."""
        dial = asyncio.ensure_future(
            http.ws_connect(
                self._config.dial_url,
                headers={"Authorization": f"Bearer {token}"},
                autoping=True,
                heartbeat=None,
                compress=0,
                max_msg_size=MAX_MESSAGE_SIZE,
                ssl=self._ssl if self._ssl is not None else True,
            )
        )
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({dial, stopper}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            dial.cancel()
            raise
        finally:
            stopper.cancel()
        if dial.done():
            ws = dial.result()
            bound_kernel_buffers(ws)
            return ws
        dial.cancel()
        await asyncio.wait({dial})
        if not dial.cancelled() and dial.exception() is None:
            await dial.result().close()
        return None


async def _close_after_go_away(session: Session) -> None:
    """Close a session the gateway has left once its last stream is done.

    The peer's go-away means no new streams will ever arrive here (e.g. a newer agent with
    our ID replaced us), so we finish what is open and dial again.
    """
    await session.wait_peer_going_away()
    await session.shutdown(grace=None)


async def _finish(streams: set[asyncio.Task[None]]) -> None:
    """Give stream tasks (their streams already reset) a moment to close their sockets."""
    if not streams:
        return
    _, pending = await asyncio.wait(set(streams), timeout=STREAM_DRAIN_TIMEOUT)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Loops without signal support raise NotImplementedError, and only the main thread
        # may install handlers (RuntimeError): an agent embedded elsewhere is stopped by
        # its owner through `stop` instead.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, _on_signal, stop, sig)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.info("received %s", sig.name)
    stop.set()


async def run_agent(
    config: AgentConfig,
    *,
    stop: asyncio.Event | None = None,
    backoff: Backoff | None = None,
) -> int:
    """Run until `stop` is set (by default: until SIGTERM/SIGINT); return the exit code."""
    ssl_context: ssl.SSLContext | None = None
    token_source: ClientCredentialsSource | None = None
    credentials = config.client_credentials
    try:
        if config.uses_tls:
            ssl_context = client_ssl_context(config.ca_file)
        if credentials is not None:
            provider_tls = credentials.token_url.startswith("https://")
            token_source = ClientCredentialsSource(
                credentials,
                ssl_context=client_ssl_context(config.ca_file) if provider_tls else None,
            )
    except (OSError, ssl.SSLError) as exc:
        log.error("KUBERDE_CA_FILE %s cannot be used: %s", config.ca_file, exc)
        return EXIT_CONFIG
    log.info(
        "agent starting: gateway %s, local target %s:%d, allowed ports %s%s",
        config.server_url,
        config.local_host,
        config.local_port,
        ",".join(map(str, sorted(config.allowed_ports))) or "none",
        "".join(f", port {a} -> {b}" for a, b in sorted(config.port_map.items())),
    )
    stop_event = stop if stop is not None else asyncio.Event()
    agent = Agent(
        config,
        stop=stop_event,
        backoff=backoff,
        ssl_context=ssl_context,
        token_source=token_source,
    )
    if stop is not None:
        return await agent.run()
    with _stop_on_signals(stop_event):
        return await agent.run()


def main(environ: Mapping[str, str] | None = None) -> int:
    """Entry point of `kuberde agent` (the CLI configures logging): read the environment, run."""
    try:
        config = from_env(os.environ if environ is None else environ)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    return aio.run(run_agent(config))
