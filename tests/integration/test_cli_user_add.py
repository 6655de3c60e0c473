"""`kuberde user-add`: the way users of the built-in sign-in are created."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from kuberde.auth.users import USERS_FILE, verify_password

KUBERDE = str(Path(sys.executable).parent / "kuberde")


def user_add(
    state_dir: Path, *args: str, password: str = "correct horse"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBERDE, "user-add", *args, "--state-dir", str(state_dir)],
        input=f"{password}\n{password}\n",
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_user_is_saved_with_a_hashed_password(tmp_path: Path) -> None:
    result = user_add(tmp_path, "bob", "--admin")
    assert result.returncode == 0, result.stderr
    path = tmp_path / USERS_FILE
    assert path.stat().st_mode & 0o077 == 0
    entry = yaml.safe_load(path.read_text())["users"]["bob"]
    assert entry["admin"] is True
    assert "correct horse" not in path.read_text()
    assert verify_password(entry["password_hash"], "correct horse")
    assert "correct horse" not in result.stdout + result.stderr


def test_an_invalid_user_name_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    result = user_add(tmp_path, "Bob_Smith")
    assert result.returncode == 2
    assert "user name" in result.stderr
    assert not (tmp_path / USERS_FILE).exists()
