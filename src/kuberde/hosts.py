"""Whether a host name is this machine's loopback: one answer for the issuer (which lets
loopback redirect URIs use http) and for `kuberde doctor` (a local gateway)."""

from __future__ import annotations

from ipaddress import ip_address

__all__ = ["is_loopback_host"]


def is_loopback_host(host: str) -> bool:
    """`localhost`, or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False
