"""The workspace agent: dial the gateway, authenticate, reconnect, serve streams locally."""

from kuberde.agent.bridge import TcpBridge, serve_stream
from kuberde.agent.client import Agent, CredentialRejected, main, run_agent
from kuberde.agent.config import (
    AgentConfig,
    ConfigError,
    Credential,
    CredentialUnavailable,
    check_credential,
    from_env,
    load_credential,
)
from kuberde.backoff import Backoff

__all__ = [
    "Agent",
    "AgentConfig",
    "Backoff",
    "ConfigError",
    "Credential",
    "CredentialRejected",
    "CredentialUnavailable",
    "TcpBridge",
    "check_credential",
    "from_env",
    "load_credential",
    "main",
    "run_agent",
    "serve_stream",
]
