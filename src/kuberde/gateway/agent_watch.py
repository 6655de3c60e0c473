"""`GET /mgmt/agents?watch=1`: the gateway pushes agent changes to the operator.

Newline-delimited JSON, one event a line:

- `{"type": "list", "agents": [...], "generated_at": ...}`: every agent, as `GET /mgmt/agents`
  answers; first, and again if the watcher fell so far behind that its changes were dropped;
- `{"type": "agent", "agent": {...}}`: one agent's entry, when it connects or disconnects, or
  becomes held (its first session) or released (its last one ended);
- `{"type": "gone", "id": ...}`: an agent the gateway no longer knows;
- `{"type": "heartbeat", "generated_at": ...}` after `heartbeat` seconds (query parameter,
  0.1 to 60, default 5) without a change: the watcher's view is still complete, and a silent
  link is a dead one.

What a watch holds is bounded: one pending entry per agent, coalesced (`changes`), and the
response's write buffer, which the handler drains before it reads the next batch.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from kuberde.activity import encode_report, encode_status
from kuberde.clock import utc_now
from kuberde.gateway.changes import Batch

if TYPE_CHECKING:
    from kuberde.gateway.app import Gateway

__all__ = ["heartbeat_of", "serve_watch"]

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT = 5.0
_HEARTBEAT_RANGE = (0.1, 60.0)


def heartbeat_of(value: str | None) -> float:
    """The `heartbeat` query parameter in seconds; ValueError says what is allowed."""
    if value is None:
        return DEFAULT_HEARTBEAT
    low, high = _HEARTBEAT_RANGE
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not low <= seconds <= high:
        raise ValueError(f"heartbeat must be a number of seconds from {low:g} to {high:g}")
    return seconds


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


def _events(gateway: Gateway, batch: Batch) -> list[dict[str, Any]]:
    if batch.resync:
        return [{"type": "list", **encode_report(gateway.report())}]
    if not batch.agent_ids:
        return [{"type": "heartbeat", "generated_at": utc_now().isoformat()}]
    events: list[dict[str, Any]] = []
    for agent_id in batch.agent_ids:
        status = gateway.agent_status(agent_id)
        if status is None:
            events.append({"type": "gone", "id": agent_id})
        else:
            events.append({"type": "agent", "agent": encode_status(status)})
    return events


async def serve_watch(gateway: Gateway, request: web.Request) -> web.StreamResponse:
    """Stream the events above until the watcher goes away or the gateway shuts down."""
    from kuberde.gateway.app import json_error  # app.py registers this handler

    try:
        heartbeat = heartbeat_of(request.query.get("heartbeat"))
    except ValueError as exc:
        raise json_error(web.HTTPBadRequest, str(exc), "bad_heartbeat") from None
    settings = gateway.settings
    if gateway.presence.watchers >= settings.max_watches:
        error = json_error(
            web.HTTPTooManyRequests, f"at most {settings.max_watches} watches", "limited"
        )
        error.headers["Retry-After"] = str(max(1, round(heartbeat)))
        raise error
    response = web.StreamResponse(
        headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"}
    )
    # Subscribed before the list is built: a change in between is sent again, never lost.
    with gateway.presence.watching(settings.watch_backlog) as changes:
        await response.prepare(request)
        log.info("management watch opened from %s", request.remote)
        gateway.metrics.watches.inc()
        batch: Batch | None = Batch((), resync=True)
        try:
            while batch is not None:
                await response.write(b"".join(_line(event) for event in _events(gateway, batch)))
                batch = await changes.next(heartbeat)
        except ConnectionError:
            log.info("management watch from %s went away", request.remote)
            return response
        finally:
            gateway.metrics.watches.dec()
    log.info("management watch from %s ended: the gateway is shutting down", request.remote)
    return response
