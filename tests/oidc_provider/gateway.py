"""A real gateway on 127.0.0.1 whose verifier (and extra routes) each test chooses.

Agents dial `/ws` with credentials minted by the gateway's key (`mint_agent`) or any token a
test passes; users connect on `/connect`. Log records of the whole run are kept so tests can
prove no token ever reached a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from kuberde.auth import SigningKey, TokenIssuer, TokenVerifier, load_or_create_signing_key
from kuberde.gateway.app import create_app
from kuberde.gateway.directory import AgentRecord, WakeError
from kuberde.gateway.server import ListenAddress, bind_socket, socket_url, start_site
from kuberde.mux import Session
from kuberde.wslink import WebSocketLink
from tests.integration.conftest import WAIT, WorkspacePeer, bearer, echo, next_message

VerifierFactory = Callable[[str, SigningKey], TokenVerifier]
RoutesFactory = Callable[[str, SigningKey, TokenVerifier], Iterable[web.RouteDef]]


class StaticDirectory:
    """Agents the gateway knows while they are offline; waking is not part of these tests."""

    def __init__(self, *records: AgentRecord) -> None:
        self.by_id = {record.agent_id: record for record in records}

    def lookup(self, agent_id: str) -> AgentRecord | None:
        return self.by_id.get(agent_id)

    def records(self) -> list[AgentRecord]:
        return list(self.by_id.values())

    async def catch_up(self, *agent_ids: str) -> None:
        """Nothing changes behind a static directory's back."""

    async def request_wake(self, agent_id: str, requested_by: str) -> None:
        raise WakeError("workspaces are not woken in these tests")


class LogCapture(logging.Handler):
    """Every record of the `kuberde` and `aiohttp` loggers, formatted with its arguments."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@contextlib.contextmanager
def captured_logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    loggers = [logging.getLogger(name) for name in ("kuberde", "aiohttp")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(capture)
        logger.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(capture)
            logger.setLevel(level)


@dataclass
class GatewayUnderTest:
    url: str
    key: SigningKey
    app: web.Application
    http: aiohttp.ClientSession
    peers: list[WorkspacePeer] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    def mint_agent(self, owner: str, name: str, uid: str | None = None) -> str:
        return TokenIssuer(self.key).mint_agent(owner, name, uid=uid)

    async def peer(self, token: str, name: str = "peer") -> WorkspacePeer:
        """Dial /ws with `token` and serve an echo workspace."""
        ws = await asyncio.wait_for(
            self.http.ws_connect(f"{self.ws_url}/ws", headers=bearer(token)), WAIT
        )
        peer = WorkspacePeer(ws, Session(WebSocketLink(ws), is_client=True, name=name), echo())
        self.peers.append(peer)
        return peer

    async def refusal(self, path: str, token: str | None) -> tuple[int, dict[str, str]]:
        """Status and JSON body of a WebSocket upgrade the gateway refuses."""
        headers = {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            **(bearer(token) if token is not None else {}),
        }
        async with asyncio.timeout(WAIT), self.http.get(self.url + path, headers=headers) as resp:
            assert resp.status != 101, f"{path} was upgraded"
            return resp.status, json.loads(await resp.text())

    async def echo_through(
        self, agent: str, token: str, payload: bytes = b"ping", *, port: int | None = 22
    ) -> bytes:
        """Connect as a user, send `payload`, return what the workspace echoed."""
        query = "?kind=ssh" + (f"&port={port}" if port is not None else "")
        async with asyncio.timeout(WAIT):
            ws = await self.http.ws_connect(
                f"{self.ws_url}/connect/{agent}{query}", headers=bearer(token)
            )
            try:
                assert await next_message(ws) == {"event": "connected"}
                await ws.send_bytes(payload)
                echoed = await next_message(ws)
                assert isinstance(echoed, bytes)
                return echoed
            finally:
                await ws.close()

    async def online(self, agent: str) -> bool:
        """Whether `/mgmt/agents/{agent}` says the agent is connected."""
        management = TokenIssuer(self.key).mint_management()
        async with (
            asyncio.timeout(WAIT),
            self.http.get(f"{self.url}/mgmt/agents/{agent}", headers=bearer(management)) as resp,
        ):
            if resp.status == 404:
                return False
            assert resp.status == 200, await resp.text()
            return bool((await resp.json())["online"])

    async def wait_online(self, agent: str) -> None:
        async def poll() -> None:
            while True:
                if await self.online(agent):
                    return
                await asyncio.sleep(0.02)

        await asyncio.wait_for(poll(), WAIT)


@contextlib.asynccontextmanager
async def running_gateway(
    state_dir: Path,
    verifier: VerifierFactory,
    *,
    routes: RoutesFactory | None = None,
    directory: StaticDirectory | None = None,
) -> AsyncIterator[GatewayUnderTest]:
    key = load_or_create_signing_key(state_dir)
    sock = bind_socket(ListenAddress("127.0.0.1", 0))
    url = socket_url(sock, tls=False)
    chosen = verifier(url, key)
    app = create_app(chosen, directory=directory)
    if routes is not None:
        app.router.add_routes(list(routes(url, key, chosen)))
    runner = await start_site(app, sock, None)
    try:
        async with aiohttp.ClientSession() as http:
            gateway = GatewayUnderTest(url, key, app, http)
            try:
                yield gateway
            finally:
                for peer in gateway.peers:
                    await asyncio.wait_for(peer.close(), WAIT)
    finally:
        await runner.cleanup()
