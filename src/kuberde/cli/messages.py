"""What the gateway's `/connect` answers mean: JSON events, HTTP refusals, close codes.

Shared by `kuberde connect` (its own lean WebSocket client) and the aiohttp tunnel of
`kuberde port-forward`, so it imports nothing but the standard library.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from kuberde.messages import not_found

__all__ = [
    "EOF_EVENT",
    "NORMAL_CLOSE",
    "ConnectError",
    "EventHandler",
    "close_message",
    "parse_event",
    "refusal_message",
]

EventHandler = Callable[[Mapping[str, Any]], None]

EOF_EVENT = '{"event":"eof"}'
NORMAL_CLOSE = 1000
_ABNORMAL_CLOSE = 1006


class ConnectError(Exception):
    """A connection that could not be opened; the message is meant for the user.

    `status` is the HTTP status the gateway answered instead of the upgrade, if it did;
    `detail` the gateway's own JSON `error` with it (None when something else answered).
    """

    def __init__(
        self, message: str, *, status: int | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


def refusal_message(status: int, detail: str | None, agent: str) -> str:
    """A human message for an HTTP error the gateway answered instead of the upgrade."""
    if status == 401:
        return f"not authorized: {detail or 'token rejected'} — run `kuberde login`"
    if status == 403:
        return f"forbidden: {detail or f'you may not connect to {agent}'}"
    if status == 404:
        return detail or not_found(agent)
    if status == 400:
        return f"bad request: {detail or 'the gateway refused the port or kind'}"
    if status == 429:
        return detail or "too many connections at once; close some and try again"
    return f"the gateway answered HTTP {status}" + (f": {detail}" if detail else "")


def close_message(code: int | None, reason: str | None, agent: str) -> str | None:
    """What a close code means for the user; None when the connection ended normally."""
    if code == NORMAL_CLOSE:
        return None
    if code == 4500:
        return f"connection reset: {reason}" if reason else "the workspace reset the connection"
    if code == 4409:
        return f"{agent} is unavailable: {reason or 'it cannot run'}"
    if reason:
        return reason
    defaults = {
        4401: "your sign-in is no longer valid — run `kuberde login`",
        4404: f"workspace {agent} went away",
        4408: f"workspace {agent} did not come online in time",
        4429: "over one of the gateway's stream limits",
        4503: "the gateway is shutting down",
    }
    if code in defaults:
        return defaults[code]
    if code is None or code == _ABNORMAL_CLOSE:
        return "lost the connection to the gateway"
    return f"the gateway closed the connection (code {code})"


def parse_event(text: object) -> dict[str, Any] | None:
    """A text message as a JSON object; None for anything else (ignored, never fatal)."""
    if not isinstance(text, str):
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None
