"""Helpers for end-to-end tests of `kuberde up`: real processes, real sockets, real OpenSSH.

`KubeRDE` owns one throwaway installation (state directory, CLI config, home directory, and
as root the homes of the workspace accounts) and the `kuberde up` process running on it.
Every command is the installed `kuberde` script in a subprocess with a timeout, so the tests
see exactly what a user sees. Closing it stops `kuberde up` with SIGTERM and proves that no
process it started is left behind.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import aiohttp.abc
import yaml

from kuberde.local.accounts import Account, Accounts, run_as_argv
from kuberde.local.netns import installation_tag, remove_leftovers
from kuberde.local.sshd import prepare_sshd
from kuberde.local.supervisor import RUN_MARKER
from kuberde.testing.python import IMPORT_PATH as UP_PYTHONPATH
from kuberde.testing.python import SHARED_PYTHON as UP_PYTHON
from kuberde.testing.python import WORKLOAD_PYTHON

#: Workloads run as the owner's account under root, maybe with a system Python: they get
#: our import path (JupyterLab, aiohttp) explicitly, since nothing is inherited.
WORKLOAD_ENV = {} if sys.executable == WORKLOAD_PYTHON else {"PYTHONPATH": UP_PYTHONPATH}

__all__ = [
    "CLI_TIMEOUT",
    "ISOLATED",
    "KUBERDE",
    "UP_PYTHON",
    "UP_PYTHONPATH",
    "WAIT",
    "WORKLOAD_ENV",
    "WORKLOAD_PYTHON",
    "KubeRDE",
    "Loopback",
    "ProcessId",
    "Row",
    "SshServer",
    "current_owner",
    "descendants",
    "echo_command",
    "free_port",
    "running_demo",
    "user_token",
    "wait_for_text",
    "wait_until",
    "workspace",
    "write_documents",
]

#: The console script installed next to the interpreter running the tests.
KUBERDE = str(Path(sys.executable).with_name("kuberde"))
#: Upper bound for any single wait; a healthy run needs a small fraction of it.
WAIT = 30.0
CLI_TIMEOUT = 30.0
_UP_BANNER = re.compile(r"KubeRDE is up: gateway (http://\S+)")
_START_HEADER = re.compile(r"^--- kuberde (\S+) starting ", re.MULTILINE)
_POLL = 0.1
#: As root, `kuberde up` runs each owner's workloads as an account of their own.
ISOLATED = os.geteuid() == 0
#: Homes of the workspace accounts go below this when root: not under /tmp, which is world
#: writable (sshd's StrictModes refuses such paths) and where pytest's 0700 directories are.
_HOMES_BASE = Path("/var/lib/kuberde-e2e")


_handed_out: set[int] = set()


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port that is free now and was not handed out before.

    Taken from below the ephemeral range when there is room, so that no outgoing connection
    of a busy machine grabs it before the workload binds it.
    """
    floor = _ephemeral_floor()
    for _ in range(200):
        with socket.socket() as probe:
            candidate = random.randrange(10000, floor) if floor > 11000 else 0
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port: int = probe.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise AssertionError("no free loopback port found")


class Loopback(aiohttp.abc.AbstractResolver):
    """`*.localhost` is loopback (RFC 6761), as browsers and curl resolve it."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        assert host == "localhost" or host.endswith(".localhost"), host
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


# ---- processes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessId:
    """A pid plus its kernel start time, so a recycled pid is never mistaken for ours."""

    pid: int
    start_time: str

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        stat = _stat(pid)
        return None if stat is None else cls(pid, stat[2])

    @property
    def alive(self) -> bool:
        stat = _stat(self.pid)
        return stat is not None and stat[2] == self.start_time and stat[0] not in "ZX"

    def describe(self) -> str:
        try:
            raw = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return str(self.pid)
        command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        return f"{self.pid} ({command})"


def _stat(pid: int) -> tuple[str, int, str] | None:
    """(state, ppid, start time) from /proc/PID/stat; None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), fields[19]


def descendants(root: int) -> set[ProcessId]:
    """Every live process below `root` in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                children.setdefault(stat[1], []).append(int(entry))
    found: set[ProcessId] = set()
    pending = list(children.get(root, []))
    while pending:
        pid = pending.pop()
        process = ProcessId.of(pid)
        if process is not None and process.alive:
            found.add(process)
        pending.extend(children.get(pid, []))
    return found


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def command_line(pid: int) -> list[str]:
    """The argv of process `pid`; [] if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout:g}s")
        time.sleep(_POLL)


