"""The issuer's HTML pages: sign-in forms that carry the password, hardened against framing."""

from __future__ import annotations

import html
from collections.abc import Iterable

from aiohttp import web

from kuberde.auth.issuer.protocol import NO_STORE

PAGE_HEADERS = {
    **NO_STORE,
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}
SIGN_IN_TITLE = "Sign in to KubeRDE"

_CREDENTIAL_FIELDS = (
    "<label>Username <input name='username' autocomplete='username' required></label>"
    "<label>Password <input name='password' type='password' "
    "autocomplete='current-password' required></label>"
    "<button name='action' value='approve'>Approve</button> "
    "<button name='action' value='deny'>Deny</button>"
)


def page(title: str, body: str, status: int = 200) -> web.Response:
    document = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:28em;margin:3em auto}"
        "input{display:block;margin:.3em 0 1em;width:100%}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(
        text=document, status=status, content_type="text/html", headers=PAGE_HEADERS
    )


def message_page(title: str, text: str, status: int = 200) -> web.Response:
    """A page that only says `text` (escaped)."""
    return page(title, f"<p>{html.escape(text)}</p>", status)


def _hidden(name: str, value: str | None) -> str:
    if value is None:
        return ""
    return f"<input type='hidden' name='{name}' value='{html.escape(value, quote=True)}'>"


def verification_form(action: str, user_code: str, message: str = "") -> str:
    """The device verification form (RFC 8628 §3.3), the code pre-filled when known."""
    notice = f"<p>{html.escape(message)}</p>" if message else ""
    return (
        f"{notice}<form method='post' action='{action}'>"
        "<label>Code shown on your device <input name='user_code' required "
        f"value='{html.escape(user_code, quote=True)}'></label>"
        f"{_CREDENTIAL_FIELDS}</form>"
    )


def authorize_form(action: str, fields: Iterable[tuple[str, str | None]], message: str = "") -> str:
    """The authorization page's form, carrying the validated request as hidden fields."""
    notice = f"<p>{html.escape(message)}</p>" if message else ""
    hidden = "".join(_hidden(name, value) for name, value in fields)
    return (
        f"{notice}<p>Sign in to let the KubeRDE command line act as you.</p>"
        f"<form method='post' action='{action}'>"
        f"{hidden}{_CREDENTIAL_FIELDS}</form>"
    )
