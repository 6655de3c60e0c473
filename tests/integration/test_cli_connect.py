"""The real CLI (a subprocess) against a fake gateway that speaks docs/protocol.md's /connect."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web

from kuberde.cli.bridge import Bridge, Outcome
from kuberde.cli.config import ClientSettings
from kuberde.cli.sshconfig import render_block
from kuberde.cli.tunnel import gateway_session, open_connection
from kuberde.testing.processes import reap

TOKEN = "good-token"
STEP = 10.0  # seconds any single step may take before the test gives up
FLOOD_CHUNK = os.urandom(256 * 1024)
FLOOD_TOTAL = 96 * 1024 * 1024
BURST = os.urandom(1024 * 1024)

CLI_SCRIPT = """\
import typer

from kuberde.cli.commands import register

app = typer.Typer()
register(app)
app()
"""


class FakeGateway:
    """Plays the gateway's `/connect`: checks the bearer token, refuses some agents before
    the upgrade, sends `waking` then `connected`, and then behaves per agent name."""

    def __init__(self) -> None:
        self.port = 0
        self.requests: list[dict[str, object]] = []
        self.waking_events = 1
        self.flood_stalled = asyncio.Event()
        self.flood_sent_at_stall = -1
        self.burst_closed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/connect/{agent}", self.connect)
        app.router.add_get("/api/agents/{agent}", self.find)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def find(self, request: web.Request) -> web.Response:
        """The gateway's `GET /api/agents/NAME`: the check before ssh and port-forward."""
        agent = request.match_info["agent"]
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _refuse(401, "token expired")
        if agent in ("missing", "forbidden"):
            return _refuse(404, f"no workspace named {agent!r}")
        return web.json_response({"id": f"user-alice-{agent}", "owner": "alice", "online": True})

    async def connect(self, request: web.Request) -> web.StreamResponse:
        agent = request.match_info["agent"]
        self.requests.append(
            {
                "agent": agent,
                "query": dict(request.query),
                "authorization": request.headers.get("Authorization"),
            }
        )
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _refuse(401, "token expired")
        if agent == "forbidden":
            return _refuse(403, "user 'alice' does not own agent user-bob-forbidden")
        if agent == "missing":
            return _refuse(404, "no workspace named 'missing'")
        ws = web.WebSocketResponse(compress=False, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        if agent == "gone":
            await _close(ws, 4404, "agent user-alice-gone is not connected")
            return ws
        for step in range(self.waking_events):
            if step:
                await asyncio.sleep(0.1)
            await ws.send_str(json.dumps({"event": "waking", "elapsed_s": 0.5 * (step + 1)}))
        await ws.send_str('{"event":"connected"}')
        if agent == "reset":
            await _close(ws, 4500, "user-alice-reset: port 5432 is not allowed for this agent")
        elif agent == "digest":
            await self._digest(ws)
        elif agent == "flood":
            await self._flood(ws)
        elif agent == "burst":
            await self._burst(ws)
        else:
            await self._echo(ws)
        return ws

    async def _echo(self, ws: web.WebSocketResponse) -> None:
        async for message in ws:
            if message.type is WSMsgType.BINARY:
                await ws.send_bytes(message.data)
            elif message.type is WSMsgType.TEXT and json.loads(message.data) == {"event": "eof"}:
                await ws.send_str('{"event":"eof"}')
                await ws.close()

    async def _digest(self, ws: web.WebSocketResponse) -> None:
        """Sends nothing until the client's half-close, then the SHA-256 of what it got."""
        digest = hashlib.sha256()
        async for message in ws:
            if message.type is WSMsgType.BINARY:
                digest.update(message.data)
            elif message.type is WSMsgType.TEXT and json.loads(message.data) == {"event": "eof"}:
                await ws.send_bytes(digest.hexdigest().encode())
                await ws.send_str('{"event":"eof"}')
                await ws.close()

    async def _burst(self, ws: web.WebSocketResponse) -> None:
        """Sends BURST, its end and the close at once, as a workload that writes and exits."""
        await ws.send_bytes(BURST)
        await ws.send_str('{"event":"eof"}')
        # Set before the close, not after it: close() writes its frame at once but then
        # waits for the reply, which a CLI still behind on stdout does not read yet.
        self.burst_closed.set()
        await ws.close()

    async def _flood(self, ws: web.WebSocketResponse) -> None:
        """Streams FLOOD_TOTAL bytes, noting how much went out before a send first blocked."""
        sent = 0
        while sent < FLOOD_TOTAL:
            send = asyncio.ensure_future(ws.send_bytes(FLOOD_CHUNK))
            done, _ = await asyncio.wait({send}, timeout=0.5)
            if not done and not self.flood_stalled.is_set():
                self.flood_sent_at_stall = sent
                self.flood_stalled.set()
            await send
            sent += len(FLOOD_CHUNK)
        await ws.send_str('{"event":"eof"}')
        async for message in ws:
            if message.type is WSMsgType.TEXT and json.loads(message.data) == {"event": "eof"}:
                await ws.close()


def _refuse(status: int, error: str) -> web.Response:
    return web.json_response({"error": error, "reason": "test"}, status=status)


async def _close(ws: web.WebSocketResponse, code: int, reason: str) -> None:
    await ws.send_str(json.dumps({"event": "error", "message": reason}))
    await ws.close(code=code, message=reason.encode()[:120])


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    fake = FakeGateway()
    await fake.start()
    yield fake
    with contextlib.suppress(AssertionError, RuntimeError):
        await fake.stop()


@pytest.fixture
def cli(tmp_path: Path) -> list[str]:
    script = tmp_path / "kuberde_cli.py"
    script.write_text(CLI_SCRIPT)
    return [sys.executable, str(script)]


@pytest.fixture
def env(tmp_path: Path, gateway: FakeGateway) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("KUBERDE_")}
    values.update(
        KUBERDE_CONFIG=str(tmp_path / "config.json"),
        KUBERDE_SERVER=gateway.url,
        KUBERDE_TOKEN=TOKEN,
    )
    return values


