"""The built-in issuer's users file: scrypt hashes, reloading, refusing unsafe files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kuberde.auth.users import (
    UsersFile,
    UsersFileError,
    hash_password,
    set_user,
    verify_password,
)


def test_hashes_are_salted_and_verify() -> None:
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second
    assert first.startswith("scrypt$")
    assert "correct horse" not in first
    assert verify_password(first, "correct horse")
    assert not verify_password(first, "correct horsE")
    assert not verify_password(first, "")


@pytest.mark.parametrize(
    "encoded", ["", "scrypt", "bcrypt$1$2$3$abc$def", "scrypt$x$8$1$abc$def", "plain-text"]
)
def test_malformed_hashes_never_verify(encoded: str) -> None:
    assert not verify_password(encoded, "anything")


def test_empty_passwords_are_not_hashed() -> None:
    with pytest.raises(ValueError):
        hash_password("")


async def test_set_user_writes_a_private_file_that_authenticates(tmp_path: Path) -> None:
    path = tmp_path / "state" / "users.yaml"
    set_user(path, "alice", "s3cret-pass")
    set_user(path, "root", "root-pass", admin=True)
    assert path.stat().st_mode & 0o777 == 0o600
    assert "s3cret-pass" not in path.read_text()
    users = UsersFile(path)
    alice = await users.authenticate("alice", "s3cret-pass")
    assert alice is not None and (alice.username, alice.admin) == ("alice", False)
    root = await users.authenticate("root", "root-pass")
    assert root is not None and root.admin
    assert await users.authenticate("alice", "root-pass") is None
    assert await users.authenticate("mallory", "s3cret-pass") is None


async def test_changes_on_disk_are_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    users = UsersFile(path)
    assert users.get("alice") is None
    set_user(path, "alice", "first-pass")
    assert await users.authenticate("alice", "first-pass") is not None
    set_user(path, "alice", "second-pass", admin=True)
    assert await users.authenticate("alice", "first-pass") is None
    updated = await users.authenticate("alice", "second-pass")
    assert updated is not None and updated.admin
    path.unlink()
    assert users.get("alice") is None


def test_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    set_user(path, "alice", "pass-word")
    os.chmod(path, 0o644)
    with pytest.raises(UsersFileError, match="chmod 600"):
        UsersFile(path).get("alice")


async def test_an_unusable_file_lets_nobody_in(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    set_user(path, "alice", "pass-word")
    os.chmod(path, 0o644)
    assert await UsersFile(path).authenticate("alice", "pass-word") is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("users: [alice]\n", "mapping"),
        ("users:\n  Alice: {password_hash: x}\n", "username"),
        ("users:\n  alice: {admin: true}\n", "password_hash"),
        ("users:\n  alice: {password_hash: x, admin: 'yes'}\n", "admin"),
        ("users: {alice: [\n", "YAML"),
    ],
)
def test_invalid_files_say_what_is_wrong(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(UsersFileError, match=message):
        UsersFile(path).get("alice")


def test_an_empty_file_has_no_users(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    path.write_text("")
    path.chmod(0o600)
    assert UsersFile(path).get("alice") is None
