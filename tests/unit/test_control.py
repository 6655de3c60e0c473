"""The mux control queue: replies coalesce, refusals are capped, budgets hold, order is kept."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kuberde.mux.control import ControlLimits, ControlQueue
from kuberde.mux.frame import (
    HEADER_SIZE,
    Flag,
    Frame,
    FrameDecoder,
    FrameType,
    GoAwayCode,
    ProtocolError,
)

BIG = 1 << 20


def frames_of(parts: list[bytes]) -> list[Frame]:
    return FrameDecoder().feed(b"".join(parts))


def test_one_pong_answers_the_latest_ping() -> None:
    queue = ControlQueue()
    for opaque in range(1, 101):
        queue.pong(opaque)
    assert [(f.type, f.flags, f.length) for f in frames_of(queue.take(BIG))] == [
        (FrameType.PING, Flag.ACK, 100)
    ]
    assert not queue


def test_a_ping_flood_between_two_writes_is_a_protocol_error() -> None:
    queue = ControlQueue(ControlLimits(max_coalesced_pings=3))
    for opaque in range(4):
        queue.pong(opaque)
    with pytest.raises(ProtocolError, match="ping flood"):
        queue.pong(5)


def test_sending_a_pong_resets_the_flood_count() -> None:
    queue = ControlQueue(ControlLimits(max_coalesced_pings=2))
    for _ in range(10):
        for opaque in range(3):
            queue.pong(opaque)
        assert len(queue.take(BIG)) == 1


def test_window_updates_for_one_stream_merge_keeping_their_flags() -> None:
    queue = ControlQueue()
    queue.window_update(3, Flag.ACK, 100)
    queue.window_update(5, Flag.NONE, 7)
    queue.window_update(3, Flag.NONE, 50)
    frames = frames_of(queue.take(BIG))
    assert [(f.stream_id, f.flags, f.length) for f in frames] == [
        (3, Flag.ACK, 150),
        (5, Flag.NONE, 7),
    ]


def test_refusals_are_capped_until_they_are_sent() -> None:
    queue = ControlQueue(ControlLimits(max_pending_refusals=2))
    queue.refuse(1)
    queue.refuse(3)
    queue.refuse(3)  # the same stream again costs nothing
    with pytest.raises(ProtocolError, match="refused streams"):
        queue.refuse(5)
    sent = frames_of(queue.take(BIG))
    assert [(f.type, f.flags, f.stream_id) for f in sent] == [
        (FrameType.WINDOW_UPDATE, Flag.RST, 1),
        (FrameType.WINDOW_UPDATE, Flag.RST, 3),
    ]
    queue.refuse(5)
    queue.refuse(7)


def test_a_reset_carries_its_reason_once() -> None:
    queue = ControlQueue()
    queue.reset(2, Flag.SYN, b"why")
    queue.reset(2, Flag.NONE, b"again")
    (frame,) = frames_of(queue.take(BIG))
    assert (frame.type, frame.flags, frame.stream_id, frame.payload) == (
        FrameType.DATA,
        Flag.SYN | Flag.RST,
        2,
        b"why",
    )


def test_go_away_goes_last_and_a_protocol_error_overrides_a_normal_one() -> None:
    queue = ControlQueue()
    queue.go_away(GoAwayCode.NORMAL)
    queue.ping(9)
    queue.refuse(1)
    queue.go_away(GoAwayCode.PROTOCOL_ERROR)
    queue.go_away(GoAwayCode.NORMAL)
    frames = frames_of(queue.take(BIG))
    assert [f.type for f in frames] == [FrameType.WINDOW_UPDATE, FrameType.PING, FrameType.GO_AWAY]
    assert frames[-1].length == GoAwayCode.PROTOCOL_ERROR


def test_our_own_pings_in_flight_are_bounded() -> None:
    queue = ControlQueue(ControlLimits(max_pending_pings=2))
    queue.ping(1)
    queue.ping(2)
    with pytest.raises(OverflowError):
        queue.ping(3)


Op = tuple[str, int, int]
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("pong"), st.integers(0, 2**32 - 1), st.just(0)),
        st.tuples(st.just("ping"), st.integers(0, 2**32 - 1), st.just(0)),
        st.tuples(st.just("update"), st.integers(1, 8), st.integers(0, 1 << 20)),
        st.tuples(st.just("reset"), st.integers(1, 8), st.integers(0, 40)),
        st.tuples(st.just("refuse"), st.integers(9, 16), st.just(0)),
        st.tuples(st.just("go_away"), st.integers(0, 1), st.just(0)),
        st.tuples(st.just("take"), st.integers(1, 200), st.just(0)),
    ),
    max_size=60,
)


@given(OPS)
def test_any_sequence_keeps_budgets_bounds_and_totals(ops: list[Op]) -> None:
    queue = ControlQueue(ControlLimits(max_pending_pings=1000))
    granted: dict[int, int] = {}
    sent_updates: dict[int, int] = {}
    reset_streams: set[int] = set()
    decoder = FrameDecoder()
    for op, a, b in ops:
        if op == "pong":
            queue.pong(a)
        elif op == "ping":
            queue.ping(a)
        elif op == "update":
            queue.window_update(a, Flag.NONE, b)
            granted[a] = granted.get(a, 0) + b
        elif op == "reset":
            queue.reset(a, Flag.NONE, bytes(b))
        elif op == "refuse":
            queue.refuse(a)
        elif op == "go_away":
            queue.go_away(GoAwayCode(a))
        else:
            parts = queue.take(a)
            size = sum(len(part) for part in parts)
            assert size <= a or len(parts) == 1
            frames = decoder.feed(b"".join(parts))
            updates = [
                f.stream_id
                for f in frames
                if f.type is FrameType.WINDOW_UPDATE and not f.flags & Flag.RST
            ]
            resets = [f.stream_id for f in frames if f.flags & Flag.RST]
            assert len(set(updates)) == len(updates)
            assert len(set(resets)) == len(resets)
            assert sum(f.type is FrameType.PING and f.flags == Flag.ACK for f in frames) <= 1
            for frame in frames:
                if frame.type is FrameType.WINDOW_UPDATE and not frame.flags & Flag.RST:
                    sent_updates[frame.stream_id] = (
                        sent_updates.get(frame.stream_id, 0) + frame.length
                    )
            reset_streams.update(resets)
        assert queue.frame_count * HEADER_SIZE <= (8 + 8 + 8 + 1000 + 2) * (HEADER_SIZE + 40)
    while queue:
        for frame in decoder.feed(b"".join(queue.take(HEADER_SIZE))):
            if frame.type is FrameType.WINDOW_UPDATE and not frame.flags & Flag.RST:
                sent_updates[frame.stream_id] = sent_updates.get(frame.stream_id, 0) + frame.length
    assert sent_updates == {s: total for s, total in granted.items() if total or s in sent_updates}