async def _run(argv: list[str], env: dict[str, str], stdin: bytes = b"") -> tuple[int, bytes, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    finally:
        await reap(proc)
    assert proc.returncode is not None
    return proc.returncode, out, err.decode()


# ---- kuberde connect ------------------------------------------------------------------------


async def test_stdio_echo_of_one_megabyte(cli, env, gateway):
    data = os.urandom(1024 * 1024)
    code, out, err = await _run([*cli, "connect", "echo", "--port", "22"], env, data)
    assert code == 0, err
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(data).hexdigest()
    assert out == data  # stdout holds the stream bytes and nothing else
    assert "waking echo… 0.5s" in err
    assert "echo is up after 0.5s" in err
    request = gateway.requests[-1]
    assert request["authorization"] == f"Bearer {TOKEN}"
    assert request["query"] == {"port": "22", "kind": "tcp"}


async def test_what_arrived_before_the_close_reaches_a_slow_reader(cli, env, gateway):
    """The gateway's close can come while most of the stream still waits for stdout (a pipe
    holds 64 KiB): the CLI delivers all of it before it exits."""
    proc = await asyncio.create_subprocess_exec(
        *cli,
        "connect",
        "burst",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        await asyncio.wait_for(gateway.burst_closed.wait(), STEP)
        out, err = await asyncio.wait_for(proc.communicate(), STEP)
    finally:
        await reap(proc)
    assert proc.returncode == 0, err
    assert len(out) == len(BURST)
    assert out == BURST


async def test_half_close_lets_the_workspace_answer_after_stdin_ends(cli, env):
    data = os.urandom(300_000)
    code, out, err = await _run([*cli, "connect", "digest"], env, data)
    assert code == 0, err
    assert out == hashlib.sha256(data).hexdigest().encode()


@pytest.mark.parametrize("source", ["devnull", "file"])
async def test_unpollable_stdin_and_stdout(cli, env, tmp_path, source):
    """`< /dev/null`, `< file` and `> file` cannot go through the loop's pipe transports."""
    data = b"" if source == "devnull" else os.urandom(200_000)
    stdin = Path(os.devnull) if source == "devnull" else tmp_path / "in.bin"
    if source == "file":
        stdin.write_bytes(data)
    out = tmp_path / "out.bin"
    with stdin.open("rb") as src, out.open("wb") as dst:
        proc = await asyncio.create_subprocess_exec(
            *cli, "connect", "echo", stdin=src, stdout=dst, stderr=asyncio.subprocess.PIPE, env=env
        )
        _, err = await asyncio.wait_for(proc.communicate(), STEP)
    assert proc.returncode == 0, err
    assert out.read_bytes() == data


async def test_ssh_host_name_and_flags_take_precedence(cli, env, gateway):
    env["KUBERDE_SERVER"] = "http://127.0.0.1:1"  # the flag wins over the environment
    argv = [*cli, "connect", "echo.kuberde", "--kind", "ssh", "--server", gateway.url]
    code, out, err = await _run(argv, env, b"hello")
    assert (code, out) == (0, b"hello"), err
    request = gateway.requests[-1]
    assert request["agent"] == "echo"
    assert request["query"] == {"kind": "ssh"}
    assert TOKEN not in json.dumps(request["query"])


@pytest.mark.parametrize(
    ("agent", "token", "message"),
    [
        ("echo", "stale-token", "not authorized: token expired — run `kuberde login`"),
        ("forbidden", TOKEN, "forbidden: user 'alice' does not own agent user-bob-forbidden"),
        ("missing", TOKEN, "no workspace named 'missing'"),
        ("gone", TOKEN, "agent user-alice-gone is not connected"),
        ("reset", TOKEN, "connection reset: user-alice-reset: port 5432 is not allowed"),
    ],
)
async def test_refusals_exit_1_with_a_message_on_stderr(cli, env, agent, token, message):
    env["KUBERDE_TOKEN"] = token
    code, out, err = await _run([*cli, "connect", agent], env, b"ignored")
    assert code == 1
    assert out == b""
    assert message in err


async def test_unreachable_gateway_exits_1(cli, env):
    env["KUBERDE_SERVER"] = "http://127.0.0.1:1"
    code, out, err = await _run([*cli, "connect", "echo"], env)
    assert (code, out) == (1, b"")
    assert "cannot reach the gateway at http://127.0.0.1:1" in err


async def test_missing_configuration_is_a_usage_error(cli, env):
    del env["KUBERDE_SERVER"]
    code, out, err = await _run([*cli, "connect", "echo"], env)
    assert (code, out) == (2, b"")
    assert "no server configured: pass --server, set KUBERDE_SERVER or run `kuberde up`" in err


async def test_config_file_supplies_server_and_token(cli, env, gateway, tmp_path):
    del env["KUBERDE_SERVER"], env["KUBERDE_TOKEN"]
    config = {"server": gateway.url, "token": TOKEN}
    (tmp_path / "config.json").write_text(json.dumps(config))
    code, out, err = await _run([*cli, "connect", "echo"], env, b"from the file")
    assert (code, out) == (0, b"from the file"), err


# ---- kuberde port-forward -------------------------------------------------------------------


class PortForward:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._new_line = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode().rstrip("\n"))
            self._new_line.set()

    async def wait_for(self, pattern: str) -> re.Match[str]:
        async def search() -> re.Match[str]:
            while True:
                for line in self.lines:
                    if match := re.search(pattern, line):
                        return match
                self._new_line.clear()
                await self._new_line.wait()

        return await asyncio.wait_for(search(), STEP)

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(self.proc.wait(), STEP)
        await self._reader
        return code


@pytest.fixture
async def port_forward(cli, env) -> AsyncIterator[PortForward]:
    proc = await asyncio.create_subprocess_exec(
        *cli,
        "port-forward",
        "echo",
        ":7",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    forward = PortForward(proc)
    yield forward
    await reap(proc)


async def _local_port(forward: PortForward) -> int:
    match = await forward.wait_for(r"^Forwarding from 127\.0\.0\.1:(\d+) -> 7$")
    return int(match.group(1))


async def _echo_roundtrip(port: int, size: int) -> None:
    data = os.urandom(size)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        writer.write(data)
        await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    received = await asyncio.wait_for(reader.read(), STEP * 3)
    await sender
    writer.close()
    assert len(received) == size
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()


async def test_port_forward_twenty_concurrent_connections(port_forward, gateway):
    port = await _local_port(port_forward)
    sizes = [1 + i * 37_000 for i in range(20)]
    await asyncio.gather(*(_echo_roundtrip(port, size) for size in sizes))
    assert len(gateway.requests) == 20
    assert all(r["query"] == {"port": "7", "kind": "port-forward"} for r in gateway.requests)
    assert await port_forward.stop() == 0


async def test_port_forward_survives_a_gateway_restart(port_forward, gateway):
    port = await _local_port(port_forward)
    await _echo_roundtrip(port, 100_000)

    await gateway.stop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), STEP) == b""
    writer.close()
    await port_forward.wait_for(r"connection from 127\.0\.0\.1:\d+ failed: cannot reach")

    await gateway.start()  # the same port again
    await _echo_roundtrip(port, 100_000)
    assert await port_forward.stop() == 0


