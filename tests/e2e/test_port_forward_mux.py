"""`kuberde port-forward` keeps one WebSocket (a user-side mux session) for all its local
connections; real CLI, gateway, agent and targets over loopback.

"One WebSocket" is read from the kernel: the port-forward process's TCP connections to
the gateway's port (its socket inodes in /proc/PID/fd, matched in /proc/net/tcp).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    STEP,
    AgentFactory,
    Gateway,
    GatewayFactory,
    Processes,
    Targets,
    TlsFiles,
    echo_handler,
    echo_roundtrip,
    start_port_forward,
)

pytestmark = pytest.mark.timeout(120)


def connections_to(pid: int, port: int) -> int:
    """Established TCP connections of process `pid` whose remote port is `port`."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed since the listing: not a connection now
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if fields[3] == "01" and remote_port == port and fields[9] in inodes:
                count += 1
    return count


async def test_many_connections_share_one_websocket(
    gateway: Gateway, start_agent: AgentFactory, targets: Targets, processes: Processes
) -> None:
    port = targets.serve(echo_handler)
    await asyncio.to_thread(start_agent, gateway, allowed_ports=[port])
    token = await asyncio.to_thread(gateway.user_token)
    forward, local = await asyncio.to_thread(start_port_forward, processes, gateway, token, port)
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for _ in range(20):
        opened.append(await asyncio.wait_for(asyncio.open_connection("127.0.0.1", local), STEP))
    for index, (reader, writer) in enumerate(opened):
        writer.write(b"hello %d\n" % index)
        await writer.drain()
        assert await asyncio.wait_for(reader.readline(), STEP) == b"hello %d\n" % index
    assert connections_to(forward.pid, gateway.port) == 1
    for _, writer in opened:
        writer.close()
    assert forward.returncode is None, forward.describe()


class CountingRelay:
    """A TCP relay to the gateway that counts the connections it accepts: a port-forward's
    one session, and each HTTP request it makes (a connection each)."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._relaying: set[asyncio.Task[Any]] = set()
        self.accepted = 0
        self.port = 0

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def finished(self) -> None:
        """Every relayed connection has ended (a task left over would log its cancellation)."""
        await asyncio.wait_for(asyncio.gather(*self._relaying), STEP)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._relaying.add(task)
        task.add_done_callback(self._relaying.discard)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_a_burst_of_short_connections_asks_the_gateway_about_the_workspace_once(
    start_gateway: GatewayFactory,
    start_agent: AgentFactory,
    targets: Targets,
    processes: Processes,
    tls_files: TlsFiles,
) -> None:
    """Each connection watches for a wake, which needs an HTTPS question to the gateway;
    connections that end before its answer must not each start (and abandon) one of their
    own: `make bench` saw 21 ms per new connection over wss://, a TLS handshake each."""
    gateway = await asyncio.to_thread(start_gateway, tls=tls_files)
    port = targets.serve(echo_handler)
    await asyncio.to_thread(start_agent, gateway, allowed_ports=[port], ca_file=tls_files.ca_cert)
    token = await asyncio.to_thread(gateway.user_token)
    relay = CountingRelay(gateway.port)
    server = await relay.start()
    env = gateway.client_env(token, ca_file=tls_files.ca_cert)
    env["KUBERDE_SERVER"] = f"https://127.0.0.1:{relay.port}"
    async with server:
        forward, local = await asyncio.to_thread(
            start_port_forward, processes, gateway, token, port, env=env
        )
        started = time.monotonic()
        for index in range(30):
            payload = b"connection %d" % index
            assert await asyncio.wait_for(echo_roundtrip(local, payload), STEP) == payload
        elapsed = time.monotonic() - started
        # The start-up's check that the workspace exists, the session, and a question at
        # most once a second (an answer is good for 1 s); abandoned ones made it 32 here.
        assert relay.accepted <= 3 + int(elapsed), (relay.accepted, elapsed)
        assert forward.returncode is None, forward.describe()
        assert await asyncio.to_thread(forward.stop) == 0
        await relay.finished()


