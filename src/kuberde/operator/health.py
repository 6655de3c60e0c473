"""`/healthz`, `/readyz` and `/metrics` on the operator's port (8080 by default).

Ready means: the Kubernetes API answers and either this replica's watches run, or it is a
standby waiting for the Lease. A standby must be ready, or a rolling update would wait for it
forever while the old replica keeps the Lease.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from kuberde.operator.metrics import OperatorMetrics
from kuberde.operator.settings import split_listen

__all__ = ["HealthServer", "Readiness"]


@dataclass(frozen=True)
class Readiness:
    ready: bool
    detail: str


class HealthServer:
    def __init__(
        self,
        *,
        listen: str,
        metrics: OperatorMetrics,
        readiness: Callable[[], Awaitable[Readiness]],
    ) -> None:
        self._host, self._port = split_listen(listen)
        self._metrics = metrics
        self._readiness = readiness
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        state = await self._readiness()
        body = {"status": "ready" if state.ready else "not ready", "detail": state.detail}
        return web.Response(
            text=json.dumps(body),
            status=200 if state.ready else 503,
            content_type="application/json",
        )

    async def _metrics_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), content_type="text/plain")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_endpoint)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        self._runner = runner
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in str(host) else host
        self.url = f"http://{shown}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
