"""The process supervisor with real processes, on both event loops `kuberde up` may run on."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import uvloop

from kuberde.local.supervisor import (
    LOG_MARK,
    ProcessSpec,
    SupervisedProcess,
    follow_log,
    free_loopback_port,
    tail_log,
)

WAIT = 10.0  # upper bound for any single wait; the tests finish far sooner
FAST = {"backoff_initial": 0.05, "backoff_max": 0.4}

Runner = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop

    def runner(scenario: Coroutine[Any, Any, None]) -> None:
        async def bounded() -> None:
            await asyncio.wait_for(scenario, 3 * WAIT)

        with asyncio.Runner(loop_factory=factory) as loop_runner:
            loop_runner.run(bounded())

    return runner


def spec(tmp_path: Path, *argv: str, cwd: str | None = None) -> ProcessSpec:
    return ProcessSpec(
        name="ws/workload",
        argv=list(argv),
        env=dict(os.environ),
        cwd=cwd if cwd is not None else str(tmp_path),
        log_path=tmp_path / "logs" / "ws.log",
    )


class Watcher:
    """Records each `on_change` call and lets a test wait for a condition on the process."""

    def __init__(self) -> None:
        self.process: SupervisedProcess | None = None
        self.starts: list[float] = []  # monotonic time of each launch
        self._changed = asyncio.Event()
        self._last_start: datetime | None = None

    def __call__(self) -> None:
        assert self.process is not None
        # started_at, not pid: a process that exits at once may be gone before we are told.
        started_at = self.process.started_at
        if started_at is not None and started_at != self._last_start:
            self.starts.append(time.monotonic())
        self._last_start = started_at
        self._changed.set()

    def supervise(self, process_spec: ProcessSpec, **options: Any) -> SupervisedProcess:
        self.process = SupervisedProcess(process_spec, on_change=self, **options)
        return self.process

    async def until(self, condition: Callable[[SupervisedProcess], bool]) -> None:
        assert self.process is not None
        async with asyncio.timeout(WAIT):
            while not condition(self.process):
                self._changed.clear()
                await self._changed.wait()


async def eventually(check: Callable[[], bool]) -> None:
    """Poll for something that has no event to wait on (files, /proc)."""
    async with asyncio.timeout(WAIT):
        while True:
            if check():
                return
            await asyncio.sleep(0.02)


def gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie nobody reaped counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def recording_sleep(delays: list[float], *, limit: int) -> Callable[[float], Awaitable[None]]:
    """A real sleep that records each delay and, from the `limit`-th on, waits for stop()."""

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) >= limit:
            await asyncio.Event().wait()
        await asyncio.sleep(delay)

    return sleep


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


def test_process_and_its_children_start_and_stop(run: Runner, tmp_path: Path) -> None:
    child_file = tmp_path / "child.pid"

    async def scenario() -> None:
        watcher = Watcher()
        process = watcher.supervise(
            spec(
                tmp_path,
                "sh",
                "-c",
                f"echo out; echo err >&2; sleep 100 & echo $! > {child_file}; wait",
            )
        )
        assert (process.pid, process.running, process.active) == (None, False, False)
        process.start()
        assert process.active
        await watcher.until(lambda p: p.running)
        await eventually(lambda: read_pid(child_file) is not None)
        leader, child = process.pid, read_pid(child_file)
        assert leader is not None and child is not None
        assert not gone(leader) and not gone(child)
        assert os.getpgid(child) == leader  # the child runs in the group we stop
        assert isinstance(process.started_at, datetime) and process.started_at.tzinfo is not None

        await process.stop(grace=WAIT)
        assert (process.pid, process.running, process.active) == (None, False, False)
        assert process.started_at is None
        assert process.last_exit_code == -signal.SIGTERM
        assert process.failure is None
        assert process.restarts == 0
        await eventually(lambda: gone(leader) and gone(child))
        await process.stop()  # a second stop is harmless

    run(scenario())
    log_path = tmp_path / "logs" / "ws.log"
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
    lines = log_path.read_text().splitlines()
    assert lines[0].startswith(f"{LOG_MARK} ")
    assert "starting ws/workload: sh -c" in lines[0]
    assert {"out", "err"} <= set(lines)
    assert lines[-1].endswith("stopped ws/workload")


@pytest.mark.parametrize(
    ("argv", "cwd", "expected"),
    [
        (["kuberde-no-such-command"], None, "command 'kuberde-no-such-command' not found on PATH"),
        (["./not-executable"], None, "command './not-executable' is not executable"),
        (
            ["sleep", "100"],
            "missing-dir",
            "working directory '{tmp}/missing-dir': no such directory",
        ),
        (
            ["sleep", "100"],
            "not-executable",
            "working directory '{tmp}/not-executable': not a directory",
        ),
    ],
)
def test_failure_to_start_is_explained(
    run: Runner, tmp_path: Path, argv: list[str], cwd: str | None, expected: str
) -> None:
    (tmp_path / "not-executable").write_text("#!/bin/sh\n")

    async def scenario() -> None:
        watcher = Watcher()
        process = watcher.supervise(
            spec(tmp_path, *argv, cwd=str(tmp_path / cwd) if cwd else None),
            backoff_initial=WAIT,
            backoff_max=WAIT,
        )
        process.start()
        await watcher.until(lambda p: p.failure is not None)
        assert process.failure == f"cannot start ws/workload: {expected.format(tmp=tmp_path)}"
        assert (process.running, process.pid, process.last_exit_code) == (False, None, None)
        await process.stop()

    run(scenario())
    assert f"{LOG_MARK} " in (tmp_path / "logs" / "ws.log").read_text()


def test_crash_loop_keeps_output_tail_and_backs_off(run: Runner, tmp_path: Path) -> None:
    script = "echo starting up; echo 'fatal: port 2222 in use' >&2; exit 1"
    delays: list[float] = []

    async def scenario() -> None:
        watcher = Watcher()
        process = watcher.supervise(
            spec(tmp_path, "sh", "-c", script),
            min_uptime=WAIT,
            sleep=recording_sleep(delays, limit=6),
            **FAST,
        )
        process.start()
        await eventually(lambda: len(delays) == 6)
        await process.stop()
        assert process.failure is not None
        assert process.failure.startswith("ws/workload exited with code 1 after ")
        assert process.failure.endswith(": starting up\nfatal: port 2222 in use")
        assert process.last_exit_code == 1
        assert delays == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]
        gaps = [later - earlier for earlier, later in itertools.pairwise(watcher.starts)]
        assert len(gaps) >= 5
        for gap, delay in zip(gaps, delays, strict=False):
            assert gap >= delay

    run(scenario())
    log_text = (tmp_path / "logs" / "ws.log").read_text()
    assert "starting ws/workload (restart 5): sh -c" in log_text
    assert "restarting ws/workload in 0.4s" in log_text


def test_stable_run_clears_failure_and_resets_backoff(run: Runner, tmp_path: Path) -> None:
    # Runs 1 and 2 fail at once, run 3 stays up past min_uptime then exits 0, later runs fail.
    script = (
        "n=$(( $(cat count 2>/dev/null || echo 0) + 1 )); echo $n > count; "
        'if [ "$n" -eq 3 ]; then '
        "touch stable; while [ -e stable ]; do sleep 0.02; done; exit 0; fi; "
        'echo "run $n failed" >&2; exit 2'
    )
    delays: list[float] = []

    async def scenario() -> None:
        watcher = Watcher()
        process = watcher.supervise(
            spec(tmp_path, "sh", "-c", script),
            min_uptime=0.2,
            sleep=recording_sleep(delays, limit=4),
            **FAST,
        )
        process.start()
        await watcher.until(lambda p: p.running and p.restarts == 2)
        assert process.failure is not None and process.failure.endswith("run 2 failed")
        await watcher.until(lambda p: p.failure is None)
        assert process.running
        (tmp_path / "stable").unlink()  # run 3 exits after being stable
        await eventually(lambda: len(delays) == 4)
        await process.stop()
        assert process.failure is not None and process.failure.endswith("run 4 failed")
        # Failures double the delay; the stable run starts the sequence over.
        assert delays == [0.05, 0.1, 0.05, 0.05]

    run(scenario())


def test_leftover_children_are_killed_when_the_leader_exits(run: Runner, tmp_path: Path) -> None:
    child_file = tmp_path / "child.pid"

    async def scenario() -> None:
        watcher = Watcher()
        process = watcher.supervise(
            spec(tmp_path, "sh", "-c", f"sleep 100 & echo $! > {child_file}; exit 0"),
            backoff_initial=WAIT,
            backoff_max=WAIT,
        )
        process.start()
        await watcher.until(lambda p: p.last_exit_code == 0)
        child = read_pid(child_file)
        assert child is not None
        await eventually(lambda: gone(child))
        await process.stop()

    run(scenario())


def test_processes_that_leave_the_group_are_stopped_with_it(run: Runner, tmp_path: Path) -> None:
    child_file = tmp_path / "child.pid"
    escaped: list[int] = []

    async def scenario() -> None:
        watcher = Watcher()
        process = watcher.supervise(
            spec(tmp_path, "sh", "-c", f"setsid sleep 100 & echo $! > {child_file}; wait")
        )
        process.start()
        await watcher.until(lambda p: p.running)
        await eventually(lambda: read_pid(child_file) is not None)
        child = read_pid(child_file)
        assert child is not None
        escaped.append(child)
        await eventually(lambda: os.getsid(child) == child)  # its own session: not our group
        assert os.getpgid(child) != process.pid
        await process.stop(grace=WAIT)
        await eventually(lambda: gone(child))

    try:
        run(scenario())
    finally:
        for pid in escaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_sigterm_ignored_means_sigkill_after_grace(run: Runner, tmp_path: Path) -> None:
    program = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(100)\n"
    )
    log_path = tmp_path / "logs" / "ws.log"

    async def scenario() -> None:
        watcher = Watcher()
        process = watcher.supervise(spec(tmp_path, sys.executable, "-c", program))
        process.start()
        await eventually(lambda: "ready" in tail_log(log_path).splitlines())
        leader = process.pid
        assert leader is not None
        await process.stop(grace=0.2)
        assert process.last_exit_code == -signal.SIGKILL
        assert not process.running
        await eventually(lambda: gone(leader))

    run(scenario())
    assert "ignored SIGTERM for 0.2s; sending SIGKILL" in log_path.read_text()


def test_stop_during_backoff_prevents_restart(run: Runner, tmp_path: Path) -> None:
    async def scenario() -> None:
        backing_off = asyncio.Event()

        async def observed_sleep(delay: float) -> None:
            backing_off.set()
            await asyncio.sleep(delay)

        watcher = Watcher()
        process = watcher.supervise(
            spec(tmp_path, "sh", "-c", "exit 1"),
            backoff_initial=WAIT,
            backoff_max=WAIT,
            sleep=observed_sleep,
        )
        process.start()
        async with asyncio.timeout(WAIT):
            await backing_off.wait()
        await process.stop()
        assert not process.active
        assert process.restarts == 0
        assert len(watcher.starts) == 1

    run(scenario())
    log_text = (tmp_path / "logs" / "ws.log").read_text()
    assert log_text.count(" starting ws/workload") == 1
    assert log_text.rstrip().endswith("stopped ws/workload")


def test_stop_right_after_start_launches_nothing_and_start_works_again(
    run: Runner, tmp_path: Path
) -> None:
    async def scenario() -> None:
        watcher = Watcher()
        process = watcher.supervise(spec(tmp_path, "sleep", "100"))
        process.start()
        with pytest.raises(RuntimeError, match="already supervised"):
            process.start()
        await process.stop()
        assert watcher.starts == []
        process.start()
        await watcher.until(lambda p: p.running)
        await process.stop()
        assert len(watcher.starts) == 1

    run(scenario())


def test_cancelled_supervision_leaves_no_process(run: Runner, tmp_path: Path) -> None:
    """A loop shut down without stop() (Ctrl-C in `kuberde up`) must not leak the workload."""
    leaders: list[int] = []

    async def scenario() -> None:
        watcher = Watcher()
        process = watcher.supervise(spec(tmp_path, "sleep", "100"))
        process.start()
        await watcher.until(lambda p: p.running)
        assert process.pid is not None
        leaders.append(process.pid)

    run(scenario())  # the runner cancels the still-running supervision task on exit
    assert leaders
    deadline = time.monotonic() + WAIT
    while not gone(leaders[0]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gone(leaders[0])


def test_callback_errors_do_not_break_supervision(run: Runner, tmp_path: Path) -> None:
    async def scenario() -> None:
        calls = 0

        def broken() -> None:
            nonlocal calls
            calls += 1
            raise RuntimeError("callback bug")

        process = SupervisedProcess(spec(tmp_path, "sleep", "100"), on_change=broken)
        process.start()
        await eventually(lambda: process.running)
        await process.stop()
        assert calls >= 2
        assert not process.running

    run(scenario())


def test_empty_command_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty command"):
        spec(tmp_path)


def test_backoff_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SupervisedProcess(spec(tmp_path, "true"), backoff_initial=0)
    with pytest.raises(ValueError):
        SupervisedProcess(spec(tmp_path, "true"), backoff_initial=2, backoff_max=1)
    with pytest.raises(ValueError):
        SupervisedProcess(spec(tmp_path, "true"), min_uptime=-1)


# ---- tail_log ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "lines", "max_bytes", "expected"),
    [
        (b"", 20, 2048, ""),
        (b"\n", 20, 2048, ""),
        (b"one", 20, 2048, "one"),
        (b"one\ntwo\nthree", 2, 2048, "two\nthree"),
        (b"one\ntwo\nthree\n", 2, 2048, "two\nthree"),
        (b"one\ntwo\n", 0, 2048, ""),
        (b"".join(b"line %d\n" % i for i in range(100)), 3, 2048, "line 97\nline 98\nline 99"),
        # The window cuts "first" in half: the partial line is dropped ...
        (b"first\nsecond\n", 20, 9, "second"),
        # ... but a window that starts exactly at a line keeps that line.
        (b"first\nsecond\n", 20, 7, "second"),
        (b"abc\ndef\n", 20, 4, "def"),
        # One line longer than the window keeps its end.
        (b"x" * 10_000, 20, 2048, "x" * 2048),
        (b"y" * 10_000 + b"\n", 20, 2048, "y" * 2047),
        (b"x" * 10_000 + b"\nshort\n", 20, 2048, "short"),
        # Never starts inside a multi-byte character.
        ("é".encode() * 3000, 20, 2047, "é" * 1023),
        (b"\xff\xfe broken\n", 20, 2048, "\ufffd\ufffd broken"),
    ],
)
def test_tail_log(
    tmp_path: Path, content: bytes, lines: int, max_bytes: int, expected: str
) -> None:
    path = tmp_path / "log"
    path.write_bytes(content)
    assert tail_log(path, lines=lines, max_bytes=max_bytes) == expected


def test_tail_log_of_missing_file_is_empty(tmp_path: Path) -> None:
    assert tail_log(tmp_path / "nothing-yet.log") == ""


def test_tail_log_defaults_bound_the_result(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"".join(b"%05d %s\n" % (i, b"z" * 200) for i in range(1000)))
    tail = tail_log(path)
    assert len(tail.encode()) <= 2048
    assert tail.splitlines()[-1].startswith("00999 ")
    assert len(tail.splitlines()) <= 20


# ---- follow_log ----------------------------------------------------------------------------


def _observed_polls() -> tuple[asyncio.Event, Callable[[float], Awaitable[None]]]:
    """A sleep for `follow_log` that tells the test it has polled once without news."""
    polled = asyncio.Event()

    async def poll(delay: float) -> None:
        polled.set()
        await asyncio.sleep(delay)

    return polled, poll


async def test_follow_log_waits_for_the_file_and_follows_appends(tmp_path: Path) -> None:
    path = tmp_path / "later.log"
    received = bytearray()
    grown = asyncio.Event()
    polled, poll = _observed_polls()

    async def follow() -> None:
        async for chunk in follow_log(path, poll_interval=0.02, sleep=poll):
            received.extend(chunk)
            grown.set()

    async def until(expected: bytes) -> None:
        async with asyncio.timeout(WAIT):
            while bytes(received) != expected:
                grown.clear()
                await grown.wait()

    task = asyncio.create_task(follow())
    try:
        await asyncio.wait_for(polled.wait(), WAIT)  # it polled for a file not there yet
        path.write_bytes(b"hello\n")
        await until(b"hello\n")
        with path.open("ab") as file:
            file.write(b"more")
        await until(b"hello\nmore")
        path.write_bytes(b"new\n")  # truncated and rewritten: start over
        await until(b"hello\nmorenew\n")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_follow_log_from_end_skips_existing_and_follows_replacement(tmp_path: Path) -> None:
    path = tmp_path / "ws.log"
    path.write_bytes(b"old output\n")
    polled, poll = _observed_polls()
    stream = follow_log(path, from_end=True, poll_interval=0.02, sleep=poll)
    first = asyncio.ensure_future(anext(stream))
    await asyncio.wait_for(polled.wait(), WAIT)  # it read to the end and found nothing new
    assert not first.done()
    with path.open("ab") as file:
        file.write(b"fresh\n")
    assert await asyncio.wait_for(first, WAIT) == b"fresh\n"
    replacement = tmp_path / "ws.log.new"
    replacement.write_bytes(b"after rotation, longer than before\n")
    replacement.replace(path)
    assert await asyncio.wait_for(anext(stream), WAIT) == b"after rotation, longer than before\n"
    await stream.aclose()


def test_free_loopback_port_can_be_bound() -> None:
    port = free_loopback_port()
    assert 0 < port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
