"""Server-rendered pages: Jinja2 templates with autoescaping, and the headers every page gets.

No front-end build step: templates, one stylesheet and a little JavaScript, served by the
gateway (under `/static` on the dashboard, `/__kuberde/static` on app hosts, so each page
loads them from its own origin). Pages forbid framing and inline scripts, and send no
referrer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

__all__ = ["APP_STATIC", "DASHBOARD_STATIC", "PAGE_HEADERS", "STATIC_DIR", "fragment", "page"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
DASHBOARD_STATIC = "/static"
APP_STATIC = "/__kuberde/static"
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer browsers send `Origin: null` on form
    # posts, and the CSRF check wants the real origin. Other sites still get no referrer.
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def page(
    template: str,
    *,
    status: int = 200,
    static: str = DASHBOARD_STATIC,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> web.Response:
    body = _ENV.get_template(template).render(static=static, **context)
    return web.Response(
        text=body,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={**PAGE_HEADERS, **(headers or {})},
    )


def fragment(template: str, **context: Any) -> str:
    """A part of a page (for live updates), escaped like the pages themselves."""
    return _ENV.get_template(template).render(**context)
