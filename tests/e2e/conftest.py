"""Real processes for end-to-end tests: the `kuberde` console script, OpenSSH, loopback sockets.

Every process runs in its own process group with stderr in a log file (so tests can read
what it said, and a chatty process never blocks on a full pipe); teardown terminates each
group and kills what does not exit. In-test TCP targets run on a private event loop in a
thread, so they keep serving while a test blocks on a subprocess.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kuberde.local.sshd import prepare_sshd
from tests.e2e.up_fixtures import KubeRDE

#: Upper bound for one step (a process starting, an agent coming online); a healthy run needs
#: a small fraction of it.
STEP = 30.0
#: The agent's reconnect backoff is capped at 30 s; a reconnect must happen within that.
RECONNECT_BOUND = 40.0
OWNER = "alice"
NAME = "dev"
AGENT_ID = f"user-{OWNER}-{NAME}"
#: Environment variables that would let the developer's own setup leak into a test.
_SCRUBBED = (
    "KUBERDE_",
    "AGENT_",
    "SERVER_URL",
    "LOCAL_TARGET",
    "ALLOWED_PORTS",
    "PORT_MAP",
    "SHUTDOWN_GRACE",
    "SSH_AUTH_SOCK",
)

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def kuberde_executable() -> str:
    """The installed console script next to this interpreter (the one CI installs)."""
    beside = Path(sys.executable).parent / "kuberde"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("kuberde")
    if found is None:
        pytest.fail("the `kuberde` console script is not installed (pip install -e .)")
    return found


KUBERDE = kuberde_executable()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


_NO_CONFIG_DIR = Path(tempfile.mkdtemp(prefix="kuberde-e2e-config-"))
atexit.register(shutil.rmtree, _NO_CONFIG_DIR, ignore_errors=True)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without KubeRDE/agent settings, plus `extra`.

    `KUBERDE_CONFIG` names a file that does not exist, so no developer config is read. Its
    directory is this run's own, because the CLI keeps state beside it (the managed SSH key):
    a fixed path outside the run would leak that state between runs and into the system.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith(_SCRUBBED)}
    env["KUBERDE_CONFIG"] = str(_NO_CONFIG_DIR / "config.json")
    env.update(extra)
    return env


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


# ---- processes -------------------------------------------------------------------------------


class Proc:
    """A subprocess in its own process group; its stderr goes to `log_path`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        stdin: int | IO[bytes] = subprocess.DEVNULL,
        stdout: int | IO[bytes] = subprocess.DEVNULL,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                env=dict(env),
                stdin=stdin,
                stdout=stdout,
                stderr=log,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        return f"{self.name} (pid {self.pid}, exit {self.returncode}) log:\n{tail(self.log())}"

    def wait_for_log(self, pattern: str, timeout: float = STEP) -> re.Match[str]:
        """The first match of `pattern` in the log; fails if the process exits first."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = compiled.search(self.log())
            if match is not None:
                return match
            if self.returncode is not None:
                pytest.fail(f"{pattern!r} never appeared; {self.describe()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{pattern!r} did not appear within {timeout:g}s; {self.describe()}")
            time.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        if self.returncode is None:
            self.popen.send_signal(sig)

    def wait(self, timeout: float = STEP) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not exit within {timeout:g}s; {self.describe()}")

    def kill(self) -> int:
        """SIGKILL the whole group (no chance to clean up, like a crashed pod)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        return self.popen.wait(STEP)

    def terminate_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM the group, then SIGKILL whatever is left after `timeout`."""
        self.terminate_group()
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            code = self.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        return code


class Processes:
    """Starts processes with numbered log files and stops all of them at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Proc] = []
        self._count = 0

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        stdin: int | IO[bytes] = subprocess.DEVNULL,
        stdout: int | IO[bytes] = subprocess.DEVNULL,
    ) -> Proc:
        self._count += 1
        log_path = self.log_dir / f"{self._count:02d}-{name}.log"
        proc = Proc(name, argv, env, log_path, stdin=stdin, stdout=stdout)
        self.started.append(proc)
        return proc

    def close(self) -> None:
        running = [proc for proc in self.started if proc.returncode is None]
        for proc in running:
            proc.terminate_group()
        deadline = time.monotonic() + 10.0
        for proc in running:
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        for proc in self.started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            # Shown by pytest only when the test failed.
            print(f"---- {proc.describe()}")


