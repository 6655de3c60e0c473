"""Prometheus metrics of one gateway (own registry, so tests can run several gateways)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["GatewayMetrics"]

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
        self.wakes = Counter(
            "kuberde_wake_requests", "Wake requests sent for offline agents", registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
