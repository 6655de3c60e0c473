"""The CLI's client for the gateway's HTTP API (`/api/...`): one request, one answer.

Errors become `ApiError` with a message for the user; a 401 renews the stored login once.
Imported lazily by commands, so that `kuberde connect` does not pay for it.
"""

from __future__ import annotations

import json
import ssl as ssl_module
from typing import Any

import aiohttp

from kuberde import aio
from kuberde.cli.base import fail
from kuberde.cli.config import ClientSettings, normalize_server
from kuberde.cli.login import Credentials, RefreshError, unauthorized_message
from kuberde.messages import os_reason, unreachable
from kuberde.tls import client_ssl_context

__all__ = ["ApiError", "call", "request"]

_TIMEOUT = 30.0
_CONNECT_TIMEOUT = 10.0


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
    stream_to: Any = None,
    authenticate: bool = True,
    deadline: float = _TIMEOUT,
) -> Any:
    """One request; the JSON answer (or the body streamed to `stream_to`, with no deadline)."""
    url = normalize_server(settings.server) + path
    ssl: ssl_module.SSLContext | bool = (
        client_ssl_context(settings.ca_file) if url.startswith("https") else True
    )
    headers = {"Authorization": f"Bearer {settings.token}"} if authenticate else {}
    limits = aiohttp.ClientTimeout(
        total=None if stream_to is not None else deadline,
        connect=min(deadline, _CONNECT_TIMEOUT),
    )
    try:
        async with (
            aiohttp.ClientSession(timeout=limits) as http,
            http.request(method, url, data=body, params=params, headers=headers, ssl=ssl) as reply,
        ):
            if stream_to is not None and reply.status == 200:
                async for chunk in reply.content.iter_any():
                    stream_to.write(chunk)
                    stream_to.flush()
                return None
            try:
                payload = await reply.json(content_type=None)
            except (json.JSONDecodeError, aiohttp.ContentTypeError):
                payload = {"error": (await reply.text())[:200]}
            if not isinstance(payload, dict):
                payload = {"error": str(payload)[:200]}
            if reply.status >= 400 and not (reply.status == 422 and "applied" in payload):
                message = str(payload.get("error") or reply.reason or reply.status)
                if reply.status == 401:
                    message += "; run `kuberde up` (or `kuberde login`) for a fresh token"
                raise ApiError(message, reply.status)
            return payload
    except aiohttp.ClientConnectorCertificateError as exc:
        raise ApiError(
            f"the certificate of {settings.server} is not trusted ({exc.certificate_error}); "
            "pass --ca-file or set KUBERDE_CA_FILE"
        ) from None
    except aiohttp.ClientConnectorError as exc:
        raise ApiError(unreachable(settings.server, os_reason(exc.os_error))) from None
    except aiohttp.ClientConnectionError as exc:
        raise ApiError(unreachable(settings.server, os_reason(exc))) from None
    except TimeoutError:
        raise ApiError(f"the gateway at {settings.server} did not answer in time") from None


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
