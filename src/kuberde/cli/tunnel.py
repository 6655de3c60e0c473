"""The user's end of a `/connect` WebSocket: upgrade, wait for the stream, explain failures.

Binary messages are the stream's bytes; text messages are JSON events (docs/protocol.md).
Errors before the upgrade are HTTP statuses, after it close codes; both become messages
meant for the user.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import aiohttp
from aiohttp import ClientWebSocketResponse, WSMessage, WSMsgType

from kuberde.cli.config import ClientSettings, connect_url
from kuberde.cli.login import Credentials, RefreshError, unauthorized_message
from kuberde.cli.messages import (
    ConnectError,
    EventHandler,
    close_message,
    parse_event,
    refusal_message,
)
from kuberde.messages import os_reason, unreachable
from kuberde.tls import client_ssl_context

__all__ = [
    "CLOSE_TYPES",
    "Tunnel",
    "gateway_session",
    "open_authorized",
    "open_connection",
    "upgrade",
]

_MAX_MESSAGE = 16 * 1024 * 1024
_HANDSHAKE_TIMEOUT = 30.0
#: The gateway sends `waking` about once a second; this much silence before the stream is
#: open means it is stuck. Once it is open there is no heartbeat: aiohttp's would kill a
#: connection whose local reader merely stopped reading (backpressure stops our reads too).
_SILENCE_TIMEOUT = 30.0
_CLOSE_TIMEOUT = 5.0
_MAX_ERROR_BODY = 64 * 1024
CLOSE_TYPES = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR})


class _Refused(Exception):
    def __init__(self, status: int, detail: str | None) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail


@dataclass
class Tunnel:
    """An open `/connect` WebSocket whose stream reached the workspace.

    `first` is a message that arrived in place of `connected` (data or `eof`); the bridge
    handles it before reading more.
    """

    ws: ClientWebSocketResponse
    agent: str
    first: WSMessage | None = None


async def _check_upgrade(response: aiohttp.ClientResponse) -> None:
    """Turn an HTTP error answered instead of the upgrade into `_Refused`, keeping the
    gateway's JSON `error` (aiohttp would otherwise drop the body)."""
    if response.status < 400:
        return
    detail: str | None = None
    body = b""
    try:
        while len(body) < _MAX_ERROR_BODY:
            chunk = await response.content.read(_MAX_ERROR_BODY - len(body))
            if not chunk:
                break
            body += chunk
        data = json.loads(body)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        detail = data["error"]
    raise _Refused(response.status, detail)


def gateway_session(settings: ClientSettings) -> aiohttp.ClientSession:
    """An HTTP session for the gateway; share it between connections to the same gateway."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=_HANDSHAKE_TIMEOUT)
    secure = settings.server.startswith(("https:", "wss:"))
    connector = aiohttp.TCPConnector(ssl=client_ssl_context(settings.ca_file) if secure else True)
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, raise_for_status=_check_upgrade
    )


async def upgrade(
    session: aiohttp.ClientSession, settings: ClientSettings, url: str, agent: str
) -> ClientWebSocketResponse:
    """The WebSocket upgrade to `url` with the user's token; failures as ConnectError with
    a user-facing message (`status` set when the gateway answered HTTP instead)."""
    try:
        async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
            return await session.ws_connect(
                url,
                headers={"Authorization": f"Bearer {settings.token}"},
                compress=0,
                max_msg_size=_MAX_MESSAGE,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=_CLOSE_TIMEOUT),
            )
    except _Refused as exc:
        raise ConnectError(
            refusal_message(exc.status, exc.detail, agent), status=exc.status, detail=exc.detail
        ) from None
    except aiohttp.ClientConnectorCertificateError as exc:
        raise ConnectError(
            f"the certificate of {settings.server} is not trusted ({exc.certificate_error}); "
            "pass --ca-file or set KUBERDE_CA_FILE"
        ) from None
    except aiohttp.ClientConnectorError as exc:
        raise ConnectError(unreachable(settings.server, os_reason(exc.os_error))) from None
    except aiohttp.WSServerHandshakeError as exc:
        raise ConnectError(
            f"{settings.server} did not accept the WebSocket upgrade (HTTP {exc.status})"
        ) from None
    except aiohttp.ClientError as exc:
        raise ConnectError(f"cannot connect to {settings.server}: {exc}") from None
    except TimeoutError:
        raise ConnectError(
            f"the gateway at {settings.server} did not answer within {_HANDSHAKE_TIMEOUT:g}s"
        ) from None


async def open_connection(
    settings: ClientSettings,
    agent: str,
    port: int | None,
    kind: str,
    *,
    on_event: EventHandler | None,
    session: aiohttp.ClientSession,
) -> Tunnel:
    """Upgrade to the gateway's `/connect` WebSocket and wait until the stream is open.

    `waking` progress goes to `on_event`. Raises ConnectError with a user-facing message.
    """
    ws = await upgrade(session, settings, connect_url(settings.server, agent, port, kind), agent)
    try:
        first = await _await_stream(ws, agent, on_event)
    except BaseException:
        await ws.close()
        raise
    return Tunnel(ws=ws, agent=agent, first=first)


async def open_authorized(
    credentials: Credentials,
    agent: str,
    port: int | None,
    kind: str,
    *,
    on_event: EventHandler | None,
    session: aiohttp.ClientSession,
) -> Tunnel:
    """`open_connection` with the stored login's token, renewed before it expires; after a
    401 the login is renewed once and the connection tried again."""
    settings = await credentials.fresh()
    try:
        return await open_connection(
            settings, agent, port, kind, on_event=on_event, session=session
        )
    except ConnectError as exc:
        if exc.status != 401:
            raise
        try:
            renewed = await credentials.renew(settings)
        except RefreshError as failure:
            raise ConnectError(unauthorized_message(failure), status=401) from None
        if renewed is None:
            raise
    return await open_connection(renewed, agent, port, kind, on_event=on_event, session=session)


async def _await_stream(
    ws: ClientWebSocketResponse, agent: str, on_event: EventHandler | None
) -> WSMessage | None:
    error: str | None = None
    while True:
        try:
            message = await ws.receive(timeout=_SILENCE_TIMEOUT)
        except TimeoutError:
            raise ConnectError(
                f"the gateway sent nothing for {_SILENCE_TIMEOUT:g}s while opening {agent}"
            ) from None
        if message.type is WSMsgType.BINARY:
            return message
        if message.type is WSMsgType.TEXT:
            event = parse_event(message.data)
            if event is None:
                continue
            name = event.get("event")
            if name == "error":
                error = str(event.get("message", "")) or None
                continue
            if name == "eof":
                return message
            if on_event is not None:
                on_event(event)
            if name == "connected":
                return None
            continue
        if message.type in CLOSE_TYPES:
            reason = error or (message.extra if message.type is WSMsgType.CLOSE else None)
            code = ws.close_code
            raise ConnectError(
                close_message(code, reason, agent)
                or f"the gateway closed the connection to {agent} before it opened"
            )
