"""Prometheus metrics of one gateway (own registry, so tests can run several gateways)."""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["GatewayMetrics"]

#: Refused agent credentials remembered for `kuberde doctor` (time and reason each).
_REFUSALS_KEPT = 256

_OPEN_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30, 120)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.agents_online = Gauge(
            "kuberde_agents_online", "Agents with a live session", registry=self.registry
        )
        self.open_streams = Gauge(
            "kuberde_open_streams", "User streams currently open", registry=self.registry
        )
        self.bytes = Counter(
            "kuberde_stream_bytes",
            "Bytes relayed between users and agents",
            ["direction"],
            registry=self.registry,
        )
        self.bytes_to_agent = self.bytes.labels(direction="to_agent")
        self.bytes_from_agent = self.bytes.labels(direction="from_agent")
        self.stream_open_seconds = Histogram(
            "kuberde_stream_open_seconds",
            "From a user's /connect request to its stream being open (includes waking)",
            buckets=_OPEN_BUCKETS,
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "kuberde_auth_failures",
            "Refused credentials by endpoint and reason",
            ["endpoint", "reason"],
            registry=self.registry,
        )
        self.watches = Gauge(
            "kuberde_mgmt_watches",
            "Open GET /mgmt/agents?watch=1 streams (the operator holds one)",
            registry=self.registry,
        )
        self.loop_lag = Gauge(
            "kuberde_event_loop_lag_seconds",
            "How late the gateway's event loop last ran a timer (sampled twice a second): "
            "the wait of every callback on a saturated loop",
            registry=self.registry,
        )
        self.wakes = Counter(
            "kuberde_wake_requests", "Wake requests sent for offline agents", registry=self.registry
        )

        self._agent_refusals: deque[tuple[float, str]] = deque(maxlen=_REFUSALS_KEPT)

    def refused(self, endpoint: str, reason: str) -> None:
        """Count a refused credential; an agent's is also remembered with its time."""
        self.auth_failures.labels(endpoint=endpoint, reason=reason).inc()
        if endpoint == "agent":
            self._agent_refusals.append((time.monotonic(), reason))

    def recent_agent_refusals(self, window: float) -> list[str]:
        """The reasons of the agent credentials refused in the last `window` seconds."""
        since = time.monotonic() - window
        return [reason for at, reason in self._agent_refusals if at >= since]

    def render(self) -> bytes:
        return generate_latest(self.registry)
