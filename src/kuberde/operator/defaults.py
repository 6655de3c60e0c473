"""Defaults the operator's command line shows in its help, apart from the builder so that
`kuberde --help` need not load pydantic and the Kubernetes models to print them."""

from __future__ import annotations

__all__ = ["DEFAULT_AGENT_IMAGE", "DEFAULT_GATEWAY_URL"]

DEFAULT_GATEWAY_URL = "http://frp-server.kuberde.svc:8080"
DEFAULT_AGENT_IMAGE = "kuberde/kuberde:0.1.0"
