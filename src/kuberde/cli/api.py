"""The CLI's client for the gateway's HTTP API (`/api/...`): one request, one answer.

Errors become `ApiError` with a message for the user; a 401 renews the stored login once.
Plain asyncio streams and h11 (sans-I/O HTTP/1.1), not aiohttp, whose import alone costs
more than the whole start-up a command may take (issue 15). Imported lazily by commands, so
that `kuberde connect` does not pay for it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any, BinaryIO
from urllib.parse import urlencode, urlsplit

import h11

from kuberde import aio
from kuberde.cli.base import fail
from kuberde.cli.config import ClientSettings, normalize_server
from kuberde.cli.login import Credentials, RefreshError, unauthorized_message
from kuberde.messages import os_reason, unreachable
from kuberde.tls import client_ssl_context

__all__ = ["ApiError", "call", "request"]

_TIMEOUT = 30.0
_CONNECT_TIMEOUT = 10.0
_READ_SIZE = 64 * 1024


class ApiError(Exception):
    """The request failed; `status` is the HTTP status if the gateway answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


async def request(
    settings: ClientSettings,
    method: str,
    path: str,
    *,
    body: str | None = None,
    params: dict[str, str] | None = None,
    stream_to: BinaryIO | None = None,
    authenticate: bool = True,
    deadline: float = _TIMEOUT,
) -> Any:
    """One request; the JSON answer (or the body streamed to `stream_to`, with no deadline)."""
    url = normalize_server(settings.server) + path + (f"?{urlencode(params)}" if params else "")
    headers = {"Authorization": f"Bearer {settings.token}"} if authenticate else {}
    try:
        async with asyncio.timeout(None if stream_to is not None else deadline):
            return await _exchange(
                settings,
                method,
                url,
                headers,
                body.encode() if body is not None else None,
                stream_to,
                connect_deadline=min(deadline, _CONNECT_TIMEOUT),
            )
    except ssl.SSLCertVerificationError as exc:
        raise ApiError(
            f"the certificate of {settings.server} is not trusted ({exc}); "
            "pass --ca-file or set KUBERDE_CA_FILE"
        ) from None
    except TimeoutError:
        raise ApiError(f"the gateway at {settings.server} did not answer in time") from None
    except (OSError, h11.ProtocolError) as exc:
        raise ApiError(unreachable(settings.server, os_reason(exc))) from None


async def _exchange(
    settings: ClientSettings,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    stream_to: BinaryIO | None,
    *,
    connect_deadline: float,
) -> Any:
    """The request on a connection of its own (`Connection: close`), and its answer."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    async with asyncio.timeout(connect_deadline):
        reader, writer = await asyncio.open_connection(
            host,
            parts.port or (443 if secure else 80),
            ssl=client_ssl_context(settings.ca_file) if secure else None,
        )
    try:
        connection = h11.Connection(h11.CLIENT)
        fields = {
            "Host": parts.netloc.rpartition("@")[2],
            "Accept": "application/json",
            "Connection": "close",
            **headers,
        }
        if body is not None:
            fields |= {
                "Content-Type": "text/plain; charset=utf-8",
                "Content-Length": str(len(body)),
            }
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        out = connection.send(
            h11.Request(method=method, target=target, headers=list(fields.items()))
        )
        if body is not None:
            out += connection.send(h11.Data(data=body))
        writer.write(out + connection.send(h11.EndOfMessage()))
        await writer.drain()
        reply = await _next_event(connection, reader)
        while isinstance(reply, h11.InformationalResponse):
            reply = await _next_event(connection, reader)
        assert isinstance(reply, h11.Response)
        content = bytearray()
        streaming = stream_to is not None and reply.status_code == 200
        while not isinstance(event := await _next_event(connection, reader), h11.EndOfMessage):
            if not isinstance(event, h11.Data):
                continue
            if streaming:
                assert stream_to is not None
                stream_to.write(event.data)
                stream_to.flush()
            else:
                content += event.data
    finally:
        writer.close()
    return None if streaming else _answer(reply, bytes(content))


async def _next_event(connection: h11.Connection, reader: asyncio.StreamReader) -> Any:
    """The next h11 event, reading from the socket as it needs; ConnectionError when the
    gateway closed before the answer was complete."""
    while (event := connection.next_event()) is h11.NEED_DATA:
        data = await reader.read(_READ_SIZE)
        if not data and connection.their_state is not h11.SEND_BODY:
            raise ConnectionResetError("the gateway closed the connection")
        connection.receive_data(data)
    if isinstance(event, h11.ConnectionClosed):
        raise ConnectionResetError("the gateway closed the connection")
    return event


def _answer(reply: h11.Response, content: bytes) -> Any:
    """The gateway's JSON object, or ApiError with its `error` for a refusal (a 422 that
    carries `applied` is a partial success, answered as it is)."""
    try:
        payload = json.loads(content) if content.strip() else {}
    except ValueError:
        payload = {"error": content.decode(errors="replace")[:200]}
    if not isinstance(payload, dict):
        payload = {"error": str(payload)[:200]}
    status = reply.status_code
    if status >= 300 and not (status == 422 and "applied" in payload):
        reason = reply.reason.decode(errors="replace")
        message = str(payload.get("error") or reason or status)
        if status == 401:
            message += "; run `kuberde up` (or `kuberde login`) for a fresh token"
        raise ApiError(message, status)
    return payload


async def _authorized(settings: ClientSettings, method: str, path: str, **kwargs: Any) -> Any:
    """`request` with the stored login renewed before expiry, and once more after a 401."""
    credentials = Credentials(settings)
    current = await credentials.fresh()
    try:
        return await request(current, method, path, **kwargs)
    except ApiError as exc:
        if exc.status != 401:
            raise
        try:
            renewed = await credentials.renew(current)
        except RefreshError as failure:
            raise ApiError(unauthorized_message(failure), 401) from None
        if renewed is None:
            raise
    return await request(renewed, method, path, **kwargs)


def call(settings: ClientSettings, method: str, path: str, **kwargs: Any) -> Any:
    """`_authorized`, run to completion; exits 1 with the message on failure."""
    try:
        return aio.run(_authorized(settings, method, path, **kwargs))
    except ApiError as exc:
        fail(str(exc))
