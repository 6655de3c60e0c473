"""The agent's settings, read from the environment the way workspace pods set them.

`PORT_MAP` (`22=41234,8888=41235`) is for the local runtime, where workspaces share one
loopback interface: decisions use the workspace's ports, the dial goes to the mapped one, as
a pod's container ports would.

`from_env` is pure so every variable and every error can be tested from a dict. The
credential is the one value read from disk, before every dial: the Kubernetes Secret behind
`AGENT_TOKEN_FILE` rotates while the pod runs. The local runtime passes it as an inherited
descriptor instead (`AGENT_TOKEN_FD`), read from its start each time, so no path leads to it
that a workload of the same account could open.

`SERVER_URL=ws+unix:/path/to/socket` dials the gateway's WebSocket endpoint over a Unix
socket instead of TCP: under a root `kuberde up` each owner's agent runs in that owner's own
network namespace, where the gateway's TCP port does not exist, but a socket file does.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import jwt

from kuberde.auth.client_credentials import ClientCredentials
from kuberde.naming import InvalidName, validate_agent_id
from kuberde.tls import CA_FILE_ENV

__all__ = [
    "DEFAULT_CONNECT_PATIENCE",
    "DEFAULT_LOCAL_TARGET",
    "DEFAULT_SHUTDOWN_GRACE",
    "AgentConfig",
    "ConfigError",
    "Credential",
    "CredentialUnavailable",
    "check_credential",
    "from_env",
    "load_credential",
]

DEFAULT_LOCAL_TARGET = "127.0.0.1:22"
DEFAULT_SHUTDOWN_GRACE = 10.0
#: How long a refused local dial is retried: right after a wake the workload may still start.
DEFAULT_CONNECT_PATIENCE = 30.0
DEFAULT_WS_PATH = "/ws"
UNIX_SCHEME = "ws+unix"
#: What a Unix-socket dial asks for: any host would do, the socket decides where it goes.
_UNIX_DIAL_URL = "ws://kuberde-gateway" + DEFAULT_WS_PATH
LOOPBACK = "127.0.0.1"
_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}
_PORT_SEPARATORS = re.compile(r"[\s,]+")


class ConfigError(ValueError):
    """A setting the agent cannot run with; it exits with code 2 rather than retrying."""


class CredentialUnavailable(OSError):
    """The credential file cannot be read right now; the agent retries (the Secret may heal)."""


@dataclass(frozen=True, slots=True)
class Credential:
    token: str = field(repr=False)
    #: The unverified `sub` claim, used to name the session in logs; None if not a JWT.
    subject: str | None


@dataclass(frozen=True, slots=True)
class AgentConfig:
    server_url: str
    local_host: str
    local_port: int
    allowed_ports: frozenset[int] = frozenset()
    port_map: Mapping[int, int] = field(default_factory=dict)
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    token_fd: int | None = None
    agent_id: str | None = None
    ca_file: str | None = None
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    connect_patience: float = DEFAULT_CONNECT_PATIENCE
    client_credentials: ClientCredentials | None = None

    @property
    def uses_tls(self) -> bool:
        return self.server_url.startswith("wss://")

    @property
    def unix_socket(self) -> str | None:
        """The gateway's Unix socket for a `ws+unix:` SERVER_URL, else None (TCP)."""
        if self.server_url.startswith(UNIX_SCHEME + ":"):
            return self.server_url.removeprefix(UNIX_SCHEME + ":")
        return None

    @property
    def dial_url(self) -> str:
        """The URL the WebSocket request goes to (over `unix_socket` when there is one)."""
        return _UNIX_DIAL_URL if self.unix_socket is not None else self.server_url

    def target_for(self, port: int | None) -> tuple[str, int] | None:
        """Where a stream asking for `port` goes, or None if this agent must refuse it."""
        if port is None or port == self.local_port:
            host, port = self.local_host, self.local_port
        elif port in self.allowed_ports:
            host = LOOPBACK
        else:
            return None
        return host, self.port_map.get(port, port)