def wait_for_text(path: Path, pattern: str, timeout: float = WAIT) -> re.Match[str]:
    """Poll a file a process writes until `pattern` matches its content."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        match = re.search(pattern, text)
        if match is not None:
            return match
        if time.monotonic() > deadline:
            raise AssertionError(f"no {pattern!r} in {path} within {timeout:g}s: {text!r}")
        time.sleep(_POLL)


# ---- workspace documents -------------------------------------------------------------------

#: A threaded TCP echo server: echoes until the client's EOF, then half-closes.
_ECHO_SERVER = """
import socket, socketserver, sys
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)
        self.request.shutdown(socket.SHUT_WR)
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
server = Server(("127.0.0.1", int(sys.argv[1])), Echo)
print("echo server ready:", sys.argv[2], flush=True)
server.serve_forever()
"""


def echo_command(port: int, marker: str) -> list[str]:
    """A workload that prints `marker` and echoes TCP on `port`."""
    return [WORKLOAD_PYTHON, "-u", "-c", _ECHO_SERVER, str(port), marker]


def workspace(
    name: str,
    command: Sequence[str],
    *,
    ttl: str | int = 0,
    local_port: int | None = None,
    workspace_port: int = 7000,
    owner: str | None = None,
    apps: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """An RDEAgent whose workload listens on `local_port`, seen as `workspace_port`, with
    the web `apps` of `spec.apps` (if any)."""
    metadata: dict[str, Any] = {"name": name}
    if local_port is not None:
        metadata["annotations"] = {"kuberde.io/local-ports": f"{workspace_port}={local_port}"}
    spec: dict[str, Any] = {
        "owner": owner or current_owner(),
        "ttl": ttl,
        "localTarget": f"127.0.0.1:{workspace_port}",
        "workload": {"command": list(command)},
    }
    if apps:
        spec["apps"] = list(apps)
    return {"apiVersion": "kuberde.io/v1", "kind": "RDEAgent", "metadata": metadata, "spec": spec}


def current_owner() -> str:
    """The owner `kuberde up` mints the CLI token for: the OS user as a DNS label."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", getpass.getuser().lower()).strip("-")
    return cleaned[:30] or "user"


