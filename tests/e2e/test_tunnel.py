"""The tunnel end to end: OpenSSH and TCP clients → `kuberde` CLI → gateway → agent → target.

Every component is the installed `kuberde` console script or OpenSSH, talking over loopback.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import os
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    AGENT_ID,
    KUBERDE,
    NAME,
    STEP,
    AgentFactory,
    Gateway,
    GatewayFactory,
    Processes,
    SshServer,
    Targets,
    TlsFiles,
    echo_handler,
    echo_roundtrip,
    run,
    spawn,
    start_port_forward,
)

USER = getpass.getuser()
HOST = f"{AGENT_ID}.kuberde"
pytestmark = pytest.mark.timeout(120)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def test_ssh_through_proxy_command_runs_a_command(
    gateway: Gateway, start_agent: AgentFactory, sshd: SshServer
) -> None:
    start_agent(gateway)
    result = run(
        [
            "ssh",
            *sshd.proxy_options(),
            f"{USER}@{HOST}",
            'read line; echo "remote got $line and $((6 * 7))"',
        ],
        gateway.client_env(gateway.user_token()),
        input=b"hello\n",
    )
    assert result.returncode == 0, result.explain()
    assert result.text == "remote got hello and 42\n"


def test_kuberde_ssh_with_the_short_name(
    gateway: Gateway, start_agent: AgentFactory, sshd: SshServer
) -> None:
    start_agent(gateway)
    result = run(
        [
            KUBERDE,
            "ssh",
            f"{USER}@{NAME}",
            "--",
            *sshd.options(),
            "echo",
            "short-name",
            "$((40+2))",
        ],
        gateway.client_env(gateway.user_token()),
    )
    assert result.returncode == 0, result.explain()
    assert result.text == "short-name 42\n"


def test_scp_50_mb_up_and_back(
    gateway: Gateway, start_agent: AgentFactory, sshd: SshServer, tmp_path: Path
) -> None:
    start_agent(gateway)
    env = gateway.client_env(gateway.user_token())
    original = tmp_path / "original.bin"
    original.write_bytes(os.urandom(50 * 1024 * 1024))
    remote = tmp_path / "remote-copy.bin"
    back = tmp_path / "back.bin"

    upload = run(["scp", *sshd.proxy_options(), str(original), f"{USER}@{HOST}:{remote}"], env)
    assert upload.returncode == 0, upload.explain()
    download = run(["scp", *sshd.proxy_options(), f"{USER}@{HOST}:{remote}", str(back)], env)
    assert download.returncode == 0, download.explain()

    expected = sha256_file(original)
    assert remote.stat().st_size == back.stat().st_size == 50 * 1024 * 1024
    assert sha256_file(remote) == expected
    assert sha256_file(back) == expected


async def test_server_first_target_sends_its_banner_before_the_client_speaks(
    gateway: Gateway, start_agent: AgentFactory, targets: Targets
) -> None:
    banner = b"220 kuberde-e2e ESMTP ready\r\n"

    async def smtp_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(banner)
        await writer.drain()
        line = await reader.readline()
        writer.write(b"250 hello " + line)
        await writer.drain()
        await reader.read()
        writer.close()

    port = targets.serve(smtp_like)
    await asyncio.to_thread(start_agent, gateway, allowed_ports=[port])
    token = await asyncio.to_thread(gateway.user_token)
    argv = [KUBERDE, "connect", AGENT_ID, "--port", str(port), "--kind", "tcp"]
    async with spawn(argv, gateway.client_env(token)) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        first = await asyncio.wait_for(proc.stdout.readexactly(len(banner)), STEP)
        assert first == banner
        proc.stdin.write(b"EHLO e2e\r\n")
        await proc.stdin.drain()
        assert await asyncio.wait_for(proc.stdout.readline(), STEP) == b"250 hello EHLO e2e\r\n"
        proc.stdin.close()
        assert await asyncio.wait_for(proc.stdout.read(), STEP) == b""
        code = await asyncio.wait_for(proc.wait(), STEP)
        errors = (await proc.stderr.read()).decode(errors="replace")
        assert code == 0, errors


async def test_hundred_concurrent_streams_through_port_forward(
    gateway: Gateway, start_agent: AgentFactory, targets: Targets, processes: Processes
) -> None:
    streams = 100
    connected = 0
    everyone_connected = asyncio.Event()

    async def echo_once_all_are_open(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Hold every stream until all of them are open at once, then echo."""
        nonlocal connected
        connected += 1
        if connected == streams:
            everyone_connected.set()
        await asyncio.wait_for(everyone_connected.wait(), 60.0)
        await echo_handler(reader, writer)

    port = targets.serve(echo_once_all_are_open)
    await asyncio.to_thread(start_agent, gateway, allowed_ports=[port])
    token = await asyncio.to_thread(gateway.user_token)
    forward, local = await asyncio.to_thread(start_port_forward, processes, gateway, token, port)
    payloads = [os.urandom(64 * 1024 + 1531 * index) for index in range(streams)]

    received = await asyncio.gather(*(echo_roundtrip(local, payload) for payload in payloads))

    assert connected == streams
    for index, (payload, echoed) in enumerate(zip(payloads, received, strict=True)):
        assert len(echoed) == len(payload), f"stream {index}: {len(echoed)} of {len(payload)}"
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest(), index
    assert forward.returncode is None, forward.describe()