@dataclass
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def errors(self) -> str:
        return self.stderr.decode(errors="replace")

    def explain(self) -> str:
        return (
            f"exit {self.returncode}\nstdout: {tail(self.text, 10)!r}\nstderr: {tail(self.errors)}"
        )


def run(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    input: bytes | None = None,
    timeout: float = 60.0,
) -> Completed:
    """Run a client command to completion in its own process group (ssh and its
    ProxyCommand die together on timeout)."""
    popen = subprocess.Popen(
        list(argv),
        env=dict(env),
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = popen.communicate(input, timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        stdout, stderr = popen.communicate()
        pytest.fail(
            f"{shlex.join(argv)} did not finish within {timeout:g}s\n"
            f"stdout: {tail(stdout.decode(errors='replace'), 10)!r}\n"
            f"stderr: {tail(stderr.decode(errors='replace'))}"
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
    return Completed(popen.returncode, stdout, stderr)


def mint(kind: str, state_dir: Path, *args: str) -> str:
    """A token from `kuberde token KIND --state-dir D ...` (the real CLI)."""
    result = run([KUBERDE, "token", kind, "--state-dir", str(state_dir), *args], clean_env())
    assert result.returncode == 0, result.explain()
    token = result.text.strip()
    assert token.count(".") == 2, f"not a JWT: {token!r}"
    return token


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    registry = Processes(log_dir)
    try:
        yield registry
    finally:
        registry.close()


# ---- TLS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    cert: Path
    key: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_tls_files(directory: Path) -> TlsFiles:
    """A private CA and a server certificate for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "KubeRDE e2e test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, files.key)
    return files


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


# ---- the gateway -----------------------------------------------------------------------------


@dataclass
class Gateway:
    proc: Proc
    state_dir: Path
    url: str
    ca_file: Path | None
    mgmt_token: str = field(repr=False)

    @property
    def port(self) -> int:
        port = self.url.rpartition(":")[2]
        return int(port)

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/ws"

    def user_token(self, user: str = OWNER) -> str:
        return mint("user", self.state_dir, "--user", user)

    def agent_token(self, owner: str = OWNER, name: str = NAME) -> str:
        return mint("agent", self.state_dir, "--owner", owner, "--name", name)

    def client_env(
        self, token: str, *, ca_file: Path | None = None, **extra: str
    ) -> dict[str, str]:
        """The environment of a CLI command (`connect`, `ssh`, `port-forward`) for this gateway."""
        env = clean_env(KUBERDE_SERVER=self.url, KUBERDE_TOKEN=token, **extra)
        if ca_file is not None:
            env["KUBERDE_CA_FILE"] = str(ca_file)
        return env

    def agents(self) -> dict[str, dict[str, Any]]:
        request = urllib.request.Request(
            self.url + "/mgmt/agents", headers={"Authorization": f"Bearer {self.mgmt_token}"}
        )
        context = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None
        with urllib.request.urlopen(request, timeout=5.0, context=context) as response:
            listing = json.load(response)
        return {agent["id"]: agent for agent in listing["agents"]}

    def wait_agent(
        self,
        agent_id: str = AGENT_ID,
        predicate: Callable[[dict[str, Any]], bool] = lambda entry: bool(entry["online"]),
        timeout: float = STEP,
        *,
        watch: Proc | None = None,
    ) -> dict[str, Any]:
        """Poll `/mgmt/agents` until `agent_id` satisfies `predicate` (default: online)."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while True:
            with contextlib.suppress(OSError, urllib.error.URLError):
                last = self.agents().get(agent_id)
                if last is not None and predicate(last):
                    return last
            for proc in (self.proc, watch):
                if proc is not None and proc.returncode is not None:
                    pytest.fail(f"{proc.describe()}\nwhile waiting for {agent_id}: {last}")
            if time.monotonic() > deadline:
                watched = watch.describe() if watch is not None else ""
                pytest.fail(
                    f"{agent_id} did not reach the expected state within {timeout:g}s: {last}\n"
                    f"{watched}\n{self.proc.describe()}"
                )
            time.sleep(0.1)


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def start_gateway(processes: Processes, tmp_path: Path) -> GatewayFactory:
    """Start `kuberde server`; pass `state_dir` and `port` to restart one in place."""

    def start(
        *,
        state_dir: Path | None = None,
        port: int = 0,
        tls: TlsFiles | None = None,
        log_level: str = "info",
        options: Sequence[str] = (),
    ) -> Gateway:
        """`options` are more `kuberde server` flags (limits, for instance)."""
        directory = state_dir or tmp_path / "gateway-state"
        argv = [
            KUBERDE,
            "--log-level",
            log_level,
            "server",
            "--listen",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(directory),
        ]
        if tls is not None:
            argv += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
        argv += options
        proc = processes.start("gateway", argv, clean_env())
        url = proc.wait_for_log(r"KubeRDE gateway listening on (https?://\S+)").group(1)
        return Gateway(
            proc=proc,
            state_dir=directory,
            url=url,
            ca_file=tls.ca_cert if tls is not None else None,
            mgmt_token=mint("management", directory),
        )

    return start


@pytest.fixture
def gateway(start_gateway: GatewayFactory) -> Gateway:
    return start_gateway()


# ---- OpenSSH ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SshServer:
    port: int
    client_key: Path
    known_hosts: Path
    directory: Path

    def options(self, alias: str | None = None) -> list[str]:
        """ssh/scp options: only our key, only our known_hosts, host keys checked strictly."""
        options = [
            "-F",
            "/dev/null",
            "-i",
            str(self.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=20",
        ]
        if alias is not None:
            options += ["-o", f"HostKeyAlias={alias}"]
        return options

    def proxy_options(self, agent: str = AGENT_ID, port: int = 22) -> list[str]:
        """Options for plain ssh/scp through `kuberde connect`, with the host key checked
        under `<agent>.kuberde`."""
        command = shlex.join([KUBERDE, "connect", agent, "--port", str(port), "--kind", "ssh"])
        return [*self.options(f"{agent}.kuberde"), "-o", f"ProxyCommand={command}"]


def _wait_for_ssh_banner(port: int, proc: Proc) -> None:
    deadline = time.monotonic() + STEP
    while True:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock,
        ):
            if sock.recv(64).startswith(b"SSH-2.0-"):
                return
        if proc.returncode is not None or time.monotonic() > deadline:
            pytest.fail(f"sshd is not serving on 127.0.0.1:{port}; {proc.describe()}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real sshd on a free loopback port, running as the current user, key login only."""
    for tool in ("ssh", "scp", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.fail(f"OpenSSH's {tool} is not installed (apt-get install openssh-client)")
    directory = tmp_path_factory.mktemp("sshd")
    # Under /tmp, which is world writable: StrictModes would refuse every path here.
    files = prepare_sshd(directory, free_port(), comment="kuberde-e2e", strict_modes=False)
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(files.known_hosts_line(f"{AGENT_ID}.kuberde", f"{NAME}.kuberde"))
    port, client_key = files.port, files.client_key
    registry = Processes(directory)
    proc = registry.start("sshd", files.argv, clean_env())
    try:
        _wait_for_ssh_banner(port, proc)
        yield SshServer(port, client_key, known_hosts, directory)
    finally:
        registry.close()


# ---- the agent -------------------------------------------------------------------------------


@dataclass
class Agent:
    proc: Proc
    agent_id: str
    token: str = field(repr=False)
    token_file: Path
    env: dict[str, str] = field(repr=False)


AgentFactory = Callable[..., Agent]


@pytest.fixture
def start_agent(processes: Processes, sshd: SshServer, tmp_path: Path) -> AgentFactory:
    """Start `kuberde agent` with a credential file minted by `kuberde token agent`.

    Workspace port 22 is the test sshd (LOCAL_TARGET 127.0.0.1:22 mapped with PORT_MAP, as the
    local runtime does); `allowed_ports` are reachable as themselves.
    """
    count = 0

    def start(
        gateway: Gateway,
        *,
        owner: str = OWNER,
        name: str = NAME,
        allowed_ports: Sequence[int] = (),
        ca_file: Path | None = None,
        token: str | None = None,
        log_level: str = "info",
        wait_online: bool = True,
        reuse: Agent | None = None,
    ) -> Agent:
        nonlocal count
        if reuse is not None:
            env, token, token_file = reuse.env, reuse.token, reuse.token_file
        else:
            count += 1
            token = token or gateway.agent_token(owner, name)
            token_file = tmp_path / f"agent-{count}.token"
            token_file.write_text(token + "\n")
            token_file.chmod(0o600)
            env = clean_env(
                SERVER_URL=gateway.ws_url,
                AGENT_TOKEN_FILE=str(token_file),
                LOCAL_TARGET="127.0.0.1:22",
                PORT_MAP=f"22={sshd.port}",
                KUBERDE_LOG_LEVEL=log_level,
            )
            if allowed_ports:
                env["ALLOWED_PORTS"] = ",".join(map(str, allowed_ports))
            if ca_file is not None:
                env["KUBERDE_CA_FILE"] = str(ca_file)
        agent_id = f"user-{owner}-{name}"
        proc = processes.start(f"agent-{name}", [KUBERDE, "agent"], env)
        agent = Agent(proc, agent_id, token, token_file, env)
        if wait_online:
            gateway.wait_agent(agent_id, watch=proc)
        return agent

    return start


# ---- in-test TCP targets ---------------------------------------------------------------------


class Targets:
    """TCP servers on 127.0.0.1 served by an event loop in a thread of their own."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="e2e-targets", daemon=True
        )
        self._thread.start()
        self._servers: list[asyncio.Server] = []

    def serve(self, handler: StreamHandler) -> int:
        async def start() -> asyncio.Server:
            return await asyncio.start_server(handler, "127.0.0.1", 0)

        server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(STEP)
        self._servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(STEP)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STEP)
        self._loop.close()


@pytest.fixture
def targets() -> Iterator[Targets]:
    running = Targets()
    try:
        yield running
    finally:
        running.close()


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until the client's EOF, then close."""
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


def start_port_forward(
    processes: Processes,
    gateway: Gateway,
    token: str,
    remote: int,
    agent: str = NAME,
    *,
    env: dict[str, str] | None = None,
) -> tuple[Proc, int]:
    """`kuberde port-forward AGENT :REMOTE` (in `env`, by default the gateway's client
    environment); returns the process and its local port."""
    proc = processes.start(
        "port-forward",
        [KUBERDE, "port-forward", agent, f":{remote}"],
        gateway.client_env(token) if env is None else env,
    )
    match = proc.wait_for_log(rf"Forwarding from 127\.0\.0\.1:(\d+) -> {remote}\b")
    return proc, int(match.group(1))


async def echo_roundtrip(port: int, payload: bytes) -> bytes:
    """Send `payload` through 127.0.0.1:`port` while reading, half-close, read to EOF."""

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:

            async def send() -> None:
                # A peer that closes first (what is under test while nothing serves) may
                # fail these, ENOTCONN on write_eof included: what was received tells.
                with contextlib.suppress(OSError):
                    for offset in range(0, len(payload), 64 * 1024):
                        writer.write(payload[offset : offset + 64 * 1024])
                        await writer.drain()
                    writer.write_eof()

            sender = asyncio.create_task(send())
            received = await reader.read(-1)
            await sender
            return received
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.wait_for(exchange(), 60.0)


@contextlib.asynccontextmanager
async def spawn(argv: Sequence[str], env: Mapping[str, str]) -> AsyncIterator[Process]:
    """A client process with pipes for stdin, stdout and stderr, killed (with its group) on
    the way out."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=dict(env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), STEP)


@pytest.fixture
def rde(tmp_path: Path) -> Iterator[KubeRDE]:
    """A throwaway `kuberde up` installation, stopped (and checked for leftovers) after."""
    installation = KubeRDE(tmp_path / "kuberde")
    try:
        with installation:
            yield installation
    finally:
        # Shown by pytest only when the test fails.
        print(installation.diagnostics())