def from_env(environ: Mapping[str, str]) -> AgentConfig:
    """Build the configuration; every error names the variable that is wrong."""
    local_host, local_port = _local_target(_get(environ, "LOCAL_TARGET") or DEFAULT_LOCAL_TARGET)
    token = _get(environ, "AGENT_TOKEN")
    token_file = _get(environ, "AGENT_TOKEN_FILE")
    token_fd = _descriptor(_get(environ, "AGENT_TOKEN_FD"))
    client_credentials = _client_credentials(environ)
    given = [
        name
        for name, value in (
            ("AGENT_TOKEN", token),
            ("AGENT_TOKEN_FILE", token_file),
            ("AGENT_TOKEN_FD", token_fd),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise ConfigError(f"set only one of {' and '.join(given)}, not both")
    if client_credentials is not None and given:
        raise ConfigError(f"set either {given[0]} or the AUTH_CLIENT_* variables, not both")
    if not given and client_credentials is None:
        raise ConfigError(
            "AGENT_TOKEN, AGENT_TOKEN_FILE or AGENT_TOKEN_FD is required (the agent's "
            "credential), or AUTH_CLIENT_ID, AUTH_CLIENT_SECRET and AUTH_TOKEN_URL"
        )
    config = AgentConfig(
        server_url=_server_url(_get(environ, "SERVER_URL")),
        local_host=local_host,
        local_port=local_port,
        allowed_ports=_allowed_ports(_get(environ, "ALLOWED_PORTS")),
        port_map=_port_map(_get(environ, "PORT_MAP")),
        token=token,
        token_file=Path(token_file) if token_file else None,
        token_fd=token_fd,
        agent_id=_agent_id(_get(environ, "AGENT_ID")),
        ca_file=_get(environ, CA_FILE_ENV),
        shutdown_grace=_seconds(environ, "SHUTDOWN_GRACE", DEFAULT_SHUTDOWN_GRACE),
        connect_patience=_seconds(environ, "LOCAL_CONNECT_PATIENCE", DEFAULT_CONNECT_PATIENCE),
        client_credentials=client_credentials,
    )
    if token:
        check_credential(config, token)
    return config


def load_credential(config: AgentConfig) -> Credential:
    """The current credential: `AGENT_TOKEN`, or `AGENT_TOKEN_FILE`/`_FD` read afresh."""
    if config.token_fd is not None:
        token = _read_descriptor(config.token_fd)
    elif config.token_file is None:
        assert config.token is not None
        token = config.token
    else:
        try:
            token = config.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise CredentialUnavailable(
                f"cannot read AGENT_TOKEN_FILE {config.token_file}: {reason}"
            ) from None
        if not token:
            raise CredentialUnavailable(f"AGENT_TOKEN_FILE {config.token_file} is empty")
    return check_credential(config, token)


def check_credential(config: AgentConfig, token: str) -> Credential:
    """Compare the credential's unverified `sub` with AGENT_ID; the gateway does the verifying."""
    source = (
        "AGENT_TOKEN_FD"
        if config.token_fd is not None
        else "AGENT_TOKEN"
        if config.token_file is None
        else "AGENT_TOKEN_FILE"
    )
    subject = _unverified_subject(token)
    if config.agent_id is not None:
        if subject is None:
            raise ConfigError(
                f"AGENT_ID is set but the credential in {source} is not a JWT with a 'sub' "
                "claim, so it cannot be checked"
            )
        if subject != config.agent_id:
            raise ConfigError(
                f"AGENT_ID is {config.agent_id!r} but the credential in {source} belongs to "
                f"{subject!r}; fix AGENT_ID or the credential"
            )
    return Credential(token=token, subject=subject)


_MAX_CREDENTIAL = 64 * 1024


def _read_descriptor(fd: int) -> str:
    """The whole content of descriptor `fd`, from offset 0, so a rewrite in place is seen."""
    try:
        data = os.pread(fd, _MAX_CREDENTIAL, 0)
        token = data.decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CredentialUnavailable(f"cannot read AGENT_TOKEN_FD {fd}: {reason}") from None
    if not token:
        raise CredentialUnavailable(f"AGENT_TOKEN_FD {fd} is empty")
    return token


def _descriptor(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or int(value) < 3:
        raise ConfigError(f"AGENT_TOKEN_FD {value!r} must be an open file descriptor (3 or more)")
    return int(value)


def _unverified_subject(token: str) -> str | None:
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    subject = claims.get("sub")
    return subject if isinstance(subject, str) and subject else None


def _get(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _server_url(value: str | None) -> str:
    example = "e.g. ws://frp-server.kuberde.svc:8080/ws"
    if value is None:
        raise ConfigError(f"SERVER_URL is required ({example})")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"SERVER_URL {value!r} is not a valid URL: {exc}") from None
    if port == 0:
        raise ConfigError(f"SERVER_URL {value!r} has port 0")
    if parts.scheme.lower() == UNIX_SCHEME:
        return _unix_server_url(value, parts.netloc, parts.path, parts.query or parts.fragment)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ConfigError(
            f"SERVER_URL {value!r} must start with ws://, wss://, http://, https:// or "
            f"{UNIX_SCHEME}: ({example})"
        )
    if not parts.hostname:
        raise ConfigError(f"SERVER_URL {value!r} has no host ({example})")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(
            f"SERVER_URL {value!r} must not carry credentials, a query or a fragment; "
            "the credential goes in AGENT_TOKEN or AGENT_TOKEN_FILE"
        )
    path = parts.path if parts.path not in ("", "/") else DEFAULT_WS_PATH
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _unix_server_url(value: str, netloc: str, path: str, extra: str) -> str:
    if netloc or extra or not path.startswith("/") or path.endswith("/"):
        raise ConfigError(
            f"SERVER_URL {value!r} must be {UNIX_SCHEME}:/absolute/path/of/the/socket, "
            "with no host, query or fragment"
        )
    return f"{UNIX_SCHEME}:{path}"


_CLIENT_VARIABLES = ("AUTH_CLIENT_ID", "AUTH_CLIENT_SECRET", "AUTH_TOKEN_URL")


def _client_credentials(environ: Mapping[str, str]) -> ClientCredentials | None:
    values = {name: _get(environ, name) for name in _CLIENT_VARIABLES}
    if not any(values.values()):
        return None
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be set with the other AUTH_* variables")
    token_url = values["AUTH_TOKEN_URL"]
    assert token_url is not None
    try:
        parts = urlsplit(token_url)
    except ValueError as exc:
        raise ConfigError(f"AUTH_TOKEN_URL {token_url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"AUTH_TOKEN_URL {token_url!r} must be an http:// or https:// URL")
    if parts.username or parts.password or parts.fragment:
        raise ConfigError(f"AUTH_TOKEN_URL {token_url!r} must not carry credentials or a fragment")
    return ClientCredentials(
        token_url=token_url,
        client_id=values["AUTH_CLIENT_ID"] or "",
        client_secret=values["AUTH_CLIENT_SECRET"] or "",
    )


def _port(text: str, variable: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"{variable}: {text!r} is not a TCP port (1-65535)")
    return int(text)


def _local_target(value: str) -> tuple[str, int]:
    if value.isdigit():
        return LOOPBACK, _port(value, "LOCAL_TARGET")
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        port = rest[1:] if bracket and rest.startswith(":") else ""
    else:
        host, _, port = value.rpartition(":")
        if ":" in host:
            host = ""
    if not host or not port:
        raise ConfigError(
            f"LOCAL_TARGET {value!r} must be host:port (e.g. 127.0.0.1:22, [::1]:22) or a port"
        )
    return host, _port(port, "LOCAL_TARGET")


def _allowed_ports(value: str | None) -> frozenset[int]:
    if value is None:
        return frozenset()
    return frozenset(_port(item, "ALLOWED_PORTS") for item in _PORT_SEPARATORS.split(value) if item)


def _port_map(value: str | None) -> dict[int, int]:
    mapping: dict[int, int] = {}
    for item in _PORT_SEPARATORS.split(value or ""):
        if not item:
            continue
        workspace, equals, local = item.partition("=")
        if not equals:
            raise ConfigError(f"PORT_MAP: {item!r} must be WORKSPACE_PORT=LOCAL_PORT")
        mapping[_port(workspace, "PORT_MAP")] = _port(local, "PORT_MAP")
    return mapping


def _agent_id(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return validate_agent_id(value)
    except InvalidName as exc:
        raise ConfigError(f"AGENT_ID: {exc}") from None


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    value = _get(environ, name)
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{name} {value!r} must be a number of seconds (0 or more)")
    return seconds
