"""Local processes of one workspace, kept running the way a pod keeps its containers running.

Each process runs in its own session (`start_new_session=True`), so its process group is the
unit we stop, like a container: stopping sends SIGTERM to the whole group and SIGKILL after a
grace period, and when the group's leader exits, whatever it left behind is killed before
the restart. Processes that leave the group (`setsid`, daemons that double fork) still carry
the run's `KUBERDE_RUN` environment variable and are signalled with it, and so are the
descendants of both (sshd's sessions, which get neither the group nor the marker).
Exits are restarted with exponential backoff; a run shorter than `min_uptime` counts as a
failure to start, and its output tail becomes `failure`, the text the controller puts into
the workspace's Error message.

Output goes straight from the child to an append-only log file (0600), never through Python,
so a chatty workload costs us nothing; header lines marked `LOG_MARK` record each start, exit
and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kuberde.local.accounts import Account, run_as_argv, terminal_group

__all__ = [
    "LOG_MARK",
    "RUN_MARKER",
    "ProcessKey",
    "ProcessSpec",
    "SupervisedProcess",
    "descendants_of",
    "follow_log",
    "free_loopback_port",
    "run_members",
    "tail_log",
]

LOG_MARK = "--- kuberde"
#: Set to a fresh value in each run's environment, inherited by everything the run starts.
RUN_MARKER = "KUBERDE_RUN"
_TAIL_LINES = 20
_TAIL_BYTES = 2048
_READ_CHUNK = 64 * 1024

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessSpec:
    """What to run. `env` is the child's whole environment (plus `RUN_MARKER`): nothing is
    inherited implicitly, so the caller decides which of its variables a workload sees.
    `run_as` is the account the child runs as (we must be root); `pass_fds` stay open in it;
    `netns` is the network namespace it runs in (entered with nsenter, as root);
    `resolv_conf`, if given, is what it sees as /etc/resolv.conf (bind-mounted in a mount
    namespace of its own, so nothing else sees it)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    log_path: Path
    run_as: Account | None = None
    pass_fds: tuple[int, ...] = ()
    netns: Path | None = None
    resolv_conf: Path | None = None

    def __post_init__(self) -> None:
        if not self.argv or not self.argv[0]:
            raise ValueError(f"process {self.name!r} has an empty command")
        if self.resolv_conf is not None and self.netns is None:
            raise ValueError(f"process {self.name!r}: a resolv.conf of its own needs a netns")


def tail_log(path: Path, lines: int = _TAIL_LINES, max_bytes: int = _TAIL_BYTES) -> str:
    """The last `lines` lines of a file, from at most its last `max_bytes` bytes.

    Reads only the end of the file, so a huge log costs no more than a small one. A line
    longer than the window keeps its end. The result has no trailing newline; a missing file
    gives "".
    """
    try:
        with path.open("rb") as file:
            return _tail(file.fileno(), 0, lines, max_bytes)
    except FileNotFoundError:
        return ""


def _tail(fd: int, start: int, lines: int, max_bytes: int) -> str:
    """Like `tail_log`, for the bytes of `fd` from offset `start` to its end."""
    if lines <= 0 or max_bytes <= 0:
        return ""
    end = os.fstat(fd).st_size
    begin = max(start, end - max_bytes)
    if begin == start:
        data = os.pread(fd, end - begin, begin) if end > begin else b""
    else:
        # The window starts inside the output. Read the byte before it too, to tell whether
        # the window starts a line; if not, drop that partial line unless it is all there is
        # (one huge line keeps its end). Never start inside a UTF-8 sequence.
        data = os.pread(fd, end - begin + 1, begin - 1)
        newline = data.find(b"\n")
        data = data[newline + 1 :] if 0 <= newline < len(data) - 1 else data[1:]
        data = data.lstrip(bytes(range(0x80, 0xC0)))
    text = data.decode("utf-8", errors="replace").removesuffix("\n")
    return "\n".join(text.split("\n")[-lines:]) if text else ""


