"""The asyncio yamux session over in-memory links: real `Session.run()` tasks on both ends.

Some assertions look at a stream's buffered byte count (`_recv_buffered`, `_send_size`):
flow control is about how much memory each side holds, and nothing public reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import pytest

from kuberde.mux.frame import (
    Flag,
    Frame,
    FrameDecoder,
    FrameType,
    GoAwayCode,
    ProtocolError,
    encode_header,
)
from kuberde.mux.session import (
    BULK_FRAME,
    BULK_WINDOW,
    INITIAL_WINDOW,
    Session,
    SessionClosed,
    SessionConfig,
    Stream,
    StreamReset,
)
from tests.unit.memory_link import TIMEOUT, MemoryLink, link_pair, session_pair

MIB = 1024 * 1024


# ---- helpers ---------------------------------------------------------------------------


async def eventually(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while True:
            if condition():
                return
            await asyncio.sleep(0.001)


async def quiesce(*links: MemoryLink) -> None:
    """Let the loop run until no open link has undelivered messages for many rounds in a row."""

    async def calm() -> None:
        rounds = 0
        while rounds < 100:
            await asyncio.sleep(0)
            idle = all(link.closed or link.inbox.empty() for link in links)
            rounds = rounds + 1 if idle else 0

    await asyncio.wait_for(calm(), TIMEOUT)


def decode(messages: Iterable[bytes]) -> list[Frame]:
    decoder = FrameDecoder()
    frames: list[Frame] = []
    for message in messages:
        frames.extend(decoder.feed(message))
    return frames


def data_bytes_on_link(link: MemoryLink, stream_id: int) -> int:
    return sum(
        len(frame.payload)
        for frame in decode(link.sent)
        if frame.type is FrameType.DATA
        and frame.stream_id == stream_id
        and not frame.flags & Flag.RST
    )


async def read_to_eof(stream: Stream) -> bytes:
    parts: list[bytes] = []
    while chunk := await stream.read():
        parts.append(chunk)
    return b"".join(parts)


async def echo(stream: Stream) -> None:
    with contextlib.suppress(StreamReset):
        while chunk := await stream.read():
            stream.write(chunk)
            await stream.drain()
        stream.close_write()


@contextlib.asynccontextmanager
async def echo_server(session: Session) -> AsyncIterator[None]:
    """Echo every stream the peer opens, for as long as the block runs."""

    async def serve() -> None:
        async with asyncio.TaskGroup() as group:
            while True:
                try:
                    stream = await session.accept()
                except SessionClosed:
                    return
                group.create_task(echo(stream))

    task = asyncio.create_task(serve())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def round_trip(session: Session, payload: bytes) -> bytes:
    stream = session.open_stream(payload)
    stream.close_write()
    return await asyncio.wait_for(read_to_eof(stream), TIMEOUT)


class RawPeer:
    """The far end of a link, speaking hand-made frames to one real session."""

    def __init__(self, link: MemoryLink) -> None:
        self.link = link
        self._decoder = FrameDecoder()
        self._frames: list[Frame] = []
        self.received: list[Frame] = []

    async def send(self, *frames: bytes) -> None:
        await self.link.send(b"".join(frames))

    async def delivered(self) -> None:
        """Wait until the session has taken everything we sent."""
        assert self.link.peer is not None
        await quiesce(self.link.peer)

    async def next_frame(self) -> Frame | None:
        """The next frame from the session, or None once it closed the link."""
        while not self._frames:
            data = await asyncio.wait_for(self.link.receive(), TIMEOUT)
            if data is None:
                return None
            self._frames.extend(self._decoder.feed(data))
        frame = self._frames.pop(0)
        self.received.append(frame)
        return frame

    async def expect(self, predicate: Callable[[Frame], bool]) -> Frame:
        while True:
            frame = await self.next_frame()
            assert frame is not None, f"link closed; frames seen: {self.received}"
            if predicate(frame):
                return frame

    async def expect_protocol_error(self) -> None:
        frame = await self.expect(lambda f: f.type is FrameType.GO_AWAY)
        assert frame.length == GoAwayCode.PROTOCOL_ERROR


def header(frame_type: FrameType, flags: Flag, stream_id: int, length: int) -> bytes:
    return encode_header(frame_type, flags, stream_id, length)


def data(stream_id: int, payload: bytes = b"", flags: Flag = Flag.NONE) -> bytes:
    return header(FrameType.DATA, flags, stream_id, len(payload)) + payload


@contextlib.asynccontextmanager
async def raw_peer(
    config: SessionConfig | None = None, *, session_is_client: bool = False
) -> AsyncIterator[tuple[Session, RawPeer]]:
    session_link, raw_link = link_pair()
    session = Session(session_link, is_client=session_is_client, config=config, name="dut")
    task = asyncio.create_task(session.run())
    try:
        yield session, RawPeer(raw_link)
    finally:
        await session.close()
        await asyncio.wait_for(task, TIMEOUT)


def noise(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# ---- opening and accepting -------------------------------------------------------------


async def test_initial_bytes_travel_in_the_same_frame_as_the_syn() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream(b"\x00\x05hello")
        await eventually(lambda: bool(pair.client_link.sent))
        first = decode(pair.client_link.sent[:1])
        assert first == [Frame(FrameType.DATA, Flag.SYN, stream.id, 7, b"\x00\x05hello")]
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        assert accepted.id == stream.id
        assert await asyncio.wait_for(accepted.read(), TIMEOUT) == b"\x00\x05hello"


async def test_with_a_larger_window_the_syn_grant_and_initial_bytes_share_one_message() -> None:
    config = SessionConfig(receive_window=MIB)
    async with session_pair(config, config) as pair:
        stream = pair.client.open_stream(b"preamble")
        await eventually(lambda: bool(pair.client_link.sent))
        assert decode(pair.client_link.sent[:1]) == [
            Frame(FrameType.WINDOW_UPDATE, Flag.SYN, stream.id, MIB - INITIAL_WINDOW),
            Frame(FrameType.DATA, Flag.NONE, stream.id, 8, b"preamble"),
        ]
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        assert await asyncio.wait_for(accepted.read(), TIMEOUT) == b"preamble"


async def test_accept_returns_streams_in_order_with_the_opener_parity() -> None:
    async with session_pair() as pair:
        opened = [pair.client.open_stream() for _ in range(3)]
        assert [stream.id for stream in opened] == [1, 3, 5]
        assert all(stream.opened_locally for stream in opened)
        accepted = [await asyncio.wait_for(pair.server.accept(), TIMEOUT) for _ in range(3)]
        assert [stream.id for stream in accepted] == [1, 3, 5]
        assert not any(stream.opened_locally for stream in accepted)
        from_server = pair.server.open_stream(b"x")
        assert from_server.id == 2
        assert (await asyncio.wait_for(pair.client.accept(), TIMEOUT)).id == 2


async def test_an_empty_open_still_reaches_the_peer() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream()
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        accepted.write(b"server speaks first")
        assert await asyncio.wait_for(stream.read(), TIMEOUT) == b"server speaks first"


async def test_a_stream_closed_before_it_was_ever_sent_opens_and_ends_cleanly() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream(b"all at once")
        stream.close_write()
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        assert await asyncio.wait_for(read_to_eof(accepted), TIMEOUT) == b"all at once"
        accepted.write(b"reply")
        accepted.close_write()
        assert await asyncio.wait_for(read_to_eof(stream), TIMEOUT) == b"reply"
        await asyncio.wait_for(stream.wait_closed(), TIMEOUT)
        await asyncio.wait_for(accepted.wait_closed(), TIMEOUT)


async def test_a_stream_reset_before_it_was_ever_sent_is_reset_on_the_peer() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream(b"never mind")
        stream.reset("changed my mind")
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        with pytest.raises(StreamReset) as caught:
            await asyncio.wait_for(read_to_eof(accepted), TIMEOUT)
        assert caught.value.reason == "changed my mind"
        await eventually(lambda: pair.client.stream_count == 0 and pair.server.stream_count == 0)


# ---- data ------------------------------------------------------------------------------


async def pump(stream: Stream, payload: bytes, rng: random.Random) -> None:
    view = memoryview(payload)
    offset = 0
    while offset < len(view):
        size = rng.randint(1, 150_000)
        stream.write(bytes(view[offset : offset + size]))
        offset += size
        await stream.drain()
    stream.close_write()


async def drink(stream: Stream, rng: random.Random) -> bytes:
    parts: list[bytes] = []
    while chunk := await stream.read(rng.choice([-1, 1, 100, 4096, 65536, 300_000])):
        parts.append(chunk)
    return b"".join(parts)


async def test_several_megabytes_each_way_arrive_intact() -> None:
    up, down = noise(5 * MIB + 17, seed=1), noise(4 * MIB + 3, seed=2)
    async with session_pair() as pair:
        stream = pair.client.open_stream()
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        results = await asyncio.wait_for(
            asyncio.gather(
                pump(stream, up, random.Random(3)),
                pump(accepted, down, random.Random(4)),
                drink(accepted, random.Random(5)),
                drink(stream, random.Random(6)),
            ),
            TIMEOUT * 3,
        )
        assert results[2] == up
        assert results[3] == down
        await asyncio.wait_for(stream.wait_closed(), TIMEOUT)
        await asyncio.wait_for(accepted.wait_closed(), TIMEOUT)
        assert pair.client.stream_count == pair.server.stream_count == 0


async def test_read_with_a_limit_returns_at_most_that_many_bytes_in_order() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream(b"abc")
        stream.write(b"defgh")
        stream.close_write()
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        await eventually(lambda: accepted._remote_fin)
        assert await accepted.read(2) == b"ab"
        assert await accepted.read(4) == b"cdef"
        assert await accepted.read(100) == b"gh"
        assert await accepted.read() == b""
        assert await accepted.read() == b""


# ---- half-close, reset -----------------------------------------------------------------


@pytest.mark.parametrize("client_closes_first", [True, False])
async def test_half_close_keeps_the_other_direction_flowing(client_closes_first: bool) -> None:
    async with session_pair() as pair:
        opened = pair.client.open_stream()
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        closer, other = (opened, accepted) if client_closes_first else (accepted, opened)
        closer.write(b"last words")
        closer.close_write()
        assert await asyncio.wait_for(read_to_eof(other), TIMEOUT) == b"last words"
        assert not closer.is_closed and not other.is_closed
        with pytest.raises(StreamReset, match="write after close_write"):
            closer.write(b"too late")
        reply = noise(MIB, seed=20)
        other.write(reply)
        other.close_write()
        assert await asyncio.wait_for(read_to_eof(closer), TIMEOUT) == reply
        await asyncio.wait_for(closer.wait_closed(), TIMEOUT)
        await asyncio.wait_for(other.wait_closed(), TIMEOUT)
        assert closer.error is None and other.error is None
        assert pair.client.stream_count == pair.server.stream_count == 0


async def test_write_after_close_write_raises_and_close_write_is_idempotent() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream()
        stream.close_write()
        stream.close_write()
        with pytest.raises(StreamReset):
            stream.write(b"x")
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        assert await asyncio.wait_for(read_to_eof(accepted), TIMEOUT) == b""
        fins = [
            frame
            for frame in decode(pair.client_link.sent)
            if frame.stream_id == stream.id and frame.flags & Flag.FIN
        ]
        assert len(fins) == 1


async def test_reset_reason_reaches_the_peer() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream(b"\x00\x10{}")
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        await asyncio.wait_for(accepted.read(), TIMEOUT)
        accepted.reset("port 5432 is not allowed for this agent")
        with pytest.raises(StreamReset) as caught:
            await asyncio.wait_for(stream.read(), TIMEOUT)
        assert caught.value.reason == "port 5432 is not allowed for this agent"
        assert not isinstance(caught.value, SessionClosed)
        assert stream.error is caught.value
        await asyncio.wait_for(stream.wait_closed(), TIMEOUT)
        assert pair.client.stream_count == pair.server.stream_count == 0
        assert not pair.client.is_closed and not pair.server.is_closed


async def test_a_long_reset_reason_is_cut_to_one_kibibyte() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream()
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        accepted.reset("r" * 5000)
        with pytest.raises(StreamReset) as caught:
            await asyncio.wait_for(stream.read(), TIMEOUT)
        assert caught.value.reason == "r" * 1024


async def test_a_reset_without_reason_still_reaches_the_peer() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream(b"x")
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        stream.reset()
        with pytest.raises(StreamReset):
            await asyncio.wait_for(read_to_eof(accepted), TIMEOUT)
        assert accepted.error is not None


async def test_read_write_and_drain_after_a_local_reset_raise() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream(b"x")
        await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        stream.reset("bye")
        with pytest.raises(StreamReset, match="bye"):
            await stream.read()
        with pytest.raises(StreamReset, match="bye"):
            stream.write(b"y")
        with pytest.raises(StreamReset, match="bye"):
            await stream.drain()
        assert stream.is_closed
        stream.reset("again")
        stream.close_write()
        assert stream.error is not None and stream.error.reason == "bye"


async def test_read_after_a_local_reset_raises_even_with_unread_bytes() -> None:
    """reset() aborts both directions: bytes still buffered must not be handed out."""
    async with session_pair() as pair:
        stream = pair.client.open_stream()
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        accepted.write(b"unread")
        await eventually(lambda: stream._recv_buffered == 6)
        stream.reset("abort")
        with pytest.raises(StreamReset):
            await asyncio.wait_for(stream.read(), TIMEOUT)


async def test_a_pending_read_and_drain_are_woken_by_a_peer_reset() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream()
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        stream.write(noise(2 * MIB, seed=7))
        reader = asyncio.create_task(stream.read())
        drainer = asyncio.create_task(stream.drain())
        await quiesce(*pair.links)
        assert not reader.done() and not drainer.done()
        accepted.reset("gone")
        for task in (reader, drainer):
            with pytest.raises(StreamReset, match="gone"):
                await asyncio.wait_for(task, TIMEOUT)
        assert stream._send_size == 0


# ---- flow control ----------------------------------------------------------------------


async def test_a_reader_that_never_reads_bounds_both_sides_by_the_window() -> None:
    async with session_pair() as pair:
        stalled = pair.client.open_stream()
        stalled_peer = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        payload = noise(3 * MIB, seed=8)
        stalled.write(payload)
        drainer = asyncio.create_task(stalled.drain())
        await eventually(lambda: stalled_peer._recv_buffered == INITIAL_WINDOW)

        flowing = pair.client.open_stream()
        echo_task = asyncio.create_task(echo(await pair.server.accept()))
        other = noise(3 * MIB, seed=9)
        received, _ = await asyncio.wait_for(
            asyncio.gather(
                drink(flowing, random.Random(10)), pump(flowing, other, random.Random(11))
            ),
            TIMEOUT * 3,
        )
        assert received == other
        await asyncio.wait_for(echo_task, TIMEOUT)

        await quiesce(*pair.links)
        assert stalled_peer._recv_buffered == INITIAL_WINDOW
        assert data_bytes_on_link(pair.client_link, stalled.id) == INITIAL_WINDOW
        assert stalled._send_size == len(payload) - INITIAL_WINDOW
        assert not drainer.done()

        assert await asyncio.wait_for(stalled_peer.read(), TIMEOUT) == payload[:INITIAL_WINDOW]
        rest = await asyncio.wait_for(stalled_peer.read(len(payload)), TIMEOUT)
        while len(rest) < len(payload) - INITIAL_WINDOW:
            rest += await asyncio.wait_for(stalled_peer.read(), TIMEOUT)
        assert rest == payload[INITIAL_WINDOW:]
        await asyncio.wait_for(drainer, TIMEOUT)


async def test_window_updates_are_batched_to_half_a_window() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream()
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        stream.write(noise(INITIAL_WINDOW, seed=12))
        await eventually(lambda: accepted._recv_buffered == INITIAL_WINDOW)
        await accepted.read(INITIAL_WINDOW // 2 - 1)
        await quiesce(*pair.links)
        updates = [
            frame
            for frame in decode(pair.server_link.sent)
            if frame.type is FrameType.WINDOW_UPDATE and frame.stream_id == accepted.id
        ]
        assert [frame.flags for frame in updates] == [Flag.ACK]
        await accepted.read(1)
        await quiesce(*pair.links)
        updates = [
            frame
            for frame in decode(pair.server_link.sent)
            if frame.type is FrameType.WINDOW_UPDATE and frame.stream_id == accepted.id
        ]
        assert [(frame.flags, frame.length) for frame in updates[1:]] == [
            (Flag.NONE, INITIAL_WINDOW // 2)
        ]


async def test_larger_receive_windows_are_granted_at_open_and_accept_and_used() -> None:
    client_config = SessionConfig(receive_window=MIB)
    server_config = SessionConfig(receive_window=512 * 1024)
    async with session_pair(client_config, server_config) as pair:
        stream = pair.client.open_stream()
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        up, down = noise(3 * MIB, seed=13), noise(3 * MIB, seed=14)
        stream.write(up)
        accepted.write(down)
        await eventually(lambda: accepted._recv_buffered == 512 * 1024)
        await eventually(lambda: stream._recv_buffered == MIB)
        await quiesce(*pair.links)
        assert accepted._recv_buffered == 512 * 1024
        assert stream._recv_buffered == MIB
        assert data_bytes_on_link(pair.client_link, stream.id) == 512 * 1024
        assert data_bytes_on_link(pair.server_link, stream.id) == MIB
        stream.close_write()
        accepted.close_write()
        received_up, received_down = await asyncio.wait_for(
            asyncio.gather(read_to_eof(accepted), read_to_eof(stream)), TIMEOUT * 3
        )
        assert received_up == up and received_down == down


def test_receive_window_is_bounded() -> None:
    SessionConfig(receive_window=16 * MIB)
    for window in (INITIAL_WINDOW - 1, 16 * MIB + 1, 0):
        with pytest.raises(ValueError):
            SessionConfig(receive_window=window)


async def test_a_stream_sink_gets_data_eof_and_only_consumed_bytes_open_the_window() -> None:
    @dataclass
    class Sink:
        chunks: list[bytes] = field(default_factory=list)
        eof: int = 0
        resets: list[StreamReset] = field(default_factory=list)

        def data_received(self, data: bytes) -> None:
            self.chunks.append(data)

        def eof_received(self) -> None:
            self.eof += 1

        def stream_reset(self, error: StreamReset) -> None:
            self.resets.append(error)

        @property
        def size(self) -> int:
            return sum(map(len, self.chunks))

    async with session_pair() as pair:
        stream = pair.client.open_stream()
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        sink = Sink()
        accepted.set_sink(sink)
        payload = noise(MIB, seed=15)
        stream.write(payload)
        stream.close_write()
        await eventually(lambda: sink.size == INITIAL_WINDOW)
        await quiesce(*pair.links)
        assert sink.size == INITIAL_WINDOW
        assert accepted._recv_buffered == 0
        grants = [
            frame
            for frame in decode(pair.server_link.sent)
            if frame.type is FrameType.WINDOW_UPDATE and frame.stream_id == accepted.id
        ]
        assert [frame.length for frame in grants] == [0]

        def progressed(seen: int) -> Callable[[], bool]:
            return lambda: sink.size > seen or sink.eof > 0

        consumed = 0
        while sink.eof == 0:
            accepted.consumed(sink.size - consumed)
            consumed = sink.size
            await eventually(progressed(consumed))
        assert b"".join(sink.chunks) == payload
        assert sink.eof == 1 and sink.resets == []

        second = pair.client.open_stream(b"early")
        second_peer = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        await eventually(lambda: second_peer._recv_buffered == 5)
        late_sink = Sink()
        second_peer.set_sink(late_sink)
        assert late_sink.chunks == [b"early"]
        second.reset("stop")
        await eventually(lambda: bool(late_sink.resets))
        assert late_sink.resets[0].reason == "stop"
        assert late_sink.eof == 0


async def test_a_sink_set_after_eof_is_told_at_once() -> None:
    class Sink:
        def __init__(self) -> None:
            self.events: list[object] = []

        def data_received(self, data: bytes) -> None:
            self.events.append(data)

        def eof_received(self) -> None:
            self.events.append("eof")

        def stream_reset(self, error: StreamReset) -> None:
            self.events.append(error)

    async with session_pair() as pair:
        stream = pair.client.open_stream(b"done")
        stream.close_write()
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        await eventually(lambda: accepted._remote_fin)
        sink = Sink()
        accepted.set_sink(sink)
        assert sink.events == [b"done", "eof"]


async def test_producer_is_paused_above_the_send_buffer_limit_and_resumed_below_it() -> None:
    limit = 64 * 1024
    config = SessionConfig(send_buffer_limit=limit)
    async with session_pair(config, config) as pair:
        stream = pair.client.open_stream()
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        events: list[tuple[str, int]] = []
        stream.set_producer(
            lambda: events.append(("pause", stream._send_size)),
            lambda: events.append(("resume", stream._send_size)),
        )
        chunk = b"p" * 16 * 1024
        written = 0
        while not events:
            stream.write(chunk)
            written += len(chunk)
            await quiesce(*pair.links)
        assert events[0][0] == "pause" and events[0][1] > limit
        assert written > INITIAL_WINDOW + limit
        for _ in range(8):
            stream.write(chunk)
            written += len(chunk)
        await quiesce(*pair.links)
        assert [name for name, _ in events] == ["pause"]
        received = 0
        while received < written:
            received += len(await asyncio.wait_for(accepted.read(), TIMEOUT))
        assert [name for name, _ in events] == ["pause", "resume"]
        assert events[1][1] <= limit


async def test_drain_returns_at_once_below_the_limit() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream()
        stream.write(b"small")
        await asyncio.wait_for(stream.drain(), TIMEOUT)


# ---- protocol errors from a hand-made peer ---------------------------------------------


async def test_a_peer_exceeding_the_window_gets_a_protocol_error_go_away() -> None:
    async with raw_peer() as (session, raw):
        await raw.send(data(1, b"a" * INITIAL_WINDOW, Flag.SYN))
        accepted = await asyncio.wait_for(session.accept(), TIMEOUT)
        await raw.send(data(1, b"b"))
        await raw.expect_protocol_error()
        assert await raw.next_frame() is None
        await eventually(lambda: session.is_closed)
        assert session.close_reason.startswith("protocol error")
        assert isinstance(accepted.error, SessionClosed)


async def test_a_data_header_larger_than_the_window_is_refused_before_its_payload() -> None:
    """Otherwise one header makes the session buffer up to 16 MiB that it will refuse anyway."""
    async with raw_peer() as (session, raw):
        await raw.send(data(1, b"", Flag.SYN))
        await raw.send(header(FrameType.DATA, Flag.NONE, 1, INITIAL_WINDOW + 1))
        await raw.delivered()
        if not session.is_closed:
            await raw.send(b"x" * (INITIAL_WINDOW + 1))
            await raw.delivered()
            pytest.fail(
                "a DATA header beyond the stream's window was not refused until its payload "
                f"arrived (session closed after the payload: {session.is_closed})"
            )
        await raw.expect_protocol_error()


class TextMessageLink(MemoryLink):
    """A link whose adapter rejects a message, as WebSocketLink does with a TEXT message."""

    async def receive(self) -> bytes | None:
        data = await super().receive()
        if data == b"TEXT":
            raise ProtocolError("unexpected WebSocket TEXT message on a mux session")
        return data


async def test_a_protocol_error_raised_by_the_link_ends_the_session_with_a_go_away() -> None:
    session_link, raw_link = TextMessageLink(), MemoryLink()
    session_link.peer, raw_link.peer = raw_link, session_link
    session = Session(session_link, is_client=False, name="dut")
    task = asyncio.create_task(session.run())
    raw = RawPeer(raw_link)
    await raw.send(data(1, b"hi", Flag.SYN))
    accepted = await asyncio.wait_for(session.accept(), TIMEOUT)
    await raw_link.send(b"TEXT")
    await asyncio.wait_for(task, TIMEOUT)
    assert isinstance(accepted.error, SessionClosed)
    assert session.close_reason.startswith("protocol error"), session.close_reason
    await raw.expect_protocol_error()


async def test_window_growth_past_the_maximum_is_a_protocol_error() -> None:
    async with raw_peer() as (session, raw):
        await raw.send(data(1, b"", Flag.SYN))
        await raw.send(header(FrameType.WINDOW_UPDATE, Flag.NONE, 1, 16 * MIB + 1))
        await raw.expect_protocol_error()
        await eventually(lambda: session.is_closed)


async def test_data_after_fin_is_a_protocol_error() -> None:
    async with raw_peer() as (session, raw):
        await raw.send(data(1, b"x", Flag.SYN | Flag.FIN))
        await raw.send(data(1, b"y"))
        await raw.expect_protocol_error()
        await eventually(lambda: session.is_closed)


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([data(2, b"hi", Flag.SYN)], id="syn-with-our-parity"),
        pytest.param([data(1, b"", Flag.SYN), data(1, b"", Flag.SYN)], id="duplicate-syn"),
        pytest.param(
            [header(FrameType.WINDOW_UPDATE, Flag.SYN, 3, 0)] * 2, id="duplicate-syn-by-update"
        ),
    ],
)
async def test_bad_syns_are_protocol_errors(frames: list[bytes]) -> None:
    async with raw_peer() as (session, raw):
        await raw.send(*frames)
        await raw.expect_protocol_error()
        await eventually(lambda: session.is_closed)
        assert "protocol error" in session.close_reason


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(bytes([1]) + header(FrameType.PING, Flag.SYN, 0, 1)[1:], id="bad-version"),
        pytest.param(bytes([0, 7]) + header(FrameType.PING, Flag.SYN, 0, 1)[2:], id="bad-type"),
        pytest.param(header(FrameType.DATA, Flag.NONE, 1, 0xFFFFFFFF), id="absurd-length"),
        pytest.param(header(FrameType.PING, Flag(0x40), 0, 1), id="bad-flags"),
        pytest.param(header(FrameType.DATA, Flag.NONE, 0, 1) + b"x", id="data-on-stream-0"),
    ],
)
async def test_corrupt_input_ends_only_that_session(corrupt: bytes) -> None:
    async with (
        session_pair() as healthy,
        echo_server(healthy.server),
        raw_peer() as (session, raw),
    ):
        await raw.send(data(1, b"hello", Flag.SYN))
        accepted = await asyncio.wait_for(session.accept(), TIMEOUT)
        await raw.send(corrupt)
        await raw.expect_protocol_error()
        await eventually(lambda: session.is_closed)
        assert session.close_reason.startswith("protocol error")
        assert isinstance(accepted.error, SessionClosed)
        with pytest.raises(SessionClosed):
            await asyncio.wait_for(session.accept(), TIMEOUT)

        assert await round_trip(healthy.client, b"still here" * 1000) == b"still here" * 1000
        assert not healthy.client.is_closed and not healthy.server.is_closed


async def test_a_protocol_error_go_away_from_the_peer_closes_the_session() -> None:
    async with raw_peer(session_is_client=True) as (session, raw):
        stream = session.open_stream(b"x")
        await raw.send(header(FrameType.GO_AWAY, Flag.NONE, 0, GoAwayCode.PROTOCOL_ERROR))
        await eventually(lambda: session.is_closed)
        assert session.close_reason == "peer went away: protocol error"
        assert isinstance(stream.error, SessionClosed)


async def test_accept_backlog_overflow_resets_the_extra_stream() -> None:
    async with session_pair(server_config=SessionConfig(accept_backlog=2)) as pair:
        streams = [pair.client.open_stream(b"%d" % index) for index in range(3)]
        await eventually(lambda: streams[2].error is not None)
        assert isinstance(streams[2].error, StreamReset)
        assert not isinstance(streams[2].error, SessionClosed)
        assert streams[0].error is None and streams[1].error is None
        assert pair.server.stream_count == 2
        for expected in (b"0", b"1"):
            accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
            assert await asyncio.wait_for(accepted.read(), TIMEOUT) == expected
        later = pair.client.open_stream(b"later")
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        assert accepted.id == later.id


async def test_frames_for_unknown_streams_are_ignored() -> None:
    async with raw_peer() as (session, raw):
        await raw.send(data(41, b"stale"), header(FrameType.WINDOW_UPDATE, Flag.NONE, 43, 9))
        await raw.send(header(FrameType.PING, Flag.SYN, 0, 77))
        pong = await raw.expect(lambda f: f.type is FrameType.PING)
        assert pong == Frame(FrameType.PING, Flag.ACK, 0, 77)
        assert not session.is_closed


# ---- ping, keep-alive ------------------------------------------------------------------


async def test_ping_measures_a_round_trip() -> None:
    async with session_pair() as pair:
        assert pair.client.rtt is None
        rtt = await asyncio.wait_for(pair.client.ping(), TIMEOUT)
        assert rtt >= 0 and pair.client.rtt == rtt
        assert await asyncio.wait_for(pair.server.ping(), TIMEOUT) >= 0


async def test_a_pending_ping_fails_when_the_session_closes() -> None:
    async with raw_peer() as (session, raw):
        pinger = asyncio.create_task(session.ping())
        await raw.expect(lambda f: f.type is FrameType.PING)
        await session.close("bye")
        with pytest.raises(SessionClosed):
            await asyncio.wait_for(pinger, TIMEOUT)
        with pytest.raises(SessionClosed):
            await session.ping()


async def test_keepalive_closes_a_session_whose_peer_stops_answering() -> None:
    config = SessionConfig(keepalive_interval=0.01, keepalive_timeout=0.05)
    session_link, silent_link = link_pair()
    session = Session(session_link, is_client=True, config=config, name="dut")
    stream = session.open_stream(b"hello?")
    await asyncio.wait_for(session.run(), TIMEOUT)
    assert session.is_closed
    assert "keep-alive" in session.close_reason
    assert isinstance(stream.error, SessionClosed)
    pings = [frame for frame in decode(session_link.sent) if frame.type is FrameType.PING]
    assert pings and all(frame.flags == Flag.SYN for frame in pings)
    assert silent_link.closed is False and session_link.closed


async def test_keepalive_keeps_a_live_session_open() -> None:
    config = SessionConfig(keepalive_interval=0.001, keepalive_timeout=TIMEOUT)
    async with session_pair(config, config) as pair:

        def pongs(link: MemoryLink) -> int:
            return sum(
                1
                for frame in decode(link.sent)
                if frame.type is FrameType.PING and frame.flags == Flag.ACK
            )

        await eventually(lambda: pongs(pair.server_link) >= 5 and pongs(pair.client_link) >= 5)
        assert not pair.client.is_closed and not pair.server.is_closed
        assert pair.client.rtt is not None
        async with echo_server(pair.server):
            assert await round_trip(pair.client, b"alive") == b"alive"


# ---- go-away, shutdown, close ----------------------------------------------------------


async def test_go_away_stops_new_streams_but_lets_open_ones_finish() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream(b"request")
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        pair.server.go_away()
        await eventually(lambda: pair.client.peer_going_away)
        with pytest.raises(SessionClosed):
            pair.client.open_stream()
        with pytest.raises(SessionClosed):
            pair.server.open_stream()
        assert await asyncio.wait_for(accepted.read(), TIMEOUT) == b"request"
        accepted.write(b"response")
        accepted.close_write()
        stream.close_write()
        assert await asyncio.wait_for(read_to_eof(stream), TIMEOUT) == b"response"
        assert await asyncio.wait_for(read_to_eof(accepted), TIMEOUT) == b""
        await asyncio.wait_for(stream.wait_closed(), TIMEOUT)
        assert stream.error is None and accepted.error is None
        assert not pair.client.is_closed and not pair.server.is_closed
        frames = decode(pair.server_link.sent)
        go_aways = [frame for frame in frames if frame.type is FrameType.GO_AWAY]
        assert go_aways == [Frame(FrameType.GO_AWAY, Flag.NONE, 0, GoAwayCode.NORMAL)]


async def test_a_stream_opened_while_the_go_away_is_in_flight_is_refused() -> None:
    async with session_pair() as pair:
        pair.server.go_away()
        racing = pair.client.open_stream(b"too late")
        await eventually(lambda: racing.error is not None)
        assert not isinstance(racing.error, SessionClosed)
        assert pair.server.stream_count == 0
        assert not pair.server.is_closed


async def test_shutdown_waits_for_open_streams_then_closes() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream(b"work")
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        shutdown = asyncio.create_task(pair.server.shutdown(grace=TIMEOUT * 5))
        await eventually(lambda: pair.client.peer_going_away)
        await quiesce(*pair.links)
        assert not shutdown.done() and not pair.server.is_closed
        assert await asyncio.wait_for(accepted.read(), TIMEOUT) == b"work"
        accepted.write(b"result")
        accepted.close_write()
        assert await asyncio.wait_for(read_to_eof(stream), TIMEOUT) == b"result"
        assert not shutdown.done()
        stream.close_write()
        await asyncio.wait_for(shutdown, TIMEOUT)
        assert pair.server.is_closed
        assert stream.error is None and accepted.error is None
        await eventually(lambda: pair.client.is_closed)


async def test_shutdown_resets_streams_still_open_after_the_grace_period() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream(b"stuck")
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        await asyncio.wait_for(pair.server.shutdown(grace=0.01), TIMEOUT)
        assert pair.server.is_closed
        assert isinstance(accepted.error, SessionClosed)
        with pytest.raises(SessionClosed):
            await asyncio.wait_for(read_to_eof(stream), TIMEOUT)


async def test_shutdown_with_a_reason_tells_the_peer_of_each_stream_still_open() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream(b"stuck")
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        await asyncio.wait_for(pair.server.shutdown(grace=0.01, reason="stopping"), TIMEOUT)
        assert pair.server.is_closed
        assert isinstance(accepted.error, StreamReset)
        with pytest.raises(StreamReset, match="stopping"):
            await asyncio.wait_for(read_to_eof(stream), TIMEOUT)


async def test_closing_the_link_resets_every_open_stream_on_both_sides() -> None:
    async with session_pair() as pair:
        opened = [pair.client.open_stream(b"x") for _ in range(3)]
        accepted = [await asyncio.wait_for(pair.server.accept(), TIMEOUT) for _ in range(3)]
        pending_read = asyncio.create_task(opened[0].read())
        pending_accept = asyncio.create_task(pair.client.accept())
        await quiesce(*pair.links)
        await pair.client_link.close(1000, "gone")
        with pytest.raises(SessionClosed):
            await asyncio.wait_for(pending_read, TIMEOUT)
        with pytest.raises(SessionClosed):
            await asyncio.wait_for(pending_accept, TIMEOUT)
        await eventually(lambda: pair.client.is_closed and pair.server.is_closed)
        for stream in (*opened, *accepted):
            assert isinstance(stream.error, SessionClosed)
            assert stream.is_closed
        assert pair.client.stream_count == pair.server.stream_count == 0
        with pytest.raises(SessionClosed):
            pair.client.open_stream()
        with pytest.raises(SessionClosed):
            await asyncio.wait_for(pair.server.accept(), TIMEOUT)


async def test_close_resets_streams_and_tells_the_peer() -> None:
    async with session_pair() as pair:
        stream = pair.client.open_stream(b"x")
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        await pair.server.close("maintenance")
        assert pair.server.close_reason == "maintenance"
        assert isinstance(accepted.error, SessionClosed)
        with pytest.raises(SessionClosed):
            await asyncio.wait_for(read_to_eof(stream), TIMEOUT)
        await asyncio.wait_for(pair.tasks[1], TIMEOUT)


# ---- many streams ----------------------------------------------------------------------


async def test_a_hundred_concurrent_streams_keep_their_bytes_apart() -> None:
    async with session_pair() as pair, echo_server(pair.server):

        async def one(index: int) -> None:
            payload = noise(random.Random(index).randint(0, 200_000), seed=1000 + index)
            stream = pair.client.open_stream()
            writer = asyncio.create_task(pump(stream, payload, random.Random(index)))
            assert await drink(stream, random.Random(-index)) == payload
            await writer
            await stream.wait_closed()

        await asyncio.wait_for(asyncio.gather(*(one(index) for index in range(100))), TIMEOUT * 3)
        await eventually(lambda: pair.client.stream_count == pair.server.stream_count == 0)


@pytest.mark.parametrize("opened", [True, False])
async def test_a_new_stream_or_a_keystroke_leaves_in_the_next_message_beside_bulk(
    opened: bool,
) -> None:
    """With the gateway's and agent's frame size, four bulk streams with a mebibyte each
    queued used to put a new stream's first bytes (or a keystroke on an idle stream) four
    whole messages back; fair scheduling sends them in the very next message (issue 11)."""
    config = SessionConfig(receive_window=BULK_WINDOW, max_frame_payload=BULK_FRAME)
    async with session_pair(config, config) as pair:
        bulk = [pair.client.open_stream(b"bulk") for _ in range(4)]
        idle = pair.client.open_stream(b"idle")
        await quiesce(*pair.links)
        pair.client_link.pause()
        for index, stream in enumerate(bulk):
            stream.write(noise(MIB, seed=index))
        await quiesce(pair.client_link)  # the writer task holds a message, waiting
        held = len(pair.client_link.sent)
        if opened:
            fresh = pair.client.open_stream(b"first bytes")
        else:
            fresh = idle
            fresh.write(b"keystroke")
        pair.client_link.resume()
        await eventually(lambda: len(pair.client_link.sent) >= held + 2)
        after_held = decode(pair.client_link.sent[held + 1 : held + 2])
        assert any(frame.stream_id == fresh.id and frame.payload for frame in after_held)


async def test_a_write_once_the_link_resumes_does_not_overtake_what_the_writer_holds() -> None:
    """Sends go straight out from the caller while the link takes them, but the message the
    writer task built while the link was paused still leaves first."""
    async with session_pair() as pair:
        stream = pair.client.open_stream(b"open")
        accepted = await asyncio.wait_for(pair.server.accept(), TIMEOUT)
        assert await asyncio.wait_for(accepted.read(), TIMEOUT) == b"open"
        pair.client_link.pause()
        stream.write(b"first ")
        await quiesce(pair.client_link)  # the writer task now holds "first", waiting
        pair.client_link.resume()
        stream.write(b"second")
        stream.close_write()
        received = b""
        while chunk := await asyncio.wait_for(accepted.read(), TIMEOUT):
            received += chunk
        assert received == b"first second"


async def test_a_burst_of_received_frames_is_answered_in_one_message() -> None:
    """Replies the reader queues while it handles one message (here, the grants for three
    opened streams) leave together once it is done, not as one send per frame."""
    async with raw_peer(SessionConfig(receive_window=MIB)) as (session, raw):
        await raw.send(*(data(stream_id, b"x", Flag.SYN) for stream_id in (1, 3, 5)))
        for _ in range(3):
            await asyncio.wait_for(session.accept(), TIMEOUT)
        assert raw.link.peer is not None
        grants = decode(raw.link.peer.sent[:1])
        assert [(frame.type, frame.stream_id) for frame in grants] == [
            (FrameType.WINDOW_UPDATE, stream_id) for stream_id in (1, 3, 5)
        ]


async def test_on_stream_gets_each_opened_stream_as_its_syn_arrives() -> None:
    """No backlog applies, and a stream the callback resets is refused alone."""
    client_link, server_link = link_pair()
    served: list[Stream] = []

    def serve(stream: Stream) -> None:
        if stream.id == 3:
            stream.reset("not this one")
        served.append(stream)

    client = Session(client_link, is_client=True, name="client")
    server = Session(
        server_link, is_client=False, config=SessionConfig(accept_backlog=0), on_stream=serve
    )
    tasks = [asyncio.create_task(client.run()), asyncio.create_task(server.run())]
    try:
        streams = [client.open_stream(b"%d" % index) for index in range(3)]
        await eventually(lambda: len(served) == 3 and streams[1].error is not None)
        assert streams[1].error is not None and streams[1].error.reason == "not this one"
        for index in (0, 2):
            assert await asyncio.wait_for(served[index].read(), TIMEOUT) == b"%d" % index
            assert streams[index].error is None
    finally:
        await client.close()
        await server.close()
        await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
