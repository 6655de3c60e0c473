"""`kuberde.files.write_private`: the one writer of our 0600 files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kuberde.files import write_private


@pytest.mark.parametrize("durable", [True, False])
def test_writes_a_private_file_and_replaces_it_whole(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "new" / "secret"
    assert write_private(path, "first", durable=durable)
    assert write_private(path, b"second", durable=durable)
    assert path.read_bytes() == b"second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert os.listdir(path.parent) == ["secret"]


def test_exclusive_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "key"
    assert write_private(path, "winner", exclusive=True)
    assert not write_private(path, "loser", exclusive=True)
    assert path.read_text() == "winner"
    assert os.listdir(tmp_path) == ["key"]


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    write_private(shared / "config.json", "{}")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE((shared / "config.json").stat().st_mode) == 0o600
