"""The app proxy's keep-alive pool over a real mux session pair, with an HTTP app (h11) on
the far side: what gets parked, who may take it, and that nothing parked outlives its use."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import h11
import pytest

from kuberde.gateway.guard import StreamGuard
from kuberde.gateway.limits import StreamQuota
from kuberde.gateway.streamhttp import StreamHttp
from kuberde.gateway.upstreams import Upstream, UpstreamKey, UpstreamPool
from kuberde.mux import Session, SessionClosed, Stream, StreamReset
from tests.unit.memory_link import TIMEOUT, session_pair

pytestmark = pytest.mark.timeout(30)


async def serve_http(stream: Stream) -> None:
    """An app: answers each request with its path; `/close` ends the connection after the
    answer, `/fin-soon` closes it a moment later (an app's own keep-alive timeout)."""
    conn = h11.Connection(h11.SERVER)
    target = b""
    with contextlib.suppress(StreamReset):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.read(65536))
            elif isinstance(event, h11.Request):
                target = event.target
            elif isinstance(event, h11.EndOfMessage):
                headers = [(b"content-length", str(len(target)).encode())]
                if target == b"/close":
                    headers.append((b"connection", b"close"))
                stream.write(conn.send(h11.Response(status_code=200, headers=headers)))
                stream.write(conn.send(h11.Data(data=target)))
                stream.write(conn.send(h11.EndOfMessage()))
                await stream.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    stream.close_write()
                    return
                if target == b"/fin-soon":
                    await asyncio.sleep(0.05)
                    stream.close_write()
                    return
                conn.start_next_cycle()
            else:
                return


@dataclass
class App:
    """The gateway's end of a session to an app, and alice's quota and pool key there."""

    session: Session
    quota: StreamQuota = field(default_factory=StreamQuota)

    @property
    def key(self) -> UpstreamKey:
        return UpstreamKey(self.session, 8080, "alice")

    @property
    def alice_streams(self) -> int:
        return self.quota.usage("user:alice")[0]

    def connect(self) -> Upstream:
        guard = StreamGuard(self.quota, "alice", "agent-1")
        stream = self.session.open_stream()
        guard.attach(stream)
        return Upstream(StreamHttp(stream), guard)


@contextlib.asynccontextmanager
async def app_session() -> AsyncIterator[App]:
    async with session_pair() as pair:

        async def accept() -> None:
            async with asyncio.TaskGroup() as group:
                while True:
                    try:
                        stream = await pair.server.accept()
                    except SessionClosed:
                        return
                    group.create_task(serve_http(stream))

        task = asyncio.create_task(accept())
        try:
            yield App(pair.client)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def get(upstream: Upstream, path: str, *, read_body: bool = True) -> bytes:
    exchange = upstream.exchange
    await exchange.send_head("GET", path, [("Host", "app")])
    await exchange.end_body()
    status, _, _ = await asyncio.wait_for(exchange.response(), TIMEOUT)
    assert status == 200
    return b"".join([chunk async for chunk in exchange.body()]) if read_body else b""


async def test_a_finished_exchange_is_taken_again_by_its_user_only() -> None:
    pool = UpstreamPool()
    async with app_session() as app:
        upstream = app.connect()
        assert await get(upstream, "/one") == b"/one"
        pool.give_back(app.key, upstream)
        assert pool.take(UpstreamKey(app.session, 8080, "bob")) is None
        assert pool.take(UpstreamKey(app.session, 8081, "alice")) is None
        again = pool.take(app.key)
        assert again is upstream and again.reused
        assert await get(again, "/two") == b"/two"
        assert pool.take(app.key) is None
        assert app.alice_streams == 1
        pool.give_back(app.key, again)
        pool.close_all()
        assert again.exchange.stream.is_closed
        assert app.alice_streams == 0


async def test_a_connection_the_app_ends_or_a_broken_exchange_is_closed_not_parked() -> None:
    pool = UpstreamPool()
    async with app_session() as app:
        closing, unread = app.connect(), app.connect()
        assert await get(closing, "/close") == b"/close"
        pool.give_back(app.key, closing)
        await get(unread, "/unread", read_body=False)
        pool.give_back(app.key, unread)
        assert pool.take(app.key) is None
        assert closing.exchange.stream.is_closed and unread.exchange.stream.is_closed
        assert app.alice_streams == 0


async def test_a_connection_the_app_closes_while_parked_is_skipped() -> None:
    pool = UpstreamPool()
    async with app_session() as app:
        upstream = app.connect()
        assert await get(upstream, "/fin-soon") == b"/fin-soon"
        pool.give_back(app.key, upstream)
        await asyncio.sleep(0.3)
        assert pool.take(app.key) is None
        assert upstream.exchange.stream.is_closed
        assert app.alice_streams == 0


async def test_parked_connections_expire_and_are_capped_per_app() -> None:
    pool = UpstreamPool(idle_timeout=0.1, per_app=2)
    async with app_session() as app:
        upstreams = [app.connect() for _ in range(3)]
        for index, upstream in enumerate(upstreams):
            assert await get(upstream, f"/{index}") == f"/{index}".encode()
        for upstream in upstreams:
            pool.give_back(app.key, upstream)
        assert upstreams[2].exchange.stream.is_closed
        assert app.alice_streams == 2
        await asyncio.sleep(0.3)
        assert all(upstream.exchange.stream.is_closed for upstream in upstreams)
        assert app.alice_streams == 0
        assert pool.take(app.key) is None
