"""Where the CLI finds its gateway and token: flags, then environment, then the config file.

The file (`$KUBERDE_CONFIG` or `~/.config/kuberde/config.json`) is written by `kuberde up`
and, later, by `kuberde login`. It holds a bearer token, so it is only ever written
atomically with mode 0600. A token from the file belongs to the server in the file: it is
never sent to a different server given with `--server` or `$KUBERDE_SERVER`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from kuberde.files import write_private
from kuberde.tls import CA_FILE_ENV

__all__ = [
    "CA_FILE_ENV",
    "CONFIG_ENV",
    "DEFAULT_SCOPE",
    "SERVER_ENV",
    "TOKEN_ENV",
    "CliConfig",
    "ClientSettings",
    "ConfigError",
    "config_path",
    "connect_url",
    "load",
    "normalize_server",
    "resolve",
    "save",
    "session_url",
]

CONFIG_ENV = "KUBERDE_CONFIG"
SERVER_ENV = "KUBERDE_SERVER"
TOKEN_ENV = "KUBERDE_TOKEN"
#: What `kuberde login` asks the issuer for (here, not in login.py, so that the command's
#: help can show it without loading the login code).
DEFAULT_SCOPE = "openid profile offline_access"

_KNOWN_KEYS = frozenset({"server", "token", "ca_file"})
_WS_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


class ConfigError(Exception):
    """The CLI cannot tell which gateway to use or how to authenticate to it."""


@dataclass(frozen=True)
class CliConfig:
    """The config file's content; `extra` keeps keys this version does not know (e.g. refresh
    tokens written by a newer `kuberde login`) so a load/save round trip never drops them."""

    server: str | None = None
    token: str | None = None
    ca_file: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientSettings:
    server: str
    token: str
    ca_file: str | None = None


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    explicit = env.get(CONFIG_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "kuberde" / "config.json"


def normalize_server(url: str) -> str:
    """Validate a gateway URL and drop a trailing slash, so equal servers compare equal."""
    parts = urlsplit(url.strip())
    if parts.scheme not in _WS_SCHEMES or not parts.hostname:
        raise ConfigError(
            f"server {url!r} must be a URL such as http://127.0.0.1:8080 or https://gateway.example"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigError("the server URL must not contain credentials; use --token")
    if parts.query or parts.fragment:
        raise ConfigError(f"server {url!r} must not have a query or fragment")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"server {url!r}: {exc}") from None
    if port == 0:
        raise ConfigError(f"server {url!r}: port 0 is not a port one can connect to")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def connect_url(server: str, agent: str, port: int | None, kind: str) -> str:
    """The `/connect` WebSocket URL: http→ws, https→wss; the token never goes in it."""
    parts = urlsplit(normalize_server(server))
    query: dict[str, str | int] = {}
    if port is not None:
        query["port"] = port
    query["kind"] = kind
    path = f"{parts.path}/connect/{quote(agent, safe='')}"
    return urlunsplit((_WS_SCHEMES[parts.scheme], parts.netloc, path, urlencode(query), ""))


def session_url(server: str, agent: str) -> str:
    """The `/session` WebSocket URL (one mux session for `kuberde port-forward`)."""
    parts = urlsplit(normalize_server(server))
    path = f"{parts.path}/session/{quote(agent, safe='')}"
    return urlunsplit((_WS_SCHEMES[parts.scheme], parts.netloc, path, "", ""))


def load(path: Path) -> CliConfig:
    """Read the config file; a missing file is an empty configuration."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return CliConfig()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    values: dict[str, str | None] = {}
    for key in _KNOWN_KEYS:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{path}: {key!r} must be a string")
        values[key] = value or None
    extra = {key: value for key, value in data.items() if key not in _KNOWN_KEYS}
    return CliConfig(
        server=values["server"], token=values["token"], ca_file=values["ca_file"], extra=extra
    )


def save(config: CliConfig, path: Path | None = None) -> Path:
    """Write `config` (atomically, mode 0600) and return where it went."""
    target = config_path() if path is None else path
    data: dict[str, Any] = dict(config.extra)
    if config.server is not None:
        data["server"] = normalize_server(config.server)
    if config.token is not None:
        data["token"] = config.token
    if config.ca_file is not None:
        data["ca_file"] = config.ca_file
    write_private(target, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    return target


def resolve(
    server_flag: str | None,
    token_flag: str | None,
    environ: Mapping[str, str] | None = None,
    *,
    ca_file_flag: str | None = None,
    path: Path | None = None,
) -> ClientSettings:
    """Settings for talking to the gateway: flag > environment > config file."""
    env = os.environ if environ is None else environ
    file_path = config_path(env) if path is None else path
    stored = load(file_path)
    chosen = server_flag or env.get(SERVER_ENV) or stored.server
    if not chosen:
        raise ConfigError(
            "no server configured: pass --server, set KUBERDE_SERVER or run `kuberde up`"
        )
    server = normalize_server(chosen)
    same_server = stored.server is not None and normalize_server(stored.server) == server
    token = token_flag or env.get(TOKEN_ENV) or (stored.token if same_server else None)
    if not token:
        raise ConfigError(
            f"no token for {server}: pass --token, set KUBERDE_TOKEN or run `kuberde up`"
        )
    ca_file = (
        ca_file_flag or env.get(CA_FILE_ENV) or (stored.ca_file if same_server else None) or None
    )
    return ClientSettings(server=server, token=token, ca_file=ca_file)