async def test_port_forward_to_a_missing_workspace_fails_before_listening(cli, env):
    code, out, err = await _run([*cli, "port-forward", "missing", "2022:22"], env)
    assert (code, out) == (1, b"")
    assert "kuberde: no workspace named 'missing'" in err
    assert "Forwarding" not in err


async def test_port_forward_refused_connection_keeps_the_listener(cli, env):
    proc = await asyncio.create_subprocess_exec(
        *cli,
        "port-forward",
        "gone",
        ":7",
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    forward = PortForward(proc)
    try:
        match = await forward.wait_for(r"Forwarding from 127\.0\.0\.1:(\d+) -> 7")
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", int(match.group(1)))
            assert await asyncio.wait_for(reader.read(), STEP) == b""
            writer.close()
        await forward.wait_for(r"failed: agent user-alice-gone is not connected")
        assert proc.returncode is None
        assert await forward.stop() == 0
    finally:
        await reap(proc)


async def test_port_forward_clients_may_send_and_leave_before_the_stream_opens(
    port_forward, gateway
):
    port = await _local_port(port_forward)
    gateway.waking_events = 4
    await _echo_roundtrip(port, 50_000)  # sent and half-closed during the wake
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"gone before the stream opens")
    writer.close()
    await writer.wait_closed()
    gateway.waking_events = 1
    await _echo_roundtrip(port, 10)
    await port_forward.wait_for(r"^waking echo… 0\.5s$")
    assert await port_forward.stop() == 0


