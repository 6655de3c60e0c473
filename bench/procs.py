"""Child processes of a benchmark run, and what the kernel says about them.

Every child gets its own process group and is stopped when the run ends, however it ends
(normal exit, an exception, Ctrl-C, SIGTERM); the kernel sends it SIGTERM if the benchmark
itself is killed (PR_SET_PDEATHSIG). Children log to files, so a chatty child can never
block on a full pipe, and a failed start can quote the log.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = [
    "Child",
    "Processes",
    "StartError",
    "accepts",
    "cpu_seconds",
    "descendants",
    "free_port",
    "rss_kib",
    "wait_for",
    "wait_for_port",
]

_PR_SET_PDEATHSIG = 1
_LOG_TAIL = 2000


class StartError(RuntimeError):
    """A child that did not become ready; the message carries the tail of its log."""


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def check_running(self) -> None:
        if self.popen.poll() is not None:
            raise StartError(f"{self.name} exited with {self.popen.returncode}{self.tail()}")

    def wait_for_log(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first match of `pattern` in the child's log, waiting up to `timeout` s."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log_text())
            if match is not None:
                return match
            self.check_running()
            if time.monotonic() > deadline:
                raise StartError(f"{self.name}: no {pattern!r} within {timeout:g}s{self.tail()}")
            time.sleep(0.01)

    def tail(self) -> str:
        text = self.log_text()[-_LOG_TAIL:].rstrip()
        return f"\n--- {self.log_path} ---\n{text}" if text else ""


def _die_with_parent() -> None:
    """preexec hook: SIGTERM this child when the benchmark dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _alive(pid: int, started: int) -> bool:
    """Whether `pid` is still the process that started at `started` (not a reused pid)."""
    stat = _stat_fields(pid)
    return stat is not None and int(stat[19]) == started and stat[0] != "Z"


class Processes:
    """Starts children and guarantees their end; use as a context manager."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._children: list[Child] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        log_path = self._log_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child = Child(name, popen, log_path)
        self._children.append(child)
        return child

    def stop(self, child: Child, grace: float = 10.0) -> None:
        """SIGTERM the child's group, then SIGKILL it and any descendant that is left."""
        if child in self._children:
            self._children.remove(child)
        family = [(pid, started) for pid, started in _tree(child.pid)]
        if child.popen.poll() is None:
            _kill_group(child.pid, signal.SIGTERM)
            try:
                child.popen.wait(grace)
            except subprocess.TimeoutExpired:
                _kill_group(child.pid, signal.SIGKILL)
                child.popen.wait(5.0)
        _kill_group(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + grace
        for pid, started in family:
            while _alive(pid, started) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _alive(pid, started):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for child in reversed(list(self._children)):
            self.stop(child)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rfind(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (e.g. sshd's per-connection children)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _tree(pid: int) -> Iterable[tuple[int, int]]:
    for member in [pid, *descendants(pid)]:
        fields = _stat_fields(member)
        if fields is not None:
            yield member, int(fields[19])


def cpu_seconds(pid: int) -> float:
    """CPU time of a live process's threads, in seconds: the scheduler's nanosecond count
    (/proc/PID/task/*/schedstat), where /proc/PID/stat counts clock ticks (10 ms), too
    coarse for the CPU of one round trip. A thread that has exited no longer counts."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    total = 0
    for task in tasks:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def rss_kib(pid: int) -> int:
    """Resident set size of a live process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ProcessLookupError(pid)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    watch: Sequence[Child] = (),
    interval: float = 0.02,
) -> None:
    """Poll `check` until it is true; StartError naming `what` after `timeout` seconds, or
    at once (with its log) if a child in `watch` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while not check():
        for child in watch:
            child.check_running()
        if time.monotonic() > deadline:
            tails = "".join(child.tail() for child in watch)
            raise StartError(f"timed out after {timeout:g}s waiting for {what}{tails}")
        time.sleep(interval)


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout: float, what: str) -> None:
    wait_for(lambda: accepts(port), timeout, what)
