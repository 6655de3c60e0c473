"""Prometheus metrics of one operator (own registry, so tests can run several operators)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["OperatorMetrics"]

_LOOP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "kuberde_operator_reconciles",
            "Reconciles of one RDEAgent, by result",
            ["result"],
            registry=self.registry,
        )
        self.errors = Counter(
            "kuberde_operator_errors",
            "Failures by component (reconcile, monitor, ttl, status, lease)",
            ["component"],
            registry=self.registry,
        )
        self.loop_seconds = Histogram(
            "kuberde_operator_loop_duration_seconds",
            "Duration of one cycle of a periodic loop",
            ["loop"],
            buckets=_LOOP_BUCKETS,
            registry=self.registry,
        )
        self.scale_downs = Counter(
            "kuberde_operator_scale_downs", "Agents scaled to zero by TTL", registry=self.registry
        )
        self.wakes = Counter(
            "kuberde_operator_wakes", "Agents scaled up on a wake request", registry=self.registry
        )
        self.api_writes = Counter(
            "kuberde_operator_api_writes",
            "Write requests sent to the Kubernetes API, by resource and verb",
            ["resource", "verb"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "kuberde_operator_leader",
            "1 while this replica holds the lease and acts; 0 while it stands by",
            registry=self.registry,
        )
        self.agents = Gauge(
            "kuberde_operator_agents", "RDEAgents by phase", ["phase"], registry=self.registry
        )
        self.gateway_up = Gauge(
            "kuberde_operator_gateway_up",
            "1 if the last GET /mgmt/agents succeeded",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
