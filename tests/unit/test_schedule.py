"""The mux's fair scheduling policy on its own: simulated streams, whole messages at a time.

Each simulated stream has bytes queued and a send window, as a session's stream does; a
message is built exactly as `Session._next_message` builds one, by `begin`, then `pick`
and `served` until `pick` says the message is full.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kuberde.mux.schedule import SPARSE_QUANTUM, FairScheduler

pytestmark = pytest.mark.unit

OVERHEAD = 12
QUANTUM = 64 * 1024
MESSAGE = 256 * 1024


@dataclass
class Sim:
    """A stream's outbound side: queued bytes (numbered, to check their order) and window."""

    pending: int
    window: int
    taken: int = 0

    @property
    def sendable(self) -> bool:
        return self.pending > 0 and self.window > 0

    def take(self, allowance: int) -> int:
        size = min(self.pending, self.window, allowance)
        self.pending -= size
        self.window -= size
        self.taken += size
        return size


@dataclass(frozen=True)
class Turn:
    key: int
    size: int
    allowance: int
    others_waiting: bool


def message(
    scheduler: FairScheduler[int], streams: dict[int, Sim], room: int = MESSAGE
) -> list[Turn]:
    """One message's turns; streams with nothing sendable are told so and leave."""
    turns: list[Turn] = []
    scheduler.begin(room)
    while (turn := scheduler.pick()) is not None:
        key, allowance = turn
        sim = streams[key]
        others = any(other != key and other in scheduler for other in streams)
        size = sim.take(allowance) if sim.sendable else None
        scheduler.served(key, size, sim.sendable)
        if size is not None:
            turns.append(Turn(key, size, allowance, others))
    return turns


def scheduler() -> FairScheduler[int]:
    return FairScheduler(QUANTUM, overhead=OVERHEAD)


sizes = st.integers(min_value=0, max_value=2 * 1024 * 1024)
windows = st.integers(min_value=0, max_value=4 * 1024 * 1024)
sim_streams = st.lists(st.tuples(sizes, windows), min_size=1, max_size=24)


@given(sim_streams, st.integers(min_value=OVERHEAD + 1, max_value=MESSAGE))
def test_every_ready_stream_is_served_until_its_bytes_or_window_run_out(
    specs: list[tuple[int, int]], room: int
) -> None:
    streams = {key: Sim(pending, window) for key, (pending, window) in enumerate(specs)}
    fair = scheduler()
    for key in streams:
        fair.add(key)
    total = sum(min(sim.pending, sim.window) for sim in streams.values())
    # Every message carries at least one byte per frame's header of room, so this bounds it.
    for _ in range(total + len(streams) + 1):
        if not fair:
            break
        message(fair, streams, room)
    assert not fair
    assert all(not sim.sendable for sim in streams.values())


@given(sim_streams)
def test_no_stream_gets_more_than_its_turn_while_others_wait(
    specs: list[tuple[int, int]],
) -> None:
    """Frames never exceed the lane's quantum, and a stream's consecutive frames while
    others are queued add up to at most one quantum (a turn cut by a message's end goes on
    in the next message, it is not a second turn)."""
    streams = {key: Sim(pending, window) for key, (pending, window) in enumerate(specs)}
    fair = scheduler()
    for key in streams:
        fair.add(key)
    turns: list[Turn] = []
    while fair:
        turns += message(fair, streams)
    run_key, run_bytes = -1, 0
    for turn in turns:
        assert turn.size <= turn.allowance <= QUANTUM
        if not turn.others_waiting:
            run_key, run_bytes = -1, 0
            continue
        run_bytes = run_bytes + turn.size if turn.key == run_key else turn.size
        run_key = turn.key
        assert run_bytes <= QUANTUM


@given(
    st.integers(min_value=1, max_value=64),
    st.integers(min_value=0, max_value=8),
    st.integers(min_value=1, max_value=SPARSE_QUANTUM),
)
def test_a_new_small_stream_leaves_in_the_next_message_whatever_bulk_waits(
    bulk: int, warm_messages: int, size: int
) -> None:
    """Bulk: streams that have had their first (new lane) turn and have megabytes queued."""
    streams = {key: Sim(64 * 1024 * 1024, 64 * 1024 * 1024) for key in range(bulk)}
    fair = scheduler()
    for key in streams:
        fair.add(key)
    while not all(sim.taken >= SPARSE_QUANTUM for sim in streams.values()):
        message(fair, streams)
    for _ in range(warm_messages):
        message(fair, streams)
    streams[bulk] = Sim(size, 256 * 1024)
    fair.add(bulk)
    next_message = message(fair, streams)
    assert bulk in {turn.key for turn in next_message}
    assert streams[bulk].pending == 0
    assert bulk not in fair


@given(st.integers(min_value=1, max_value=200))
def test_a_crowd_of_new_streams_leaves_bulk_half_of_every_message(crowd: int) -> None:
    streams = {0: Sim(64 * 1024 * 1024, 64 * 1024 * 1024)}
    fair = scheduler()
    fair.add(0)
    message(fair, streams)
    for key in range(1, crowd + 1):
        streams[key] = Sim(SPARSE_QUANTUM, SPARSE_QUANTUM)
        fair.add(key)
    while len(fair) > 1:
        turns = message(fair, streams)
        bulk_bytes = sum(turn.size + OVERHEAD for turn in turns if turn.key == 0)
        assert bulk_bytes >= MESSAGE // 2 - SPARSE_QUANTUM - OVERHEAD


def test_a_stream_queued_again_keeps_its_place() -> None:
    """Writing again does not move a queued stream up: only an idle one comes back new."""

    def turns(requeue: bool) -> list[Turn]:
        streams = {key: Sim(1024 * 1024, 1024 * 1024) for key in range(3)}
        fair = scheduler()
        for key in streams:
            fair.add(key)
        done = message(fair, streams)
        if requeue:
            for key in reversed(streams):
                fair.add(key)
        while fair:
            done += message(fair, streams)
        return done

    assert turns(requeue=True) == turns(requeue=False)


def test_served_must_follow_pick_for_the_same_key() -> None:
    fair = scheduler()
    fair.add(1)
    fair.add(2)
    fair.begin(MESSAGE)
    assert fair.pick() == (1, SPARSE_QUANTUM)
    with pytest.raises(RuntimeError):
        fair.served(2, 10, True)