def _output_since(path: Path, offset: int) -> str:
    """The tail of what a run wrote to its log after `offset`; "" if the log is gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return ""
    try:
        return _tail(fd, offset, _TAIL_LINES, _TAIL_BYTES)
    finally:
        os.close(fd)


async def follow_log(
    path: Path,
    *,
    from_end: bool = False,
    poll_interval: float = 0.2,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncGenerator[bytes, None]:
    """Yield bytes appended to `path`, forever, like `tail -f`.

    Waits for the file if it does not exist yet and starts over when it is truncated or
    replaced. Starts at the beginning, or at the current end with `from_end`. `sleep` waits
    between polls (replaceable, so tests can see that a poll found nothing new).
    """
    file = None
    position = 0
    try:
        while True:
            if file is None:
                try:
                    file = path.open("rb")
                except FileNotFoundError:
                    from_end = False  # everything in a file created later is new
                    await sleep(poll_interval)
                    continue
                position = os.fstat(file.fileno()).st_size if from_end else 0
                from_end = False
            opened = os.fstat(file.fileno())
            if opened.st_size < position:
                position = 0
            chunk = os.pread(file.fileno(), _READ_CHUNK, position)
            if chunk:
                position += len(chunk)
                yield chunk
                continue
            with contextlib.suppress(FileNotFoundError):
                current = path.stat()
                if (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
                    file.close()
                    file = None
                    continue
            await sleep(poll_interval)
    finally:
        if file is not None:
            file.close()


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (another process may take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _describe_exit(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def _command(spec: ProcessSpec) -> list[str]:
    """The argv to exec: in a network namespace, nsenter first; under another account,
    setpriv (after nsenter, which needs root). The command is looked up here then, so that a
    missing one is reported as such rather than as their exit."""
    if spec.run_as is None and spec.netns is None:
        return spec.argv
    command = spec.argv[0]
    found = command if os.sep in command else shutil.which(command, path=spec.env.get("PATH"))
    if found is None or not os.path.exists(found):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command)
    argv = (
        spec.argv
        if spec.run_as is None
        else run_as_argv(spec.run_as, spec.argv, terminal_group=terminal_group())
    )
    if spec.netns is None:
        return argv
    enter = ["nsenter", f"--net={spec.netns}", "--"]
    if spec.resolv_conf is not None:
        enter += [
            *("unshare", "--mount", "--propagation", "private", "--"),
            *("sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(spec.resolv_conf)),
        ]
    return [*enter, *argv]


def _describe_start_error(spec: ProcessSpec, exc: OSError) -> str:
    command = spec.argv[0]
    # uvloop reports a bad cwd like a missing command, so look at the directory ourselves.
    if spec.cwd is not None and (exc.filename == spec.cwd or not os.path.isdir(spec.cwd)):
        if not os.path.exists(spec.cwd):
            reason = "no such directory"
        elif not os.path.isdir(spec.cwd):
            reason = "not a directory"
        else:
            reason = exc.strerror or str(exc)
        return f"cannot start {spec.name}: working directory {spec.cwd!r}: {reason}"
    if isinstance(exc, FileNotFoundError):
        where = "" if os.sep in command else " on PATH"
        return f"cannot start {spec.name}: command {command!r} not found{where}"
    if isinstance(exc, PermissionError):
        return f"cannot start {spec.name}: command {command!r} is not executable"
    return f"cannot start {spec.name}: {command!r}: {exc.strerror or exc}"


#: A process as /proc names it for its lifetime: a reused pid has another start time.
ProcessKey = tuple[int, int]


@dataclass(frozen=True)
class _ProcEntry:
    key: ProcessKey
    parent: int
    group: int
    marked: bool


def _proc_entry(pid: int, entry: bytes) -> _ProcEntry | None:
    """One process's parent, group and start time from /proc, and whether it carries `entry`;
    None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # The command name (field 2) may hold spaces and parentheses: split after it.
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return None
    marked = False
    with contextlib.suppress(OSError), open(f"/proc/{pid}/environ", "rb") as environ:
        marked = entry in environ.read().split(b"\0")
    return _ProcEntry((pid, int(fields[19])), int(fields[1]), int(fields[2]), marked)


def run_members(pgid: int, marker: str) -> set[ProcessKey]:
    """Every live process of a run: its process group, the processes carrying its
    `RUN_MARKER`, and all their descendants (read from /proc: Linux only).

    Descendants count because a marker is not always inherited: sshd gives each session a
    fresh environment in a new session, so `ssh host sleep 60` has neither the group nor the
    marker, only a marked sshd as its ancestor."""
    entry = f"{RUN_MARKER}={marker}".encode()
    entries: list[_ProcEntry] = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit() and (found := _proc_entry(int(name), entry)) is not None:
                entries.append(found)
    return descendants_of(
        {item.key for item in entries if item.group == pgid or item.marked},
        {item.key: item.parent for item in entries},
    )