# ---- backpressure (in process) ---------------------------------------------------------------


class _LocalSide(asyncio.Protocol):
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def connection_made(self, transport):
        self.bridge.attach_writer(transport, transport.write_eof)
        self.bridge.attach_reader(transport)

    def data_received(self, data):
        self.bridge.data_received(data)

    def eof_received(self):
        self.bridge.eof_received()
        return True

    def pause_writing(self):
        self.bridge.pause_writing()

    def resume_writing(self):
        self.bridge.resume_writing()

    def connection_lost(self, exc):
        self.bridge.local_lost()


async def test_a_local_reader_that_stops_reading_stops_the_gateway(gateway):
    """The bridge stops reading the WebSocket while the local side is not reading, so the
    gateway's sends block long before the whole flood is out; nothing is lost after."""
    settings = ClientSettings(gateway.url, TOKEN)
    loop = asyncio.get_running_loop()
    async with gateway_session(settings) as session:
        tunnel = await open_connection(
            settings, "flood", None, "tcp", on_event=None, session=session
        )
        bridge = Bridge(tunnel)
        ours, theirs = socket.socketpair()
        local, _ = await loop.connect_accepted_socket(lambda: _LocalSide(bridge), ours)
        relay = asyncio.create_task(bridge.run())

        await asyncio.wait_for(gateway.flood_stalled.wait(), STEP)
        assert 0 <= gateway.flood_sent_at_stall < FLOOD_TOTAL // 2

        reader, writer = await asyncio.open_connection(sock=theirs)
        writer.write_eof()
        digest, received = hashlib.sha256(), 0
        while chunk := await asyncio.wait_for(reader.read(1 << 20), STEP):
            digest.update(chunk)
            received += len(chunk)
        expected = hashlib.sha256(FLOOD_CHUNK * (FLOOD_TOTAL // len(FLOOD_CHUNK)))
        assert received == FLOOD_TOTAL
        assert digest.digest() == expected.digest()
        assert await asyncio.wait_for(relay, STEP) == Outcome(0)
        local.close()
        writer.close()


# ---- OpenSSH --------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed")
async def test_openssh_runs_the_managed_blocks_proxy_command(tmp_path):
    """Real `ssh` with the rendered block: `%n` becomes the host as typed, `%p` ssh's port,
    a `%` and a space in the CLI's path survive, and host key checking keeps its default."""
    bin_dir = tmp_path / "kuberde 100%"
    bin_dir.mkdir()
    record = tmp_path / "proxy.json"
    fake_cli = bin_dir / "kuberde"
    fake_cli.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"json.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n"
    )
    fake_cli.chmod(0o755)
    config = tmp_path / "ssh_config"
    config.write_text(render_block([str(fake_cli)]))
    for port_options, port in [([], "22"), (["-p", "2222"], "2222")]:
        argv = ["ssh", "-F", str(config), "-o", "BatchMode=yes", *port_options, "dev.kuberde"]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            "true",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert await asyncio.wait_for(proc.wait(), STEP) != 0  # the fake CLI speaks no SSH
        expected = ["connect", "dev.kuberde", "--port", port, "--kind", "ssh"]
        assert json.loads(record.read_text()) == expected

    proc = await asyncio.create_subprocess_exec(
        "ssh", "-G", "-F", str(config), "dev.kuberde", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), STEP)
    options = dict(line.split(" ", 1) for line in out.decode().splitlines() if " " in line)
    assert options["stricthostkeychecking"] == "ask"
    assert "hostkeyalias" not in options