def write_documents(path: Path, documents: Sequence[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(list(documents), sort_keys=False))
    return path


# ---- OpenSSH -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SshServer:
    """A generated sshd setup: its workload command, the key it accepts, a known_hosts file."""

    port: int
    command: list[str]
    client_key: Path
    known_hosts: Path
    host_key_line: str
    user: str

    def trust(self, host: str) -> None:
        """Let the client accept the server's key under `host` (alias or `[127.0.0.1]:P`)."""
        with self.known_hosts.open("a") as file:
            file.write(f"{host} {self.host_key_line}\n")

    def client_options(self) -> list[str]:
        """ssh options that use only our files: no user config, key or known_hosts."""
        return [
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"IdentityFile={self.client_key}",
            "-o",
            "LogLevel=ERROR",
        ]

    def via_connect(self, name: str, remote: Sequence[str]) -> list[str]:
        """`ssh` to workspace `name` with `kuberde connect` as its ProxyCommand."""
        alias = f"{name}.kuberde"
        proxy = f"{shlex.quote(KUBERDE)} connect {name} --port 22 --kind ssh"
        return [
            "ssh",
            *self.client_options(),
            "-o",
            f"ProxyCommand={proxy}",
            "-o",
            f"HostKeyAlias={alias}",
            f"{self.user}@{alias}",
            *remote,
        ]

    def direct(self, port: int, remote: Sequence[str]) -> list[str]:
        """Plain `ssh -p PORT user@127.0.0.1`, as the runbook types it."""
        return ["ssh", *self.client_options(), "-p", str(port), f"{self.user}@127.0.0.1", *remote]


# ---- kuberde up ----------------------------------------------------------------------------


def _clean_environment() -> dict[str, str]:
    """Our environment without settings that would point the CLI or agents elsewhere."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KUBERDE_", "AGENT_", "XDG_"))
        and key not in ("SERVER_URL", "LOCAL_TARGET", "ALLOWED_PORTS", "PORT_MAP")
    }


Row = dict[str, Any]


class KubeRDE:
    """One installation under `root` and its `kuberde up` process (at most one at a time)."""

    def __init__(
        self,
        root: Path,
        *,
        sweep_interval: float = 0.2,
        default_paths: bool = False,
        run_as: Account | None = None,
        wrapper: Sequence[str] = (),
    ) -> None:
        """`default_paths`: as a new user runs it, with every file where it goes by default
        under the (empty) home, and the venv's `kuberde` on PATH. `run_as`: run `kuberde up`
        as that (unprivileged) account, which owns `root`. `wrapper`: a command that execs
        `kuberde up` (e.g. setpriv dropping a capability)."""
        self.root = root
        self.home = root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.default_paths = default_paths
        self.state_dir = self.home / ".local/state/kuberde" if default_paths else root / "state"
        self.run_as = run_as
        self.wrapper = list(wrapper)
        self.isolated = ISOLATED and run_as is None
        if run_as is not None:
            for owned in (root, self.home):
                os.chown(owned, run_as.uid, run_as.gid)
        if self.isolated:
            _HOMES_BASE.mkdir(mode=0o755, exist_ok=True)
            self.homes = Path(tempfile.mkdtemp(prefix="homes-", dir=_HOMES_BASE))
            self.homes.chmod(0o755)
        else:
            self.homes = root / "homes"
        self._sshd_count = 0
        self.sweep_interval = sweep_interval
        # HOME too: the demo must not authorise the keys of whoever runs the tests, and the
        # CLI must see the same (empty) home as `kuberde up` to pick the same SSH identity.
        self.env = _clean_environment() | {"HOME": str(self.home)}
        if default_paths:
            # No agent keys either: what works must work with the keys KubeRDE chose.
            self.env = {k: v for k, v in self.env.items() if k != "SSH_AUTH_SOCK"}
            path = os.environ.get("PATH", "/usr/bin:/bin")
            self.env |= {"PATH": f"{Path(KUBERDE).parent}{os.pathsep}{path}"}
            self.env |= {"USER": getpass.getuser()}
        else:
            self.env |= {"KUBERDE_CONFIG": str(root / "cli-config.json")}
        self.url: str | None = None
        self._up: subprocess.Popen[bytes] | None = None
        self._up_log: Path | None = None
        self._runs = 0
        #: Every workspace process we have seen, checked to be gone when `kuberde up` stops.
        self._seen: set[ProcessId] = set()
        #: Their runs' RUN_MARKER values, which find processes that left the tree.
        self._run_markers: set[str] = set()

    def __enter__(self) -> KubeRDE:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._up is not None:
                self.stop_up()
        finally:
            if self.isolated:
                # A failed test may leave a crashed run's namespaces (and what runs in them).
                if shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin") is not None:
                    remove_leftovers(installation_tag(self.state_dir), "ip")
                shutil.rmtree(self.homes, ignore_errors=True)

    # ---- the `kuberde up` process --------------------------------------------------------

    def start_up(self, *files: Path, extra_env: Mapping[str, str] | None = None) -> str:
        """Run `kuberde up` (the demo when no file is given); return the gateway URL."""
        assert self._up is None, "kuberde up is already running"
        self._runs += 1
        self._up_log = self.root / f"up-{self._runs}.stderr"
        argv, env = [KUBERDE], dict(extra_env or {})
        if self.run_as is not None:
            assert UP_PYTHON is not None, "no Python here that other accounts may run"
            argv = run_as_argv(self.run_as, [UP_PYTHON, "-m", "kuberde"], terminal_group=None)
            env["PYTHONPATH"] = UP_PYTHONPATH
        argv = [*self.wrapper, *argv, "up", "--listen", "127.0.0.1:0"]
        if not self.default_paths:
            argv += ["--state-dir", str(self.state_dir)]
        argv += ["--sweep-interval", str(self.sweep_interval), "--homes-dir", str(self.homes)]
        for path in files:
            argv += ["-f", str(path)]
        with self._up_log.open("wb") as stderr:
            self._up = subprocess.Popen(
                argv,
                env=self.env | env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + WAIT
        while (match := _UP_BANNER.search(self.up_stderr())) is None:
            if self._up.poll() is not None:
                self._up = None
                raise AssertionError(f"kuberde up exited early:\n{self.up_stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"kuberde up did not start:\n{self.up_stderr()}")
            time.sleep(_POLL)
        self.url = match.group(1)
        return self.url

    def diagnostics(self) -> str:
        """`kuberde up`'s stderr and every workspace log, for a failing test's report."""
        parts = []
        for path in sorted(self.root.glob("up-*.stderr")) + sorted(
            (self.state_dir / "logs").glob("*.log")
        ):
            parts.append(f"===== {path.name}\n{path.read_text(errors='replace')[-8000:]}")
        return "\n".join(parts)

    def up_stderr(self) -> str:
        return "" if self._up_log is None else self._up_log.read_text(errors="replace")

    @property
    def up_pid(self) -> int:
        assert self._up is not None, "kuberde up is not running"
        return self._up.pid

    def stop_up(self, sent: signal.Signals = signal.SIGTERM) -> None:
        """Signal `kuberde up` (SIGTERM; SIGHUP when its terminal closes, SIGINT for Ctrl-C);
        it must exit 0 and leave no workspace process running."""
        process = self._up
        assert process is not None, "kuberde up is not running"
        self._up = None
        self._see(descendants(process.pid))
        process.send_signal(sent)
        try:
            code = process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=WAIT)
            self._kill_leftovers()
            raise AssertionError(f"kuberde up ignored {sent.name}:\n{self.up_stderr()}") from None
        deadline = time.monotonic() + 10.0
        while any(p.alive for p in self._seen) and time.monotonic() < deadline:
            time.sleep(_POLL)
        self._see(self._marked())
        leftovers = self._kill_leftovers()
        assert not leftovers, f"processes left after kuberde up stopped: {leftovers}"
        assert code == 0, f"kuberde up exited {code}:\n{self.up_stderr()}"
        assert "Traceback" not in self.up_stderr(), self.up_stderr()

    def crash_up(self) -> set[ProcessId]:
        """SIGKILL `kuberde up`, as a crash would; return what it left running, for the
        caller to watch and then `kill`."""
        process = self._up
        assert process is not None, "kuberde up is not running"
        self._up = None
        self._see(descendants(process.pid))
        process.kill()
        process.wait(timeout=WAIT)
        self._see(self._marked())
        return {p for p in self._seen if p.alive}

    def kill(self, processes: Iterable[ProcessId]) -> None:
        for process in processes:
            if process.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)

    def _see(self, processes: Iterable[ProcessId]) -> None:
        for process in processes:
            self._seen.add(process)
            marker = _environ(process.pid).get(RUN_MARKER)
            if marker:
                self._run_markers.add(marker)

    def _marked(self) -> set[ProcessId]:
        """Processes of the runs we saw, even ones that left the tree."""
        found: set[ProcessId] = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit() and _environ(int(entry)).get(RUN_MARKER) in self._run_markers:
                process = ProcessId.of(int(entry))
                if process is not None and process.alive:
                    found.add(process)
        return found

    def _kill_leftovers(self) -> list[str]:
        leftovers = [p.describe() for p in self._seen if p.alive]
        self.kill(self._seen)
        return leftovers

    # ---- accounts and sshd ---------------------------------------------------------------

    def account(self, owner: str | None = None) -> Account:
        """The account `kuberde up` runs `owner`'s workloads as (created now if need be)."""
        if self.run_as is not None:
            return self.run_as
        return Accounts.for_this_process(self.homes).for_owner(owner or current_owner())

    def make_sshd(self, owner: str | None = None) -> SshServer:
        """sshd files for a workload of `owner` on a free loopback port: the server's in the
        account's home (its own, StrictModes on), the client's key and known_hosts ours."""
        self._sshd_count += 1
        account = self.account(owner)
        client = self.root / f"ssh-client-{self._sshd_count}"
        server = account.home / f"sshd-{self._sshd_count}" if self.isolated else client
        files = prepare_sshd(
            server,
            free_port(),
            account=account,
            client_directory=client,
            comment="kuberde-e2e",
            strict_modes=self.isolated,
        )
        known_hosts = client / "known_hosts"
        known_hosts.write_text("")
        return SshServer(
            port=files.port,
            command=files.argv,
            client_key=files.client_key,
            known_hosts=known_hosts,
            host_key_line=files.known_hosts_line("").strip(),
            user=account.name,
        )

    # ---- the CLI -------------------------------------------------------------------------

    def kuberde(
        self, *args: str, timeout: float = CLI_TIMEOUT, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `kuberde ARGS` to completion; the caller checks the exit code."""
        return subprocess.run(
            [KUBERDE, *args],
            env=self.env,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    @contextlib.contextmanager
    def client(
        self, argv: Sequence[str], output: Path, env: Mapping[str, str] | None = None
    ) -> Iterator[subprocess.Popen[bytes]]:
        """A long-running client (ssh, port-forward) writing stdout and stderr to `output`,
        with `env` added to the installation's; SIGTERMed (then killed) when the block ends
        if it is still running."""
        with output.open("wb") as sink:
            process = subprocess.Popen(
                list(argv),
                env=self.env | dict(env or {}),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
            )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=WAIT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=WAIT)

    def ok(self, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        """`kuberde ARGS`, which must succeed; its stdout."""
        result = self.kuberde(*args, timeout=timeout)
        assert result.returncode == 0, f"kuberde {' '.join(args)} failed: {result.stderr}"
        return result.stdout

    def ls(self) -> dict[str, Row]:
        """`kuberde ls -o json` by name; records every pid it reports."""
        rows: list[Row] = json.loads(self.ok("ls", "-o", "json"))
        for row in rows:
            if row["pod"]:
                process = ProcessId.of(int(row["pod"]))
                if process is not None:
                    self._see([process])
        return {row["name"]: row for row in rows}

    def wait_for(
        self,
        name: str,
        what: str,
        predicate: Callable[[Row | None], bool],
        timeout: float = WAIT,
    ) -> Row | None:
        """Poll `kuberde ls` until `predicate(row)` holds for workspace `name`."""
        deadline = time.monotonic() + timeout
        while True:
            row = self.ls().get(name)
            if predicate(row):
                return row
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} not {what} within {timeout:g}s; last row: {row}")
            time.sleep(_POLL)

    def wait_phase(self, name: str, phase: str, timeout: float = WAIT) -> Row:
        row = self.wait_for(name, phase, lambda r: r is not None and r["phase"] == phase, timeout)
        assert row is not None
        return row

    def workload(self, row: Row) -> ProcessId:
        """The live workload process `kuberde ls` reports in POD."""
        assert row["pod"], f"{row['name']} has no pod: {row}"
        process = ProcessId.of(int(row["pod"]))
        assert process is not None and process.alive, f"pod {row['pod']} is not running"
        return process

    def wait_process(self, what: str, match: Callable[[ProcessId], bool]) -> ProcessId:
        """Wait for a live process below `kuberde up` that `match` accepts.

        Reads /proc directly, so it is seen even if the workspace stops again before a
        (slower) `kuberde ls` could report it.
        """
        found: list[ProcessId] = []

        def seen() -> bool:
            found[:] = [p for p in descendants(self.up_pid) if match(p)]
            return bool(found)

        wait_until(seen, f"running {what}")
        self._see(found)
        assert len(found) == 1, f"more than one {what}: {[p.describe() for p in found]}"
        return found[0]

    def wait_workload(self, marker: str) -> ProcessId:
        """The workload process whose command line has `marker` as an argument."""
        return self.wait_process(f"workload {marker!r}", lambda p: marker in command_line(p.pid))

    def wait_agent(self, agent_id: str) -> ProcessId:
        return self.wait_process(
            f"agent {agent_id}", lambda p: _environ(p.pid).get("AGENT_ID") == agent_id
        )

    def agents(self, agent_id: str) -> set[ProcessId]:
        """The running agent processes of `agent_id` (children of `kuberde up`)."""
        found = {
            process
            for process in descendants(self.up_pid)
            if _environ(process.pid).get("AGENT_ID") == agent_id
        }
        self._see(found)
        return found

    # ---- state-directory files -----------------------------------------------------------

    def log_path(self, name: str, *, agent: bool = False) -> Path:
        return self.state_dir / "logs" / (f"{name}.agent.log" if agent else f"{name}.log")

    def starts(self, name: str, *, agent: bool = False) -> list[datetime]:
        """When each run of the workload (or agent) began, from the log's header lines."""
        path = self.log_path(name, agent=agent)
        text = path.read_text(errors="replace") if path.exists() else ""
        return [
            datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            for stamp in _START_HEADER.findall(text)
        ]


@contextlib.contextmanager
def running_demo(root: Path) -> Iterator[KubeRDE]:
    """A `kuberde up` under `root` whose demo workspace is Running; its logs are printed
    when the block ends, for a failing test's report."""
    installation = KubeRDE(root)
    try:
        with installation:
            installation.start_up()
            installation.wait_phase("demo", "Running")
            yield installation
    finally:
        print(installation.diagnostics())


def user_token(rde: KubeRDE, username: str, *, admin: bool = False) -> str:
    """A token from the installation's own issuer, as `kuberde login` would get one."""
    from kuberde.auth import load_or_create_signing_key
    from kuberde.auth.issuer import BUILTIN_USER_CLAIMS, BuiltinIssuer
    from kuberde.auth.oidc import OidcProvider, OidcUserVerifier
    from kuberde.auth.users import USERS_FILE, UsersFile

    assert rde.url is not None, "kuberde up is not running"
    issuer = BuiltinIssuer(
        rde.url,
        load_or_create_signing_key(rde.state_dir),
        rde.root / "issuer-for-tests",
        users=UsersFile(rde.state_dir / USERS_FILE),
        user_verifier=OidcUserVerifier(OidcProvider(rde.url), BUILTIN_USER_CLAIMS),
    )
    return issuer.mint_access_token(username, admin=admin, ttl=timedelta(hours=1))