def descendants_of(roots: set[ProcessKey], parents: dict[ProcessKey, int]) -> set[ProcessKey]:
    """`roots` and every process below them, given each process's parent pid."""
    children: dict[int, list[ProcessKey]] = {}
    for key, parent in parents.items():
        children.setdefault(parent, []).append(key)
    found = set(roots)
    pending = list(roots)
    while pending:
        for child in children.get(pending.pop()[0], ()):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def _kill_run(pgid: int, marker: str, sig: signal.Signals, known: set[ProcessKey]) -> None:
    """Signal every process of the run (`run_members`) and those of `known` still alive, and
    add the signalled ones to `known`, so that what a run's processes left behind when they
    died (orphans, reparented to init) is still found by a later signal.

    Blocking (it reads every /proc/*/stat and environ): call it in a thread from the loop."""
    # Find them all before signalling any: a parent that dies first orphans its children.
    known |= run_members(pgid, marker)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for pid, started in sorted(known):
        current = _proc_entry(pid, b"")
        if current is None or current.key != (pid, started):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


class SupervisedProcess:
    """Keeps one `ProcessSpec` running from `start()` until `stop()`.

    Restart delays double from `backoff_initial` up to `backoff_max` while runs keep ending
    within `min_uptime`; a run that survives `min_uptime` resets them and clears `failure`.
    `on_change` is called synchronously on every transition (started, stable, exited, failed,
    stopped); it should only record or signal, and its exceptions are logged. `sleep` is the
    restart delay function, replaceable so tests can observe the backoff.
    """

    def __init__(
        self,
        spec: ProcessSpec,
        *,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        min_uptime: float = 5.0,
        on_change: Callable[[], object] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("backoff needs 0 < backoff_initial <= backoff_max")
        if min_uptime < 0:
            raise ValueError("min_uptime must not be negative")
        self.spec = spec
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._min_uptime = min_uptime
        self._on_change = on_change
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self._stop_requested = asyncio.Event()
        self._grace = 0.0
        self._proc: asyncio.subprocess.Process | None = None
        self._marker = ""
        #: The processes of the current run signalled so far (see `_kill_run`).
        self._members: set[ProcessKey] = set()
        self._started_at: datetime | None = None
        self._restarts = 0
        self._last_exit_code: int | None = None
        self._failure: str | None = None

    @property
    def pid(self) -> int | None:
        """The running process's pid, which is also its process group id."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def active(self) -> bool:
        """True from `start()` until `stop()` completes, including while waiting to restart."""
        return self._task is not None and not self._task.done()

    @property
    def restarts(self) -> int:
        """Relaunches since the last `start()`."""
        return self._restarts

    @property
    def last_exit_code(self) -> int | None:
        """The last run's exit status; negative for a signal (-9 is SIGKILL)."""
        return self._last_exit_code

    @property
    def started_at(self) -> datetime | None:
        """When the current run started; None while nothing runs."""
        return self._started_at

    @property
    def failure(self) -> str | None:
        """Why the last attempt did not stay up, with its output tail; None once a run is stable."""
        return self._failure

    def start(self) -> None:
        """Begin supervising in a task of the running loop; the launch happens in that task."""
        if self.active:
            raise RuntimeError(f"{self.spec.name} is already supervised")
        self._restarts = 0
        self._failure = None
        self._last_exit_code = None
        self._stop_requested = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._supervise(self._stop_requested), name=f"supervise {self.spec.name}"
        )
        self._task.add_done_callback(self._supervision_ended)

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds; no restart after this.

        Safe to call at any time, more than once, or before `start()`. Cancelling the caller
        does not interrupt the stop.
        """
        task = self._task
        if task is None or task.done():
            return
        self._grace = max(grace, 0.0)
        self._stop_requested.set()
        await asyncio.shield(task)

    async def hold_members(self) -> None:
        """Remember every process of the current run now, so that the next stop signals them
        even if their parents die first (an sshd session whose connection ends before)."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            self._members |= await asyncio.to_thread(run_members, proc.pid, self._marker)

    def _supervision_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("supervising %s failed", self.spec.name, exc_info=task.exception())

    def _changed(self) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change()
        except Exception:
            log.exception("on_change callback failed for %s", self.spec.name)

    def _note(self, text: str) -> None:
        """Append one of our own lines to the log; a log we cannot write must not stop us."""
        try:
            fd = os.open(self.spec.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.spec.log_path, exc)
            return
        try:
            os.write(fd, f"{LOG_MARK} {_timestamp()} {text}\n".encode())
        except OSError as exc:
            log.warning("cannot write %s: %s", self.spec.log_path, exc)
        finally:
            os.close(fd)

    async def _supervise(self, stop_requested: asyncio.Event) -> None:
        failures = 0
        try:
            while not stop_requested.is_set():
                stable = await self._run_once(stop_requested)
                if stop_requested.is_set():
                    break
                failures = 0 if stable else failures + 1
                delay = min(self._backoff_max, self._backoff_initial * 2.0 ** max(failures - 1, 0))
                self._note(f"restarting {self.spec.name} in {delay:g}s")
                if await self._interruptible(self._sleep(delay), stop_requested):
                    break
                self._restarts += 1
        except asyncio.CancelledError:
            # The event loop is shutting down without stop(): leave no process behind.
            proc = self._proc
            if proc is not None and proc.returncode is None:
                _kill_run(proc.pid, self._marker, signal.SIGKILL, self._members)
            raise
        self._note(f"stopped {self.spec.name}")
        self._changed()

    @staticmethod
    async def _interruptible(work: Awaitable[None], stop_requested: asyncio.Event) -> bool:
        """Run `work` unless a stop comes first; True if it did."""
        work_task = asyncio.ensure_future(work)
        stop_task = asyncio.ensure_future(stop_requested.wait())
        try:
            await asyncio.wait({work_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            work_task.cancel()
            stop_task.cancel()
        return stop_requested.is_set()

    async def _launch(self) -> tuple[asyncio.subprocess.Process, int] | None:
        """Start one run: the process and the log offset where its output begins, or None."""
        spec = self.spec
        try:
            spec.log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(spec.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            self._failure = f"cannot start {spec.name}: cannot open log {spec.log_path}: {exc}"
            return None
        try:
            os.fchmod(fd, 0o600)
            attempt = f" (restart {self._restarts})" if self._restarts else ""
            os.write(
                fd,
                f"{LOG_MARK} {_timestamp()} starting {spec.name}{attempt}: "
                f"{shlex.join(spec.argv)}\n".encode(),
            )
            offset = os.lseek(fd, 0, os.SEEK_END)
            self._marker = secrets.token_hex(8)
            self._members = set()
            proc = await asyncio.create_subprocess_exec(
                *_command(spec),
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                env={**spec.env, RUN_MARKER: self._marker},
                cwd=spec.cwd,
                start_new_session=True,
                pass_fds=spec.pass_fds,
            )
        except OSError as exc:
            self._failure = _describe_start_error(spec, exc)
            self._note(self._failure)
            return None
        finally:
            os.close(fd)
        return proc, offset

    async def _run_once(self, stop_requested: asyncio.Event) -> bool:
        """One run from launch to exit; True if it survived `min_uptime`."""
        started = await self._launch()
        if started is None:
            self._changed()
            return False
        proc, offset = started
        self._proc = proc
        self._started_at = datetime.now(UTC)
        began = time.monotonic()
        self._changed()

        exited = asyncio.ensure_future(proc.wait())
        stop_wait = asyncio.ensure_future(stop_requested.wait())
        stable = False
        try:
            while not exited.done():
                timeout = None if stable else max(0.0, began + self._min_uptime - time.monotonic())
                await asyncio.wait(
                    {exited, stop_wait}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if stop_wait.done() and not exited.done():
                    await self._terminate(proc.pid, exited)
                elif not exited.done() and not stable:
                    stable = True
                    self._failure = None
                    self._changed()
        finally:
            stop_wait.cancel()
        ran_for = time.monotonic() - began
        # Like a container: nothing the run started outlives its leader.
        await asyncio.to_thread(_kill_run, proc.pid, self._marker, signal.SIGKILL, self._members)
        code = exited.result()
        self._proc = None
        self._started_at = None
        self._last_exit_code = code
        summary = f"{self.spec.name} {_describe_exit(code)} after {ran_for:.1f}s"
        if not stable and not stop_requested.is_set():
            tail = _output_since(self.spec.log_path, offset)
            self._failure = f"{summary}: {tail}" if tail else f"{summary} (no output)"
        self._note(summary)
        if not stop_requested.is_set():
            self._changed()
        return stable

    async def _terminate(self, pgid: int, exited: asyncio.Future[int]) -> None:
        await asyncio.to_thread(_kill_run, pgid, self._marker, signal.SIGTERM, self._members)
        await asyncio.wait({exited}, timeout=self._grace)
        if not exited.done():
            self._note(f"{self.spec.name} ignored SIGTERM for {self._grace:g}s; sending SIGKILL")
            await asyncio.to_thread(_kill_run, pgid, self._marker, signal.SIGKILL, self._members)
            await exited
