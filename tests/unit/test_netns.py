"""The pure parts of the owners' network namespaces: names, ownership of names, slirp4netns."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from kuberde.local.netns import installation_tag, is_ours, netns_name, slirp_argv

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