def test_user_half_close_reaches_the_target_and_the_reply_still_arrives(
    gateway: Gateway, start_agent: AgentFactory, targets: Targets
) -> None:
    async def digest_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()
        reply = f"received {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}\n"
        writer.write(reply.encode())
        await writer.drain()
        writer.close()

    port = targets.serve(digest_after_eof)
    start_agent(gateway, allowed_ports=[port])
    payload = os.urandom(3 * 1024 * 1024 + 7)

    result = run(
        [KUBERDE, "connect", AGENT_ID, "--port", str(port)],
        gateway.client_env(gateway.user_token()),
        input=payload,
    )

    assert result.returncode == 0, result.explain()
    expected = f"received {len(payload)} bytes, sha256 {hashlib.sha256(payload).hexdigest()}\n"
    assert result.text == expected


async def test_workspace_half_close_keeps_the_user_direction_open(
    gateway: Gateway, start_agent: AgentFactory, targets: Targets
) -> None:
    """The target finishes sending first; connect's stdout ends while stdin keeps flowing."""
    heard: asyncio.Queue[bytes] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def greet_then_listen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"all I have to say\n")
        writer.write_eof()
        data = await reader.read()
        loop.call_soon_threadsafe(heard.put_nowait, data)
        writer.close()

    port = targets.serve(greet_then_listen)
    await asyncio.to_thread(start_agent, gateway, allowed_ports=[port])
    token = await asyncio.to_thread(gateway.user_token)
    argv = [KUBERDE, "connect", AGENT_ID, "--port", str(port)]
    async with spawn(argv, gateway.client_env(token)) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        assert await asyncio.wait_for(proc.stdout.read(), STEP) == b"all I have to say\n"
        assert proc.returncode is None
        proc.stdin.write(b"still listening?")
        await proc.stdin.drain()
        proc.stdin.close()
        assert await asyncio.wait_for(heard.get(), STEP) == b"still listening?"
        code = await asyncio.wait_for(proc.wait(), STEP)
        errors = (await proc.stderr.read()).decode(errors="replace")
        assert code == 0, errors


def test_ssh_over_tls_with_the_ca_file(
    start_gateway: GatewayFactory,
    start_agent: AgentFactory,
    sshd: SshServer,
    tls_files: TlsFiles,
) -> None:
    gateway = start_gateway(tls=tls_files)
    assert gateway.url.startswith("https://127.0.0.1:")
    agent = start_agent(gateway, ca_file=tls_files.ca_cert)
    assert agent.env["SERVER_URL"].startswith("wss://")

    result = run(
        ["ssh", *sshd.proxy_options(), f"{USER}@{HOST}", "echo over-tls"],
        gateway.client_env(gateway.user_token(), ca_file=tls_files.ca_cert),
    )

    assert result.returncode == 0, result.explain()
    assert result.text == "over-tls\n"


def test_tls_without_the_ca_file_is_refused(
    start_gateway: GatewayFactory,
    start_agent: AgentFactory,
    tls_files: TlsFiles,
) -> None:
    gateway = start_gateway(tls=tls_files)
    start_agent(gateway, ca_file=tls_files.ca_cert)
    untrusting = start_agent(gateway, name="nocert", wait_online=False)

    untrusting.proc.wait_for_log(r"(?i)certificate verify failed")
    assert untrusting.proc.returncode is None, "the agent keeps retrying, it does not give up"
    assert gateway.agents().get("user-alice-nocert") is None

    result = run(
        [KUBERDE, "connect", AGENT_ID, "--port", "22", "--kind", "ssh"],
        gateway.client_env(gateway.user_token()),
        input=b"SSH-2.0-should-never-be-sent\r\n",
    )
    assert result.returncode == 1, result.explain()
    assert result.stdout == b""
    assert "certificate verify failed" in result.errors.lower(), result.explain()
    assert "KUBERDE_CA_FILE" in result.errors, result.explain()
