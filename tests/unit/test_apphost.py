from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kuberde.gateway.apphost import (
    MAX_LABEL,
    AppAddress,
    BadHost,
    app_host,
    app_url,
    base_label,
    candidate_agent_ids,
    resolve_label,
    split_host,
)
from kuberde.naming import InvalidName, agent_id

LABEL = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?", fullmatch=True)


@pytest.mark.parametrize(
    ("header", "label"),
    [
        ("dev--alice.localhost:8080", "dev--alice"),
        ("8888--dev--alice.localhost", "8888--dev--alice"),
        ("DEV--Alice.LOCALHOST:8080", "dev--alice"),
        ("dev--alice.localhost.", "dev--alice"),
        ("localhost:8080", None),
        ("127.0.0.1:8080", None),
        ("[::1]:8080", None),
        ("kuberde.example.com", None),
        ("a.b.localhost", "a.b"),
    ],
)
def test_split_host(header: str, label: str | None) -> None:
    assert split_host(header, "localhost") == label


@pytest.mark.parametrize(
    "header", ["", "bad_host!", "a..b", "host:port", "host:123456", "[::1", "x" * 400, "-a.b"]
)
def test_malformed_hosts_are_refused(header: str) -> None:
    with pytest.raises(BadHost):
        split_host(header, "localhost")


def test_without_apps_domain_every_host_is_the_dashboard() -> None:
    assert split_host("dev--alice.localhost", None) is None


WORKSPACES = [("dev", "alice"), ("8888", "dev--alice"), ("smith-dev", "alice")]


@pytest.mark.parametrize(
    ("label", "address"),
    [
        ("dev--alice", AppAddress("dev", "alice", None)),
        ("9000--dev--alice", AppAddress("dev", "alice", 9000)),
        # The default app of `8888` owned by `dev--alice` wins over port 8888 of dev/alice.
        ("8888--dev--alice", AppAddress("8888", "dev--alice", None)),
        ("smith-dev--alice", AppAddress("smith-dev", "alice", None)),
        ("dev--bob", None),
        ("70000--dev--alice", None),
        ("0--dev--alice", None),
        ("a.b", None),
        ("", None),
    ],
)
def test_resolve_label(label: str, address: AppAddress | None) -> None:
    assert resolve_label(label, WORKSPACES) == address


@given(LABEL, LABEL, st.one_of(st.none(), st.integers(1, 65535)))
def test_every_host_fits_dns_and_resolves_back(name: str, owner: str, port: int | None) -> None:
    host = app_host(name, owner, port, "apps.example.com")
    label = split_host(host + ":443", "apps.example.com")
    assert label is not None and len(label) <= MAX_LABEL
    assert resolve_label(label, [("other", "x"), (name, owner)]) == AppAddress(name, owner, port)


def test_long_names_get_a_stable_short_form() -> None:
    name, owner = "n" * 30, "o" * 26
    assert base_label(name, owner) == base_label(name, owner)
    assert base_label(name, owner).startswith("w") and len(base_label(name, owner)) == 21
    assert base_label(name, owner) != base_label(name, owner[:-1])
    assert base_label("dev", "alice") == "dev--alice"


def test_app_url_leaves_out_default_ports() -> None:
    address = AppAddress("dev", "alice", None)
    assert (
        app_url("http", "localhost", 8080, address, "/lab")
        == "http://dev--alice.localhost:8080/lab"
    )
    assert app_url("https", "apps.example.com", 443, AppAddress("dev", "alice", 3000)) == (
        "https://3000--dev--alice.apps.example.com/"
    )


@given(LABEL, LABEL, st.one_of(st.none(), st.integers(1, 65535)))
def test_a_users_own_app_host_names_its_agent_id_before_the_directory_knows_it(
    name: str, owner: str, port: int | None
) -> None:
    """What the app proxy catches up on when a label misses: the owner's agent ID it names
    (unless the label is the short form, which only the directory can resolve)."""
    host = app_host(name, owner, port, "apps.example.com")
    label = split_host(host, "apps.example.com")
    assert label is not None
    candidates = candidate_agent_ids(label, owner)
    if base_label(name, owner).startswith("w") and "--" not in base_label(name, owner):
        assert candidates == []
    else:
        try:
            expected = agent_id(owner, name)
        except InvalidName:
            assert candidates == []
        else:
            assert expected in candidates
    assert all(candidate.startswith(f"user-{owner}-") for candidate in candidates)


@pytest.mark.parametrize(
    ("label", "owner", "candidates"),
    [
        ("lab--alice", "alice", ["user-alice-lab"]),
        ("8888--lab--alice", "alice", ["user-alice-8888--lab", "user-alice-lab"]),
        ("lab--bob", "alice", []),
        ("--alice", "alice", []),
        ("w0123456789abcdef0123", "alice", []),
    ],
)
def test_candidate_agent_ids(label: str, owner: str, candidates: list[str]) -> None:
    assert candidate_agent_ids(label, owner) == candidates
