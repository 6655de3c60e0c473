"""`kuberde user-add`: the way users of the built-in sign-in are created."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
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


# ---- where the password comes from -------------------------------------------------------

PROMPT_TIMEOUT = 30.0


def _on_terminal(argv: list[str], *, stdin: bytes | None, answers: list[bytes]) -> tuple[int, str]:
    """Run `argv` with a new pseudo-terminal as its controlling terminal (so /dev/tty is
    readable). Its stdin is the terminal, or a pipe holding `stdin` if given. Each answer
    is typed after the next prompt. Returns (exit code, terminal output)."""
    piped: tuple[int, int] | None = os.pipe() if stdin is not None else None
    pid, terminal = pty.fork()
    if pid == 0:  # the child: exec at once
        if piped is not None:
            os.dup2(piped[0], 0)
        os.execv(argv[0], argv)
    if piped is not None:
        os.close(piped[0])
        os.write(piped[1], stdin or b"")
        os.close(piped[1])
    output = b""
    pending = list(answers)
    deadline = time.monotonic() + PROMPT_TIMEOUT
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no exit within {PROMPT_TIMEOUT:g}s; output: {output!r}")
            ready, _, _ = select.select([terminal], [], [], remaining)
            if not ready:
                continue
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            # `Password:` is printed, then getpass turns echo off and prints the space.
            if pending and output.endswith(b": "):
                os.write(terminal, pending.pop(0) + b"\n")
    finally:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(terminal)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def _saved(state_dir: Path, name: str, password: str) -> bool:
    entry = yaml.safe_load((state_dir / USERS_FILE).read_text())["users"][name]
    return verify_password(entry["password_hash"], password)


def test_on_a_terminal_the_password_is_asked_twice_and_not_echoed(tmp_path: Path) -> None:
    argv = [KUBERDE, "user-add", "carol", "--state-dir", str(tmp_path)]
    code, output = _on_terminal(argv, stdin=None, answers=[b"s3cret pass", b"s3cret pass"])
    assert code == 0, output
    assert "Password:" in output and "Repeat for confirmation:" in output
    assert "s3cret" not in output
    assert _saved(tmp_path, "carol", "s3cret pass")


def test_a_piped_password_is_read_from_stdin_even_with_a_terminal_attached(
    tmp_path: Path,
) -> None:
    """/dev/tty is there and readable, but stdin is a pipe: nothing may wait on the terminal."""
    argv = [KUBERDE, "user-add", "dave", "--state-dir", str(tmp_path)]
    code, output = _on_terminal(argv, stdin=b"piped pass\n", answers=[])
    assert code == 0, output
    assert "Password" not in output
    assert _saved(tmp_path, "dave", "piped pass")


def test_password_stdin_reads_one_line_without_a_prompt(tmp_path: Path) -> None:
    result = subprocess.run(
        [KUBERDE, "user-add", "erin", "--password-stdin", "--state-dir", str(tmp_path)],
        input="one line\nsecond line ignored\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Password" not in result.stdout + result.stderr
    assert _saved(tmp_path, "erin", "one line")


@pytest.mark.parametrize("stdin", ["", "\n"])
def test_no_password_on_stdin_is_a_usage_error_and_nothing_is_written(
    tmp_path: Path, stdin: str
) -> None:
    result = subprocess.run(
        [KUBERDE, "user-add", "frank", "--state-dir", str(tmp_path)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == "kuberde: no password on standard input\n"
    assert not (tmp_path / USERS_FILE).exists()