async def test_data_sent_and_closed_before_the_session_is_up_arrives(
    gateway: Gateway, start_agent: AgentFactory, targets: Targets, processes: Processes
) -> None:
    """The first client talks and leaves before the session has even been dialled; a second
    one leaves before its stream is open. Both deliver their bytes and EOF."""
    heard: asyncio.Queue[bytes] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Targets serve on a loop of their own: hand over through this test's loop.
        loop.call_soon_threadsafe(heard.put_nowait, await reader.read())
        writer.close()

    port = targets.serve(record)
    await asyncio.to_thread(start_agent, gateway, allowed_ports=[port])
    token = await asyncio.to_thread(gateway.user_token)
    forward, local = await asyncio.to_thread(start_port_forward, processes, gateway, token, port)
    for message in (b"before the upgrade", b"before the stream"):
        with socket.create_connection(("127.0.0.1", local), timeout=STEP) as client:
            client.sendall(message)
            client.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(heard.get(), STEP) == message
    assert forward.returncode is None, forward.describe()


async def test_a_connection_past_the_stream_limit_is_refused_and_the_cli_says_why(
    start_gateway: GatewayFactory,
    start_agent: AgentFactory,
    targets: Targets,
    processes: Processes,
) -> None:
    """Over the cap, the session refuses that one stream at once with the reason, and
    `port-forward` prints it; the session and the connections within the cap carry on."""
    gateway = await asyncio.to_thread(start_gateway, options=["--max-streams-per-user", "2"])
    port = targets.serve(echo_handler)
    await asyncio.to_thread(start_agent, gateway, allowed_ports=[port])
    token = await asyncio.to_thread(gateway.user_token)
    forward, local = await asyncio.to_thread(start_port_forward, processes, gateway, token, port)
    held = [await asyncio.wait_for(asyncio.open_connection("127.0.0.1", local), STEP) for _ in "ab"]
    for reader, writer in held:
        writer.write(b"within the limit\n")
        assert await asyncio.wait_for(reader.readline(), STEP) == b"within the limit\n"

    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", local), STEP)
    writer.write(b"one too many\n")
    assert await asyncio.wait_for(reader.read(), STEP) == b""  # closed, nothing echoed
    writer.close()
    await asyncio.to_thread(
        forward.wait_for_log,
        r"connection from 127\.0\.0\.1:\d+ ended: "
        r"stream limit: 2 concurrent streams per user; close some first",
    )
    for reader, writer in held:
        writer.write(b"still served\n")
        assert await asyncio.wait_for(reader.readline(), STEP) == b"still served\n"
        writer.close()
    assert connections_to(forward.pid, gateway.port) == 1
    assert forward.returncode is None, forward.describe()


def test_agent_restart_keeps_the_session_and_gateway_restart_redials(
    start_gateway: GatewayFactory,
    start_agent: AgentFactory,
    targets: Targets,
    processes: Processes,
) -> None:
    gateway = start_gateway()
    port = targets.serve(echo_handler)
    agent = start_agent(gateway, allowed_ports=[port])
    forward, local = start_port_forward(processes, gateway, gateway.user_token(), port)
    assert asyncio.run(echo_roundtrip(local, b"first")) == b"first"

    assert agent.proc.stop() == 0
    start_agent(gateway, reuse=agent)
    assert (
        asyncio.run(echo_roundtrip(local, b"after the agent restart")) == b"after the agent restart"
    )
    assert connections_to(forward.pid, gateway.port) == 1, "the session outlived the agent"

    assert gateway.proc.stop() == 0
    restarted = start_gateway(state_dir=gateway.state_dir, port=gateway.port)
    restarted.wait_agent()
    payload = os.urandom(256 * 1024)
    assert asyncio.run(echo_roundtrip(local, payload)) == payload
    assert connections_to(forward.pid, gateway.port) == 1
    assert forward.returncode is None, forward.describe()
