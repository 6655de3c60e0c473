from __future__ import annotations

import pytest

from kuberde.gateway.proxyheaders import (
    app_request_headers,
    app_response_headers,
    filter_cookie_header,
    sanitize_set_cookie,
)

PLATFORM = frozenset({"kuberde-session", "kuberde-app"})


def test_platform_credentials_never_reach_the_app() -> None:
    headers = app_request_headers(
        [
            ("Host", "dev--alice.localhost:8080"),
            ("Authorization", "Bearer eyJsecret"),
            ("Cookie", "kuberde-app=t1; _xsrf=abc; kuberde-session=s1"),
            ("Connection", "keep-alive, X-Private"),
            ("X-Private", "hop"),
            ("Keep-Alive", "timeout=5"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("Accept", "text/html"),
        ],
        platform_cookies=PLATFORM,
        client="127.0.0.1",
        scheme="http",
    )
    assert headers == [
        ("Host", "dev--alice.localhost:8080"),
        ("Cookie", "_xsrf=abc"),
        ("Accept", "text/html"),
        ("X-Forwarded-For", "127.0.0.1"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "dev--alice.localhost:8080"),
    ]


def test_an_apps_own_authorization_scheme_passes() -> None:
    headers = app_request_headers(
        [("Authorization", "token jupyter-token"), ("Cookie", "kuberde-app=t")],
        platform_cookies=PLATFORM,
        client=None,
        scheme="https",
    )
    assert headers == [("Authorization", "token jupyter-token"), ("X-Forwarded-Proto", "https")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a=1; kuberde-app=x", "a=1"),
        ("kuberde-app=x", ""),
        ("a=1;b=2", "a=1; b=2"),
        ("kuberde-sessionx=1", "kuberde-sessionx=1"),
    ],
)
def test_filter_cookie_header(value: str, expected: str) -> None:
    assert filter_cookie_header(value, PLATFORM) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a=1; Path=/; HttpOnly", "a=1; Path=/; HttpOnly"),
        ("a=1; Domain=localhost; Path=/", "a=1; Path=/"),
        ("a=1; domain=.example.com", "a=1"),
        ("kuberde-session=evil; Path=/", None),
        ("kuberde-app=evil", None),
        ("=x", None),
    ],
)
def test_app_cookies_stay_on_the_app_host(value: str, expected: str | None) -> None:
    assert sanitize_set_cookie(value, PLATFORM) == expected


def test_response_framing_is_the_proxys() -> None:
    headers = app_response_headers(
        [
            ("Content-Type", "text/html"),
            ("Content-Length", "5"),
            ("Transfer-Encoding", "chunked"),
            ("Set-Cookie", "kuberde-session=evil"),
            ("Set-Cookie", "x=1; Domain=localhost"),
        ],
        platform_cookies=PLATFORM,
    )
    assert headers == [("Content-Type", "text/html"), ("Set-Cookie", "x=1")]
