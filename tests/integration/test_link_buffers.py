"""Mux links cap what the kernel queues for them, on the gateway's side (agent and user
sessions), on the real agent's and on `kuberde port-forward`'s: bytes in the kernel's FIFO
cannot be scheduled, so a new stream's first bytes would wait behind them (issue 11;
`kuberde.linkbuffers`).

Checked on the live sockets: the gateway's through its socket hook, the agent's and the
port-forward's (they run in this process) by finding the socket bound to the address the
gateway saw."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
from collections.abc import Iterator

from aiohttp import web

from kuberde.cli.config import ClientSettings
from kuberde.cli.portforward import PortMapping, serve_port_forward
from kuberde.linkbuffers import NOTSENT_LOWAT, RECEIVE_BUFFER
from tests.integration.conftest import WAIT, RunningGateway, bearer
from tests.integration.kube import eventually
from tests.integration.test_agent_bridge import (
    FakeGateway,
    agent_config,
    free_port,
    running_agent,
)

_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)


def caps(sock: socket.socket) -> tuple[int, int]:
    return (
        sock.getsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT),
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
    )


#: What Linux reports once the caps are set: it doubles the receive buffer asked for.
CAPPED = (NOTSENT_LOWAT, 2 * RECEIVE_BUFFER)


async def eventually_capped(sock: socket.socket, what: str) -> None:
    await eventually(lambda: caps(sock) == CAPPED, f"{what} capped to {CAPPED}")


async def test_the_gateways_agent_and_user_session_sockets_are_capped(
    gateway: RunningGateway,
) -> None:
    sockets: dict[str, socket.socket] = {}

    def keep(path: str, sock: socket.socket) -> None:
        sockets[path] = sock

    gateway.server_socket_hooks.append(keep)
    await gateway.peer("alice", "dev")
    session = await asyncio.wait_for(
        gateway.http.ws_connect(
            f"{gateway.ws_url}/session/dev", headers=bearer(gateway.user("alice"))
        ),
        WAIT,
    )
    try:
        await eventually_capped(sockets["/ws"], "the agent session's socket")
        await eventually_capped(sockets["/session/dev"], "the user session's socket")
    finally:
        await session.close()


async def test_the_port_forward_session_socket_is_capped(gateway: RunningGateway) -> None:
    sockets: dict[str, socket.socket] = {}
    gateway.server_socket_hooks.append(lambda path, sock: sockets.__setitem__(path, sock))
    await gateway.peer("alice", "dev")
    settings = ClientSettings(server=gateway.url, token=gateway.user("alice"))
    listening = free_port()
    forwarding = asyncio.create_task(
        serve_port_forward(
            settings, "dev", [PortMapping(listening, 22)], "127.0.0.1", stderr=io.StringIO()
        )
    )
    try:
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", listening)
                    break
                except ConnectionRefusedError:
                    await asyncio.sleep(0.05)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping", "the peer echoes"
        writer.close()
        with own_socket_at(sockets["/session/dev"].getpeername()) as sock:
            await eventually_capped(sock, "kuberde port-forward's socket")
    finally:
        forwarding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await forwarding


@contextlib.contextmanager
def own_socket_at(address: tuple[str, int]) -> Iterator[socket.socket]:
    """A duplicate of this process's TCP socket bound to `address` (same options)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            found = sock.type == socket.SOCK_STREAM and sock.getsockname() == address
        except OSError:
            found = False
        if found:
            with sock:
                yield sock
            return
        sock.close()
    raise AssertionError(f"no socket of ours is bound to {address}")


class RecordingGateway(FakeGateway):
    """The stand-in gateway, noting each agent connection's address."""

    def __init__(self) -> None:
        super().__init__()
        self.agent_addresses: list[tuple[str, int]] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        self.agent_addresses.append(request.transport.get_extra_info("peername"))
        return await super()._handle(request)


async def test_the_agents_socket_to_the_gateway_is_capped() -> None:
    fake = RecordingGateway()
    await fake.start()
    try:
        async with running_agent(agent_config(fake, free_port())):
            await fake.next_session()
            with own_socket_at(fake.agent_addresses[0]) as sock:
                await eventually_capped(sock, "the agent's socket")
    finally:
        await fake.stop()
