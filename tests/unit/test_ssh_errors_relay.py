"""`kuberde ssh`'s relay of ssh's stderr and the ProxyCommand's error file, with `sh`
scripts standing in for ssh (the real OpenSSH cases are in tests/e2e/test_ssh_errors.py)."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import pytest

from kuberde.cli.errorfile import ERROR_FILE_ENV, report
from kuberde.cli.sshrun import run_ssh

pytestmark = pytest.mark.timeout(30)


def test_report_without_an_error_file_prints_one_line() -> None:
    err = io.StringIO()
    report("no workspace named 'x'", err, {})
    assert err.getvalue() == "kuberde: no workspace named 'x'\n"


def test_report_prints_then_appends_the_line_to_the_named_file(tmp_path: Path) -> None:
    target = tmp_path / "error"
    target.write_text("")
    err = io.StringIO()
    report("gone", err, {ERROR_FILE_ENV: str(target)})
    assert (err.getvalue(), target.read_text()) == ("kuberde: gone\n", "kuberde: gone\n")


@pytest.mark.parametrize("kind", ["missing", "symlink", "directory"])
def test_report_never_creates_or_follows_and_falls_back_to_stderr(
    tmp_path: Path, kind: str
) -> None:
    named = tmp_path / "error"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("")
    if kind == "symlink":
        named.symlink_to(elsewhere)
    elif kind == "directory":
        named.mkdir()
    err = io.StringIO()
    report("gone", err, {ERROR_FILE_ENV: str(named)})
    assert err.getvalue() == "kuberde: gone\n"
    assert elsewhere.read_text() == ""
    assert named.exists() == (kind != "missing")


def _run(script: str, tmp_path: Path) -> tuple[int, str]:
    captured = tmp_path / "stderr"
    with captured.open("wb") as sink:
        code = run_ssh(["sh", "-c", script], dict(os.environ), sink.fileno())
    return code, captured.read_text()


def test_without_an_error_everything_passes_and_the_code_is_ssh_s(tmp_path: Path) -> None:
    assert _run("echo one >&2; printf partial >&2; exit 7", tmp_path) == (7, "one\npartial")


#: What `report` does in the ProxyCommand: the line on stderr, then in the error file.
REPORT = 'echo "kuberde: $1" >&2; echo "kuberde: $1" >> "$KUBERDE_ERROR_FILE"'
NOISE = "echo 'kex_exchange_identification: Connection closed by remote host' >&2"


def test_after_an_error_nothing_ssh_says_follows_it(tmp_path: Path) -> None:
    script = f'report() {{ {REPORT}; }}; echo "waking dev… 3s" >&2; report "dev went away"; '
    script += f"{NOISE}; exit 255"
    assert _run(script, tmp_path) == (1, "waking dev… 3s\nkuberde: dev went away\n")


def test_an_error_line_that_never_came_through_ssh_is_printed_once(tmp_path: Path) -> None:
    script = f'echo "kuberde: elsewhere" >> "$KUBERDE_ERROR_FILE"; {NOISE}; exit 255'
    assert _run(script, tmp_path) == (1, "kuberde: elsewhere\n")


def test_ssh_killed_by_a_signal_exits_128_plus_it(tmp_path: Path) -> None:
    assert _run("kill -TERM $$", tmp_path) == (128 + signal.SIGTERM, "")


def test_a_process_left_holding_the_pipe_does_not_keep_us_waiting(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = f"sleep 60 & echo $! > {pid_file}; echo bye >&2; exit 3"
    try:
        assert _run(script, tmp_path) == (3, "bye\n")
    finally:
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_the_error_file_is_gone_afterwards(tmp_path: Path) -> None:
    record = tmp_path / "named"
    code, _ = _run(f'echo "$KUBERDE_ERROR_FILE" > {record}', tmp_path)
    assert code == 0
    named = Path(record.read_text().strip())
    assert named.name == "error" and not named.parent.exists()
