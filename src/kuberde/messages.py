"""Messages the CLI and the servers both use, worded once: each names what to do next."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

__all__ = ["not_found", "os_reason", "unreachable"]

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def unreachable(server: str, reason: str) -> str:
    """`cannot reach the gateway at URL (why)`, and how to start a local one if it is local."""
    message = f"cannot reach the gateway at {server} ({reason})"
    if urlsplit(server).hostname in _LOOPBACK:
        message += "; is `kuberde up` running? Start it with `make run` (or `kuberde up`)"
    return message


def os_reason(error: BaseException) -> str:
    """`connection refused`, not asyncio's "Connect call failed ('127.0.0.1', 1)"."""
    errno = getattr(error, "errno", None)
    if isinstance(errno, int) and errno:
        return os.strerror(errno).lower()
    return str(error) or type(error).__name__


def not_found(name: str) -> str:
    return f"no workspace named {name!r}; `kuberde ls` lists yours"
