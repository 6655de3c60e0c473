"""Random interleavings of stream operations on both ends of a real session pair.

Each example runs in a fresh event loop. Operations are applied in order, with message
delivery interleaved only as far as `Settle` steps and the reads' short waits let it, so
frames are often still in flight when the next operation runs. Links pause and resume at
random too, so sends switch between the caller's direct path and the writer task.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kuberde.mux.session import (
    INITIAL_WINDOW,
    Session,
    SessionClosed,
    SessionConfig,
    Stream,
    StreamReset,
)
from tests.unit.memory_link import MemoryLink, link_pair

TIMEOUT = 3.0
SIDES = (0, 1)  # 0 = client (dialled, odd IDs), 1 = server


@dataclass(frozen=True)
class Open:
    side: int
    initial: int


@dataclass(frozen=True)
class Write:
    side: int
    stream: int
    size: int


@dataclass(frozen=True)
class CloseWrite:
    side: int
    stream: int


@dataclass(frozen=True)
class Reset:
    side: int
    stream: int


@dataclass(frozen=True)
class Read:
    side: int
    stream: int
    max_bytes: int


@dataclass(frozen=True)
class Settle:
    rounds: int


@dataclass(frozen=True)
class Pause:
    """The side's outgoing link stops taking messages, as a transport above its high-water
    mark does; `resume` is whether it starts again (as it drains)."""

    side: int
    resume: bool


Operation = Open | Write | CloseWrite | Reset | Read | Settle | Pause

SIDE = st.sampled_from(SIDES)
INDEX = st.integers(min_value=0, max_value=7)
SIZES = st.one_of(
    st.integers(min_value=0, max_value=64),
    st.integers(min_value=0, max_value=20_000),
    st.integers(min_value=200_000, max_value=400_000),
)
OPERATIONS: st.SearchStrategy[Operation] = st.one_of(
    st.builds(Open, side=SIDE, initial=SIZES),
    st.builds(Write, side=SIDE, stream=INDEX, size=SIZES),
    st.builds(Write, side=SIDE, stream=INDEX, size=SIZES),
    st.builds(CloseWrite, side=SIDE, stream=INDEX),
    st.builds(Reset, side=SIDE, stream=INDEX),
    st.builds(Read, side=SIDE, stream=INDEX, max_bytes=st.sampled_from([-1, 1, 1000, 70_000])),
    st.builds(Read, side=SIDE, stream=INDEX, max_bytes=st.just(-1)),
    st.builds(Settle, rounds=st.integers(min_value=0, max_value=40)),
    st.builds(Pause, side=SIDE, resume=st.booleans()),
)


@dataclass
class Tracked:
    """What each end of one stream did and saw, to check against what the session did."""

    opener: int
    stream_id: int
    sent: tuple[bytearray, bytearray] = field(default_factory=lambda: (bytearray(), bytearray()))
    received: tuple[bytearray, bytearray] = field(
        default_factory=lambda: (bytearray(), bytearray())
    )
    write_closed: list[bool] = field(default_factory=lambda: [False, False])
    eof: list[bool] = field(default_factory=lambda: [False, False])
    reset_reasons: dict[int, str] = field(default_factory=dict)
    seen_reset: dict[int, StreamReset] = field(default_factory=dict)

    def check_prefix(self) -> None:
        for side in SIDES:
            sent = bytes(self.sent[1 - side])
            received = bytes(self.received[side])
            assert sent.startswith(received), (
                f"stream {self.stream_id}: side {side} received bytes the peer never sent "
                f"in that order ({len(received)} received, {len(sent)} sent)"
            )


CONFIGS = st.builds(
    SessionConfig,
    receive_window=st.sampled_from([INITIAL_WINDOW, 1024 * 1024]),
    max_message_size=st.sampled_from([4096, 256 * 1024]),
    max_frame_payload=st.sampled_from([1024, 64 * 1024]),
    send_buffer_limit=st.sampled_from([1024, 256 * 1024]),
)


class Harness:
    def __init__(self, configs: tuple[SessionConfig, SessionConfig]) -> None:
        links = link_pair()
        self.links: tuple[MemoryLink, MemoryLink] = links
        self.sessions = (
            Session(links[0], is_client=True, config=configs[0], name="client"),
            Session(links[1], is_client=False, config=configs[1], name="server"),
        )
        self.accepted: tuple[dict[int, Stream], dict[int, Stream]] = ({}, {})
        self.opened: list[tuple[Tracked, Stream]] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.payloads = random.Random(0)

    async def __aenter__(self) -> Harness:
        self.tasks = [asyncio.create_task(session.run()) for session in self.sessions]
        self.tasks += [asyncio.create_task(self._acceptor(side)) for side in SIDES]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for session in self.sessions:
            await session.close()
        await asyncio.wait_for(asyncio.gather(*self.tasks), TIMEOUT)

    async def _acceptor(self, side: int) -> None:
        with contextlib.suppress(SessionClosed):
            while True:
                stream = await self.sessions[side].accept()
                self.accepted[side][stream.id] = stream

    def end(self, tracked: Tracked, side: int) -> Stream | None:
        if side == tracked.opener:
            return next(stream for t, stream in self.opened if t is tracked)
        return self.accepted[side].get(tracked.stream_id)

    def pick(self, index: int) -> Tracked | None:
        if not self.opened:
            return None
        return self.opened[index % len(self.opened)][0]

    # ---- operations ----------------------------------------------------------------------

    async def apply(self, operation: Operation) -> None:
        if isinstance(operation, Settle):
            for _ in range(operation.rounds):
                await asyncio.sleep(0)
        elif isinstance(operation, Pause):
            link = self.links[operation.side]
            if operation.resume:
                link.resume()
            else:
                link.pause()
        elif isinstance(operation, Open):
            self.open(operation.side, operation.initial)
        else:
            tracked = self.pick(operation.stream)
            stream = None if tracked is None else self.end(tracked, operation.side)
            if tracked is None or stream is None:
                return
            if isinstance(operation, Write):
                self.write(tracked, stream, operation.side, operation.size)
            elif isinstance(operation, CloseWrite):
                if stream.error is None:
                    tracked.write_closed[operation.side] = True
                stream.close_write()
            elif isinstance(operation, Reset):
                self.reset(tracked, stream, operation.side)
            else:
                await self.read(tracked, stream, operation.side, operation.max_bytes)

    def open(self, side: int, initial_size: int) -> None:
        initial = self.payloads.randbytes(initial_size)
        stream = self.sessions[side].open_stream(initial)
        assert stream.id % 2 == (1 if side == 0 else 0)
        tracked = Tracked(opener=side, stream_id=stream.id)
        tracked.sent[side].extend(initial)
        self.opened.append((tracked, stream))

    def write(self, tracked: Tracked, stream: Stream, side: int, size: int) -> None:
        payload = self.payloads.randbytes(size)
        refused = tracked.write_closed[side] or stream.error is not None
        try:
            stream.write(payload)
        except StreamReset:
            assert refused, f"write on healthy stream {stream.id} raised"
            return
        assert not refused, f"write on closed or reset stream {stream.id} was accepted"
        tracked.sent[side].extend(payload)

    def reset(self, tracked: Tracked, stream: Stream, side: int) -> None:
        if stream.is_closed:
            return
        reason = f"reset by {side} of {stream.id}"
        stream.reset(reason)
        tracked.reset_reasons[side] = reason
        assert stream.error is not None and stream.error.reason == reason
        assert stream.is_closed

    async def read(self, tracked: Tracked, stream: Stream, side: int, max_bytes: int) -> None:
        """Read what arrives within a few loop turns; a pending read is cancelled unharmed."""
        task = asyncio.create_task(stream.read(max_bytes))
        for _ in range(3):
            await asyncio.sleep(0)
        task.cancel()
        try:
            chunk = await task
        except asyncio.CancelledError:
            return
        except StreamReset as error:
            self.saw_reset(tracked, side, error)
            return
        self.received(tracked, side, chunk)

    def received(self, tracked: Tracked, side: int, chunk: bytes) -> None:
        if chunk:
            assert not tracked.eof[side], "bytes after end of stream"
            tracked.received[side].extend(chunk)
        else:
            tracked.eof[side] = True
            assert tracked.received[side] == tracked.sent[1 - side], "EOF before all bytes"

    def saw_reset(self, tracked: Tracked, side: int, error: StreamReset) -> None:
        assert not isinstance(error, SessionClosed), f"session ended: {error}"
        assert error.reason in tracked.reset_reasons.values(), error.reason
        tracked.seen_reset[side] = error

    # ---- the end -------------------------------------------------------------------------

    async def quiesce(self) -> None:
        """Run the loop until nothing is in flight; stop early if a session ended."""
        rounds = 0
        while rounds < 100:
            await asyncio.sleep(0)
            for session in self.sessions:
                assert not session.is_closed, session.close_reason
            rounds = rounds + 1 if all(link.inbox.empty() for link in self.links) else 0

    async def finish(self) -> None:
        """Half-close every healthy end, read every end to its end, and let streams close."""
        for link in self.links:
            link.resume()
        await asyncio.wait_for(self.quiesce(), TIMEOUT)
        for tracked, _ in self.opened:
            for side in SIDES:
                stream = self.end(tracked, side)
                assert stream is not None, f"stream {tracked.stream_id} never accepted"
                if stream.error is None:
                    tracked.write_closed[side] = True
                    stream.close_write()

        async def drain_end(tracked: Tracked, side: int) -> None:
            stream = self.end(tracked, side)
            assert stream is not None
            try:
                while chunk := await stream.read():
                    self.received(tracked, side, chunk)
                self.received(tracked, side, b"")
            except StreamReset as error:
                self.saw_reset(tracked, side, error)
            await stream.wait_closed()

        ends = [drain_end(tracked, side) for tracked, _ in self.opened for side in SIDES]
        await asyncio.wait_for(asyncio.gather(*ends), TIMEOUT)
        await asyncio.wait_for(self.quiesce(), TIMEOUT)

    def check_final(self) -> None:
        for session in self.sessions:
            assert not session.is_closed, session.close_reason
            assert session.stream_count == 0, "a closed stream stayed in the session's table"
        for tracked, _ in self.opened:
            tracked.check_prefix()
            ends = [self.end(tracked, side) for side in SIDES]
            assert all(stream is not None and stream.is_closed for stream in ends)
            if not tracked.reset_reasons:
                assert tracked.eof == [True, True]
                assert all(stream is not None and stream.error is None for stream in ends)
                continue
            for side in SIDES:
                stream = ends[side]
                assert stream is not None
                if side in tracked.reset_reasons:
                    assert side in tracked.seen_reset
                    continue
                # The peer's reset reaches this end unless this end had already finished
                # cleanly: both FINs exchanged and every byte read.
                if stream.error is None:
                    assert tracked.eof[side]
                else:
                    assert side in tracked.seen_reset


async def scenario(
    operations: list[Operation],
    configs: tuple[SessionConfig, SessionConfig] = (SessionConfig(), SessionConfig()),
) -> None:
    async with Harness(configs) as harness:
        for operation in operations:
            await harness.apply(operation)
            for tracked, _ in harness.opened:
                tracked.check_prefix()
            for session in harness.sessions:
                assert not session.is_closed, session.close_reason
        await harness.finish()
        harness.check_final()


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    opens=st.lists(st.builds(Open, side=SIDE, initial=SIZES), min_size=1, max_size=4),
    operations=st.lists(OPERATIONS, min_size=10, max_size=40),
    configs=st.tuples(CONFIGS, CONFIGS),
)
def test_random_interleavings_keep_every_stream_consistent(
    opens: list[Operation],
    operations: list[Operation],
    configs: tuple[SessionConfig, SessionConfig],
) -> None:
    asyncio.run(scenario(opens + operations, configs))


def test_a_scenario_with_every_kind_of_operation() -> None:
    """A fixed run, so the harness itself is known to exercise each path."""
    asyncio.run(
        scenario(
            [
                Open(0, 10),
                Open(1, 300_000),
                Write(0, 0, 500),
                Read(1, 0, 100),
                Write(1, 1, 1000),
                Settle(20),
                Read(0, 1, -1),
                CloseWrite(0, 0),
                Reset(1, 1),
                Open(0, 0),
                Write(1, 2, 5),
                Read(0, 2, -1),
                CloseWrite(1, 2),
                Pause(0, resume=False),
                Write(0, 2, 70_000),
                Settle(5),
                Write(0, 2, 3),
                Pause(0, resume=True),
                Write(0, 2, 4),
                Settle(5),
                Read(1, 0, -1),
                Read(1, 2, -1),
            ]
        )
    )
