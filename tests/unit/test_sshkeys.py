"""The SSH identity and known hosts KubeRDE keeps for a user (`kuberde.cli.sshkeys`)."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kuberde.cli.sshkeys import (
    aliases,
    identities,
    known_hosts_file,
    listed_aliases,
    logins,
    public_keys,
    record_host_key,
    record_login,
    user_keys,
    with_host_key,
)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOld"
NEW = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINew"


def test_a_new_alias_is_appended_and_other_lines_are_kept() -> None:
    text = "# mine\nhost1 ssh-rsa AAAA\n|1|hashed= ssh-rsa BBBB\n"
    assert with_host_key(text, "demo.kuberde", KEY) == text + f"demo.kuberde {KEY}\n"


def test_a_changed_host_key_replaces_the_old_one() -> None:
    text = f"demo.kuberde {KEY}\ndev.kuberde {KEY}\n"
    assert with_host_key(text, "demo.kuberde", NEW) == f"dev.kuberde {KEY}\ndemo.kuberde {NEW}\n"


def test_a_line_shared_with_other_names_is_not_ours_to_drop() -> None:
    text = f"demo.kuberde,other {KEY}\n"
    assert with_host_key(text, "demo.kuberde", NEW) == text + f"demo.kuberde {NEW}\n"


names = st.from_regex(r"[a-z][a-z0-9-]{0,10}\.kuberde", fullmatch=True)
keys = st.from_regex(r"ssh-ed25519 [A-Za-z0-9+/]{8,20}", fullmatch=True)


@given(st.lists(st.tuples(names, keys), max_size=8), names, keys)
def test_recording_keeps_exactly_one_entry_per_alias(
    existing: list[tuple[str, str]], alias: str, key: str
) -> None:
    text = "".join(f"{name} {value}\n" for name, value in existing)
    updated = with_host_key(text, alias, key)
    mine = [line for line in updated.splitlines() if line.split()[0] == alias]
    assert mine == [f"{alias} {key}"]
    others = [line for line in text.splitlines() if line.split()[0] != alias]
    assert [line for line in updated.splitlines() if line.split()[0] != alias] == others
    assert with_host_key(updated, alias, key) == updated


def test_aliases_lists_plain_names_only() -> None:
    text = f"# demo.kuberde\na.kuberde,b {KEY}\n|1|x= {KEY}\n@revoked c {KEY}\nbroken\n"
    assert aliases(text) == ["a.kuberde", "b"]


def test_the_users_own_keys_come_first_in_openssh_order(tmp_path: Path) -> None:
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    for name in ("id_ed25519", "id_rsa", "id_ecdsa"):
        (ssh / name).write_text("private")
    (ssh / "id_ed25519.pub").write_text("pub")
    (ssh / "id_rsa.pub").write_text("pub")
    assert user_keys(tmp_path) == [ssh / "id_rsa", ssh / "id_ed25519"]
    assert identities(tmp_path, tmp_path / "cli" / "config.json") == user_keys(tmp_path)
    assert not (tmp_path / "cli").exists()


def test_a_user_without_keys_gets_one_managed_key(tmp_path: Path) -> None:
    config = tmp_path / "cli" / "config.json"
    assert identities(tmp_path, config, create=False) == [tmp_path / "cli" / "ssh" / "id_ed25519"]
    assert not (tmp_path / "cli").exists()
    [key] = identities(tmp_path, config)
    assert key == tmp_path / "cli" / "ssh" / "id_ed25519"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(key)], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert identities(tmp_path, config) == [key]
    again = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(key)], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert again == fingerprint
    assert public_keys(tmp_path, config) == [key.with_name("id_ed25519.pub")]


def test_record_host_key_writes_a_private_file_and_lists_it(tmp_path: Path) -> None:
    config = tmp_path / "cli" / "config.json"
    assert listed_aliases(config) == []
    path = record_host_key("demo.kuberde", KEY, config)
    record_host_key("demo.kuberde", NEW, config)
    assert path == known_hosts_file(config)
    assert path.read_text() == f"demo.kuberde {NEW}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert listed_aliases(config) == ["demo.kuberde"]


@pytest.mark.parametrize("text", ["", "\n\n", "x ssh-rsa AAAA"])
def test_blank_lines_and_a_missing_final_newline_are_kept(text: str) -> None:
    kept = text if not text or text.endswith("\n") else text + "\n"
    assert with_host_key(text, "a.kuberde", KEY) == f"{kept}a.kuberde {KEY}\n"


def test_login_users_are_remembered_per_alias_and_a_bad_file_means_none(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    assert logins(config) == {}
    record_login("demo.kuberde", "kuberde-root", config)
    record_login("dev.kuberde", "kuberde-alice", config)
    record_login("demo.kuberde", "kuberde-bob", config)
    assert logins(config) == {"demo.kuberde": "kuberde-bob", "dev.kuberde": "kuberde-alice"}
    stored = tmp_path / "ssh" / "logins.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    for broken in ("not json", "[1, 2]", '{"demo.kuberde": 3}'):
        stored.write_text(broken)
        assert logins(config) == {}
