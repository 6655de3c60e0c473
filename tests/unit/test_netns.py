"""The pure parts of the owners' network namespaces: names, ownership of names, slirp4netns."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from kuberde.local.netns import (
    SLIRP_DNS,
    installation_tag,
    is_ours,
    netns_name,
    slirp_argv,
    workload_resolv_conf,
)

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)


def test_the_tag_names_an_installation_by_its_resolved_state_directory(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "state")
    tag = installation_tag(tmp_path / "state")
    assert re.fullmatch(r"[0-9a-f]{8}", tag)
    assert installation_tag(tmp_path / "link") == tag
    assert installation_tag(tmp_path / "other") != tag


@given(owner=LABEL, other=LABEL)
def test_an_installation_owns_exactly_its_owners_namespaces(owner: str, other: str) -> None:
    name = netns_name("ab12cd34", owner)
    assert name == f"kuberde-ab12cd34-{owner}"
    assert is_ours("ab12cd34", name)
    assert not is_ours("ab12cd35", name)
    # The probe's name cannot be any owner's ("-" never starts a DNS label).
    assert netns_name("ab12cd34", "-probe") != netns_name("ab12cd34", other)


def test_slirp4netns_never_reaches_the_hosts_loopback_and_dies_with_us() -> None:
    argv = slirp_argv("/usr/bin/slirp4netns", Path("/run/netns/kuberde-t-alice"), 7, 9)
    assert argv[0] == "/usr/bin/slirp4netns"
    assert "--disable-host-loopback" in argv
    assert {"--exit-fd=7", "--ready-fd=9", "--configure"} <= set(argv)
    # Its sandbox's mount namespace unmounts /run/netns entries where mounts are shared.
    assert "--enable-sandbox" not in argv
    assert argv[argv.index("--netns-type=path") + 1] == "/run/netns/kuberde-t-alice"


SYSTEMD_RESOLVED_STUB = """\
# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).
nameserver 127.0.0.53
options edns0 trust-ad
search corp.example
"""


def test_a_loopback_stub_resolver_becomes_slirps_forwarder_keeping_search_and_options() -> None:
    assert workload_resolv_conf(SYSTEMD_RESOLVED_STUB) == (
        "# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).\n"
        "options edns0 trust-ad\n"
        "search corp.example\n"
        f"nameserver {SLIRP_DNS}\n"
    )


def test_no_nameserver_means_localhost_so_it_is_replaced_too() -> None:
    assert workload_resolv_conf("search example.org\n") == (
        f"search example.org\nnameserver {SLIRP_DNS}\n"
    )


LOOPBACK = st.sampled_from(["127.0.0.53", "127.0.0.1", "::1", "127.1.2.3"])
REACHABLE = st.sampled_from(
    ["10.255.255.53", "192.168.1.1", "1.1.1.1", "fe80::1%eth0", "2001:db8::1"]
)


@given(servers=st.lists(st.one_of(LOOPBACK, REACHABLE), min_size=1, max_size=4))
def test_the_hosts_file_is_kept_when_any_nameserver_is_reachable_from_the_namespace(
    servers: list[str],
) -> None:
    host = "".join(f"nameserver {server}\n" for server in servers)
    replaced = workload_resolv_conf(host)
    if all(server in ("127.0.0.53", "127.0.0.1", "::1", "127.1.2.3") for server in servers):
        assert replaced == f"nameserver {SLIRP_DNS}\n"
    else:
        assert replaced is None


def test_a_malformed_nameserver_line_is_not_loopback_so_the_file_is_left_alone() -> None:
    assert workload_resolv_conf("nameserver\nnameserver not-an-address\n") is None
