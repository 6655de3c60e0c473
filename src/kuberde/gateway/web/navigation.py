"""Small facts about a browser request: is it a page load, where may it be sent next."""

from __future__ import annotations

from aiohttp import web

__all__ = ["is_navigation", "request_origin", "safe_next"]


def is_navigation(request: web.Request) -> bool:
    """A browser loading a page (not an API call, asset or WebSocket): it may be redirected."""
    if request.method != "GET":
        return False
    mode = request.headers.get("Sec-Fetch-Mode")
    if mode is not None:
        return mode == "navigate"
    return "text/html" in request.headers.get("Accept", "")


def safe_next(value: str | None) -> str:
    """A path on the same host to go to after a redirect (never `//other` or a scheme)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def request_origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"