@pytest.fixture
def fake_ssh(env, tmp_path):
    """An `ssh` first on PATH that records its argv and KUBERDE_* environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "ssh.json"
    script = bin_dir / "ssh"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"with open({str(record)!r}, 'w') as f:\n"
        "    json.dump({'argv': sys.argv[1:], 'env': {k: v for k, v in os.environ.items()"
        " if k.startswith('KUBERDE_')}}, f)\n"
    )
    script.chmod(0o755)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["HOME"] = str(tmp_path / "home")  # a user with no SSH key of their own
    return record


async def test_kuberde_ssh_runs_openssh_with_the_token_in_the_environment(
    cli, env, fake_ssh, tmp_path
):
    code, _, err = await _run([*cli, "ssh", "bob@dev", "--", "-v", "uname", "-a"], env)
    assert code == 0, err
    seen = json.loads(fake_ssh.read_text())
    assert seen["env"]["KUBERDE_TOKEN"] == TOKEN
    assert seen["env"]["KUBERDE_SERVER"] == env["KUBERDE_SERVER"]
    assert not any(TOKEN in arg for arg in seen["argv"])
    assert seen["argv"][0] == "-o"
    assert seen["argv"][1].startswith("ProxyCommand=")
    assert seen["argv"][1].endswith(" connect dev --port 22 --kind ssh")
    managed = tmp_path / "ssh" / "id_ed25519"  # next to $KUBERDE_CONFIG
    rest = ["-o", "HostKeyAlias=dev.kuberde", "-o", f"IdentityFile={managed}", "bob@dev.kuberde"]
    assert seen["argv"][2:] == [*rest, "-v", "uname", "-a"]
    assert managed.is_file()


async def test_kuberde_ssh_offers_the_users_own_key_by_default(cli, env, fake_ssh, tmp_path):
    own = Path(env["HOME"]) / ".ssh" / "id_ed25519"
    own.parent.mkdir(parents=True)
    own.write_text("private")
    own.with_suffix(".pub").write_text("ssh-ed25519 AAAA me")
    code, _, err = await _run([*cli, "ssh", "dev"], env)
    assert code == 0, err
    assert json.loads(fake_ssh.read_text())["argv"][2:] == [
        "-o",
        "HostKeyAlias=dev.kuberde",
        "dev.kuberde",
    ]
    assert not (tmp_path / "ssh" / "id_ed25519").exists()


async def test_kuberde_ssh_to_a_missing_workspace_fails_before_ssh_runs(cli, env, fake_ssh):
    code, out, err = await _run([*cli, "ssh", "missing"], env)
    assert (code, out) == (1, b"")
    assert err == "kuberde: no workspace named 'missing'\n"
    assert not fake_ssh.exists()


@pytest.mark.parametrize("tool", ["ssh", "ssh-keygen"])
async def test_kuberde_ssh_without_openssh_says_what_to_install(cli, env, tmp_path, tool):
    # A user with no key of their own needs ssh-keygen for the managed key, then ssh.
    tools = tmp_path / "bin"
    tools.mkdir()
    if tool == "ssh":
        (tools / "ssh-keygen").symlink_to(shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen")
    env = {**env, "PATH": str(tools), "HOME": str(tmp_path / "home")}
    code, out, err = await _run([*cli, "ssh", "dev"], env)
    assert (code, out) == (1, b"")
    install = "install the OpenSSH client (apt-get install openssh-client)"
    assert err == f"kuberde: {tool} not found: {install}\n"
    if tool == "ssh-keygen":
        config = await _run([*cli, "config-ssh", "--write"], env)
        assert (config[0], config[2]) == (1, f"kuberde: ssh-keygen not found: {install}\n")


async def test_kuberde_ssh_exits_with_ssh_s_code_and_relays_its_stderr(cli, env, fake_ssh):
    script = Path(env["PATH"].split(os.pathsep)[0]) / "ssh"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.stderr.write('from ssh\\n')\nsys.exit(5)\n"
    )
    code, out, err = await _run([*cli, "ssh", "dev"], env)
    assert (code, out, err) == (5, b"", "from ssh\n")


async def test_kuberde_ssh_trusts_the_host_key_kuberde_up_recorded(cli, env, fake_ssh, tmp_path):
    known_hosts = tmp_path / "ssh" / "known_hosts"
    known_hosts.parent.mkdir()
    known_hosts.write_text("demo.kuberde ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake\n")

    code, _, err = await _run([*cli, "ssh", "demo"], env)
    assert code == 0, err
    argv = json.loads(fake_ssh.read_text())["argv"]
    assert argv[4:] == [
        "-o",
        f"UserKnownHostsFile=~/.ssh/known_hosts ~/.ssh/known_hosts2 {known_hosts}",
        "-o",
        f"IdentityFile={tmp_path / 'ssh' / 'id_ed25519'}",
        "demo.kuberde",
    ]

    code, _, err = await _run([*cli, "ssh", "dev"], env)
    assert code == 0, err
    assert "UserKnownHostsFile" not in " ".join(json.loads(fake_ssh.read_text())["argv"])
