"""Operator-wide settings, with the production defaults the runbook documents.

Every interval is a setting so tests can run the same loops in a fraction of a second.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

from kuberde.operator.defaults import DEFAULT_AGENT_IMAGE, DEFAULT_GATEWAY_URL

__all__ = [
    "DEFAULT_HEALTH_LISTEN",
    "DEFAULT_LEASE_NAME",
    "DEFAULT_NAMESPACE",
    "OperatorSettings",
    "SettingsError",
    "default_identity",
    "split_listen",
]

DEFAULT_NAMESPACE = "kuberde"
DEFAULT_HEALTH_LISTEN = "0.0.0.0:8080"
DEFAULT_LEASE_NAME = "kuberde-operator"


class SettingsError(ValueError):
    """A setting the operator cannot start with; the message names it."""


def default_identity() -> str:
    """Pod name (or host name) plus a random suffix, so a restarted pod is a new holder."""
    host = os.environ.get("POD_NAME") or socket.gethostname() or "kuberde-operator"
    return f"{host}_{uuid.uuid4().hex[:8]}"


def split_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:8080` for IPv6); port 0 picks a free port."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise SettingsError(f"listen address {value!r} must look like HOST:PORT, e.g. 0.0.0.0:8080")
    return host.strip("[]") or "0.0.0.0", int(port)


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise SettingsError(f"{name} must be positive, got {value}")


@dataclass(frozen=True)
class OperatorSettings:
    """Where the operator works, what it talks to, and how often its loops run (seconds)."""

    namespace: str = DEFAULT_NAMESPACE
    #: The gateway's management API (`GET /mgmt/agents`), also the base of the agents' URL.
    server_api: str = DEFAULT_GATEWAY_URL
    #: The gateway URL written into agent Deployments when agents reach it by another address.
    agent_server_url: str | None = None
    agent_image: str = DEFAULT_AGENT_IMAGE
    kubeconfig: Path | None = None
    #: The signing key shared with the gateway (PEM); `state_dir` is the embedded alternative.
    signing_key_file: Path | None = None
    state_dir: Path | None = None
    mgmt_token: str | None = None
    mgmt_token_file: Path | None = None
    monitor_interval: float = 15.0
    monitor_timeout: float = 5.0
    #: The gateway's watch sends a heartbeat this often while nothing changes; a watch silent
    #: for this plus `monitor_timeout` is reopened.
    watch_heartbeat: float = 5.0
    #: Activity data older than this never justifies a scale-down (default: 3 monitor cycles).
    activity_max_age: float | None = None
    #: The logged sweep (the runbook: about every 60 s); each deadline is also checked on time.
    ttl_interval: float = 60.0
    status_interval: float = 10.0
    #: Every agent is reconciled again this often, whatever the watch streams deliver.
    resync_interval: float = 600.0
    #: A watch stream silent this long is reopened (Kubernetes sends bookmarks every minute).
    watch_inactivity_timeout: float = 70.0
    api_timeout: float = 30.0
    workers: int = 4
    health_listen: str = DEFAULT_HEALTH_LISTEN
    leader_election: bool = True
    lease_name: str = DEFAULT_LEASE_NAME
    #: A standby takes over about this long after the leader stops renewing (runbook: ~5 s).
    lease_duration: int = 5
    lease_renew_deadline: float = 3.5
    lease_retry_period: float = 1.0
    identity: str = ""

    def __post_init__(self) -> None:
        for name in (
            "monitor_interval",
            "monitor_timeout",
            "watch_heartbeat",
            "ttl_interval",
            "status_interval",
            "resync_interval",
            "watch_inactivity_timeout",
            "api_timeout",
            "lease_renew_deadline",
            "lease_retry_period",
        ):
            _positive(name, getattr(self, name))
        if self.activity_max_age is not None:
            _positive("activity_max_age", self.activity_max_age)
        if self.workers < 1:
            raise SettingsError(f"workers must be at least 1, got {self.workers}")
        if self.lease_duration < 1:
            raise SettingsError(f"lease_duration must be at least 1 s, got {self.lease_duration}")
        if not self.lease_retry_period < self.lease_renew_deadline < self.lease_duration:
            raise SettingsError(
                "lease timings must satisfy retry period < renew deadline < lease duration"
            )
        if not self.server_api.startswith(("http://", "https://")):
            raise SettingsError(f"server API {self.server_api!r} must be an http(s):// URL")
        split_listen(self.health_listen)
        if not self.identity:
            object.__setattr__(self, "identity", default_identity())

    @property
    def max_activity_age(self) -> float:
        if self.activity_max_age is not None:
            return self.activity_max_age
        return 3 * self.monitor_interval

    @property
    def gateway_url_for_agents(self) -> str:
        return self.agent_server_url or self.server_api
