"""Where a workspace app lives: `{port}--{name}--{owner}.{apps-domain}` and its default app.

Apps get a host of their own so each sees itself at `/` (no base-path setting) and the
browser's same-origin rules keep one app's JavaScript away from another's and from the
dashboard. Pure functions: the proxy, the dashboard and `kuberde ls` share them.

A DNS label holds at most 63 characters. Names and owners are DNS labels themselves, so
`name--owner` may be longer; such a workspace gets a stable short form, `w` and 20 hex
digits of a SHA-256 over name and owner. Labels are matched against the known workspaces,
never parsed into names, so `--` inside a name is no ambiguity.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from kuberde.naming import InvalidName, agent_id

__all__ = [
    "AppAddress",
    "BadHost",
    "app_host",
    "app_url",
    "base_label",
    "candidate_agent_ids",
    "resolve_label",
    "split_host",
    "workspace_app_urls",
]

MAX_LABEL = 63
_PORT_PREFIX = len("65535--")
_HOST = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
_PORTED = re.compile(r"^([1-9][0-9]{0,4})--(.+)$")


class BadHost(ValueError):
    """A Host header that is no host name at all (the request gets 400)."""


@dataclass(frozen=True, slots=True)
class AppAddress:
    """What an app host names: a workspace (name, owner) and a port, or None for its default."""

    name: str
    owner: str
    port: int | None


def base_label(name: str, owner: str) -> str:
    """`name--owner`, or its stable short form when a port prefix would not fit in a label."""
    label = f"{name}--{owner}"
    if len(label) + _PORT_PREFIX <= MAX_LABEL:
        return label
    return "w" + hashlib.sha256(f"{name}/{owner}".encode()).hexdigest()[:20]


def app_host(name: str, owner: str, port: int | None, apps_domain: str) -> str:
    label = base_label(name, owner)
    return f"{port}--{label}.{apps_domain}" if port is not None else f"{label}.{apps_domain}"


def app_url(
    scheme: str, apps_domain: str, gateway_port: int | None, address: AppAddress, path: str = "/"
) -> str:
    """The browser URL of an app; the gateway's port is left out when it is the default."""
    default_port = {"http": 80, "https": 443}[scheme]
    shown = "" if gateway_port in (None, default_port) else f":{gateway_port}"
    host = app_host(address.name, address.owner, address.port, apps_domain)
    return f"{scheme}://{host}{shown}{path}"


def workspace_app_urls(
    name: str,
    owner: str,
    apps: Iterable[tuple[str, int, str]],
    *,
    scheme: str,
    apps_domain: str,
    gateway_port: int | None,
) -> list[tuple[str, str]]:
    """(app name, URL) of each `(name, port, path)` app: the first is the default app."""
    urls = []
    for index, (app, port, path) in enumerate(apps):
        address = AppAddress(name, owner, None if index == 0 else port)
        urls.append((app, app_url(scheme, apps_domain, gateway_port, address, path)))
    return urls


def split_host(header: str | None, apps_domain: str | None) -> str | None:
    """The app label of a Host header, or None when the request is for the dashboard.

    Raises `BadHost` for a header that is not `host[:port]` with a DNS host name, IPv4 or
    [IPv6] address. A host under the apps domain with more than one label in front of it
    yields that whole prefix (it names no app, so it resolves to nothing).
    """
    if header is None or not header or len(header) > 300:
        raise BadHost("missing or oversized Host header")
    host = header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or not re.fullmatch(r"(:[0-9]{1,5})?", host[end + 1 :]):
            raise BadHost(f"malformed Host header {header!r}")
        return None
    name, sep, port = host.rpartition(":")
    if sep:
        if not port.isdigit() or len(port) > 5:
            raise BadHost(f"malformed Host header {header!r}")
        host = name
    host = host.removesuffix(".")
    if not _HOST.fullmatch(host) or ".." in host:
        raise BadHost(f"malformed Host header {header!r}")
    if apps_domain is None:
        return None
    suffix = "." + apps_domain.lower()
    if not host.endswith(suffix) or len(host) == len(suffix):
        return None
    return host[: -len(suffix)]


def resolve_label(label: str, workspaces: Iterable[tuple[str, str]]) -> AppAddress | None:
    """The app a label names among `(name, owner)` workspaces, or None.

    The default-app form wins over the port form when both match (a workspace named `8888`
    owned by `dev--alice` against port 8888 of `dev` owned by `alice`).
    """
    if len(label) > MAX_LABEL or "." in label:
        return None
    known = {base_label(name, owner): (name, owner) for name, owner in workspaces}
    if label in known:
        name, owner = known[label]
        return AppAddress(name, owner, None)
    ported = _PORTED.fullmatch(label)
    if ported is not None and int(ported[1]) <= 65535 and ported[2] in known:
        name, owner = known[ported[2]]
        return AppAddress(name, owner, int(ported[1]))
    return None


def candidate_agent_ids(label: str, owner: str) -> list[str]:
    """The agent IDs of `owner`'s that `label` may name (`name--owner`, with or without a
    port), so a workspace created a moment ago is looked for before its app is called
    missing. The short form names no ID: it waits for the next directory refresh."""
    suffix = f"--{owner}"
    ported = _PORTED.fullmatch(label)
    forms = [label, ported[2]] if ported is not None else [label]
    candidates = []
    for form in forms:
        if form.endswith(suffix) and len(form) > len(suffix):
            try:
                candidates.append(agent_id(owner, form[: -len(suffix)]))
            except InvalidName:
                continue
    return candidates
