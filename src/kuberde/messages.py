"""Messages the CLI and the servers both use, worded once: each names what to do next."""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["not_found", "unreachable"]

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def unreachable(server: str, reason: str) -> str:
    """`cannot reach the gateway at URL (why)`, and how to start a local one if it is local."""
    message = f"cannot reach the gateway at {server} ({reason})"
    if urlsplit(server).hostname in _LOOPBACK:
        message += "; is `kuberde up` running? Start it with `make run` (or `kuberde up`)"
    return message


def not_found(name: str) -> str:
    return f"no workspace named {name!r}; `kuberde ls` lists yours"
