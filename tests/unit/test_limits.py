"""Per-user and per-agent stream limits (pure, with a manual clock)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kuberde.gateway.limits import (
    LimitExceeded,
    Reservation,
    StreamLimits,
    StreamQuota,
    StreamQuotaSettings,
)

LOOSE = StreamLimits(
    max_streams=1000, max_buffered_bytes=10**12, streams_per_second=1e6, burst=1000
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Cuts:
    """Which reservations were told to cut their streams, and why."""

    def __init__(self) -> None:
        self.told: list[tuple[str, LimitExceeded]] = []

    def of(self, name: str) -> object:
        return lambda error: self.told.append((name, error))


def quota(user: StreamLimits = LOOSE, agent: StreamLimits = LOOSE) -> tuple[StreamQuota, Clock]:
    clock = Clock()
    return StreamQuota(StreamQuotaSettings(per_user=user, per_agent=agent), clock), clock


def admit(limits: StreamQuota, user: str, agent: str, cuts: Cuts | None = None) -> Reservation:
    on_exceeded = cuts.of(f"{user}->{agent}") if cuts is not None else (lambda error: None)
    return limits.acquire(user, agent, on_exceeded)  # type: ignore[arg-type]


def test_concurrent_streams_per_user_are_capped_and_released() -> None:
    limits, _ = quota(user=StreamLimits(2, 10**9, 1e6, 100))
    first = admit(limits, "alice", "a")
    admit(limits, "alice", "b")
    with pytest.raises(LimitExceeded, match="stream limit: 2 concurrent streams per user") as no:
        admit(limits, "alice", "c")
    assert no.value.kind == "streams"
    admit(limits, "bob", "c")  # other users are not affected
    first.release()
    first.release()  # releasing twice gives back only one stream
    admit(limits, "alice", "c")
    with pytest.raises(LimitExceeded):
        admit(limits, "alice", "d")


def test_held_bytes_are_counted_live_and_the_largest_holder_pays() -> None:
    limits, _ = quota(agent=StreamLimits(100, 10, 1e6, 100))
    cuts = Cuts()
    busy = admit(limits, "alice", "box", cuts)
    stalled = admit(limits, "bob", "box", cuts)
    stalled.hold(7)
    busy.hold(3)
    busy.hold(-3)  # read at once: never held for long
    busy.hold(3)
    assert limits.usage("agent:box") == (2, 10) and cuts.told == []
    busy.hold(1)  # over the workspace's cap: the stalled stream, holding the most, is cut
    assert [(name, error.kind) for name, error in cuts.told] == [("bob->box", "buffered")]
    assert "buffer limit: 1 MiB held for slow readers per workspace" in cuts.told[0][1].reason
    assert stalled.exceeded is cuts.told[0][1] and busy.exceeded is None
    busy.hold(1)  # still over, but the stalled one is already being cut: nobody else pays
    assert len(cuts.told) == 1
    with pytest.raises(LimitExceeded, match="buffer limit") as refused:
        admit(limits, "carol", "box")  # full: no new stream until bytes are given back
    assert refused.value.kind == "buffered"
    stalled.release()
    assert limits.usage("agent:box") == (1, 5)
    assert limits.usage("user:bob") == (0, 0)
    admit(limits, "carol", "box")
    admit(limits, "alice", "other").hold(10)  # other workspaces are not affected
    assert len(cuts.told) == 1


def test_held_bytes_after_release_are_ignored() -> None:
    limits, _ = quota(user=StreamLimits(100, 10, 1e6, 100))
    reservation = admit(limits, "alice", "box")
    reservation.hold(4)
    reservation.release()
    reservation.hold(-4)  # a stream's last report, after its connection ended
    reservation.hold(50)
    assert limits.usage("user:alice") == (0, 0)


def test_new_streams_per_second_follow_a_token_bucket() -> None:
    limits, clock = quota(user=StreamLimits(100, 10**9, streams_per_second=2, burst=3))
    for _ in range(3):
        admit(limits, "alice", "box").release()
    with pytest.raises(LimitExceeded, match="2 new streams per second per user") as refused:
        admit(limits, "alice", "box")
    assert refused.value.retry_after == pytest.approx(0.5)
    assert refused.value.kind == "rate"
    clock.now += 0.5
    admit(limits, "alice", "box").release()
    with pytest.raises(LimitExceeded):
        admit(limits, "alice", "box")


def test_a_refused_stream_costs_nothing() -> None:
    limits, _ = quota(agent=StreamLimits(1, 10**9, 1e6, 100))
    admit(limits, "alice", "box")
    with pytest.raises(LimitExceeded):
        admit(limits, "bob", "box")
    assert limits.usage("user:bob") == (0, 0)


def test_idle_entries_are_forgotten() -> None:
    limits, clock = quota(user=StreamLimits(10, 10**9, streams_per_second=1, burst=5))
    held = admit(limits, "holder", "box")
    held.hold(1)
    for n in range(5000):
        admit(limits, f"user{n}", f"box{n}").release()
    clock.now += 2
    admit(limits, "late", "box")
    assert limits.usage("user:holder") == (1, 1)
    assert len(limits._usage) <= 4
    held.release()


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["acquire", "release", "hold", "tick"]),
            st.integers(0, 3),
            st.integers(-3, 3),
        ),
        max_size=80,
    )
)
def test_limits_hold_and_usage_adds_up(ops: list[tuple[str, int, int]]) -> None:
    """Counts add up, and a cap is only ever passed by the bytes of streams told to go."""
    per_user = StreamLimits(3, 10, streams_per_second=2, burst=4)
    per_agent = StreamLimits(4, 12, streams_per_second=3, burst=5)
    limits, clock = quota(per_user, per_agent)
    held: list[tuple[str, str, Reservation]] = []
    for op, a, b in ops:
        if op == "acquire":
            user, agent = f"u{a}", f"a{abs(b)}"
            with contextlib.suppress(LimitExceeded):
                held.append((user, agent, admit(limits, user, agent)))
        elif op == "release" and held:
            held.pop(a % len(held))[2].release()
        elif op == "hold" and held:
            reservation = held[a % len(held)][2]
            reservation.hold(max(b, -reservation.held))  # a stream never gives back more
        else:
            clock.now += a / 2
        for index, (key, cap, count_cap) in enumerate(
            (("user", per_user.max_buffered_bytes, 3), ("agent", per_agent.max_buffered_bytes, 4))
        ):
            for name in {h[index] for h in held}:
                mine = [h[2] for h in held if h[index] == name]
                total = sum(r.held for r in mine)
                assert limits.usage(f"{key}:{name}") == (len(mine), total)
                assert len(mine) <= count_cap
                # Streams not told to go stay within the cap: a cut always restores it.
                assert sum(r.held for r in mine if r.exceeded is None) <= cap
