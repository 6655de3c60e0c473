"""`kuberde server` and `kuberde up` refuse a file they cannot start with in one line that
names it and why, exit 1 and leave the file as it was: no traceback, nothing half started."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import TlsFiles
from tests.e2e.up_fixtures import CLI_TIMEOUT, KUBERDE

pytestmark = pytest.mark.timeout(120)

JUNK = b"this is not what it should be\n"


def start(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBERDE, *args, "--listen", "127.0.0.1:0"],
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def private(path: Path, data: bytes) -> Path:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def assert_one_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert len(lines) == 1 and lines[0].startswith("kuberde: "), result.stderr
    for word in words:
        assert word in lines[0], result.stderr


def up(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    state = tmp_path / "state"
    return start(tmp_path, "up", "--state-dir", str(state), "--homes-dir", str(tmp_path / "h"))


def corrupt_sessions(state: Path) -> Path:
    return private(state / "browser-sessions.db", JUNK * 100)


def corrupt_key(state: Path) -> Path:
    return private(state / "signing-key.pem", JUNK)


def corrupt_users(state: Path) -> Path:
    return private(state / "users.yaml", b"users: [\n")


def sessions_directory(state: Path) -> Path:
    path = state / "browser-sessions.db"
    path.mkdir(parents=True)
    return path


@pytest.mark.parametrize(
    ("spoil", "words"),
    [
        (corrupt_sessions, ["browser-sessions.db", "move it aside"]),
        (sessions_directory, ["browser-sessions.db", "Is a directory"]),
        (corrupt_key, ["signing-key.pem"]),
        (corrupt_users, ["users.yaml", "not valid YAML", "line 2"]),
    ],
)
def test_up_names_the_file_it_cannot_use(
    tmp_path: Path, spoil: Callable[[Path], Path], words: list[str]
) -> None:
    spoiled = spoil(tmp_path / "state")
    before = spoiled.read_bytes() if spoiled.is_file() else None
    assert_one_line(up(tmp_path), *words)
    assert (spoiled.read_bytes() if spoiled.is_file() else None) == before


def test_server_names_the_session_file_and_key_it_cannot_use(tmp_path: Path) -> None:
    state = tmp_path / "state"
    spoiled = corrupt_sessions(state)
    browser = ["--oidc-issuer", "http://127.0.0.1:9", "--apps-domain", "apps.localhost"]
    result = start(tmp_path, "server", "--state-dir", str(state), *browser)
    assert_one_line(result, "browser-sessions.db", "move it aside")
    assert spoiled.read_bytes() == JUNK * 100
    spoiled.unlink()
    corrupt_key(state)
    assert_one_line(start(tmp_path, "server", "--state-dir", str(state)), "signing-key.pem")


def test_server_names_the_tls_files_it_cannot_use(tmp_path: Path, tls_files: TlsFiles) -> None:
    state = str(tmp_path / "state")
    junk = private(tmp_path / "junk.pem", JUNK)
    for cert, key, why in [
        (tls_files.cert, junk, "not a PEM certificate chain and its matching private key"),
        (tmp_path / "missing.pem", tls_files.key, "No such file or directory"),
    ]:
        tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
        result = start(tmp_path, "server", "--state-dir", state, *tls)
        assert_one_line(result, str(cert), str(key), why)
