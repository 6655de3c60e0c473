"""Reading a local `kuberde up` for `kuberde.diagnosis.diagnose_local`.

Two GETs against the gateway the CLI is configured for: `/healthz` (is it there?) and
`/api/runtime` (the lifecycle loop's sweeps and timings, agent credentials it refused, the
user's workspaces). A gateway without `/api/runtime` is not a local `kuberde up`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlsplit

from kuberde.cli.api import ApiError, request
from kuberde.cli.config import ClientSettings
from kuberde.diagnosis import LocalObservation
from kuberde.hosts import is_loopback_host

__all__ = ["NotLocal", "is_loopback", "observe_local"]

_DEADLINE = 10.0


class NotLocal(Exception):
    """The gateway answered, but it is not a local `kuberde up` (no `/api/runtime`)."""


def is_loopback(server: str) -> bool:
    """Whether `server` is on this machine, where a `kuberde up` that is not running is
    still the one meant."""
    return is_loopback_host(urlsplit(server).hostname or "")


async def observe_local(settings: ClientSettings) -> LocalObservation:
    """What the local checks need; raises NotLocal for a gateway that is something else."""
    try:
        health = await request(settings, "GET", "/healthz", authenticate=False, deadline=_DEADLINE)
    except ApiError as exc:
        return LocalObservation(now=datetime.now(UTC), gateway=(False, str(exc)))
    reached = (True, f"GET {settings.server}/healthz: {health.get('status', 'ok')}")
    try:
        runtime = await request(settings, "GET", "/api/runtime", deadline=_DEADLINE)
    except ApiError as exc:
        if exc.status == 404:
            raise NotLocal(settings.server) from None
        return LocalObservation(now=datetime.now(UTC), gateway=(False, str(exc)))
    return LocalObservation(now=datetime.now(UTC), gateway=reached, runtime=runtime)
