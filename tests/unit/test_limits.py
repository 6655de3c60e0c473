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


def quota(user: StreamLimits = LOOSE, agent: StreamLimits = LOOSE) -> tuple[StreamQuota, Clock]:
    clock = Clock()
    return StreamQuota(StreamQuotaSettings(per_user=user, per_agent=agent), clock), clock


def test_concurrent_streams_per_user_are_capped_and_released() -> None:
    limits, _ = quota(user=StreamLimits(2, 10**9, 1e6, 100))
    first = limits.acquire("alice", "a", 1)
    limits.acquire("alice", "b", 1)
    with pytest.raises(LimitExceeded, match="user alice has 2 open connections"):
        limits.acquire("alice", "c", 1)
    limits.acquire("bob", "c", 1)  # other users are not affected
    first.release()
    first.release()  # releasing twice gives back only one stream
    limits.acquire("alice", "c", 1)
    with pytest.raises(LimitExceeded):
        limits.acquire("alice", "d", 1)


def test_buffered_bytes_per_agent_are_capped() -> None:
    limits, _ = quota(agent=StreamLimits(100, 10, 1e6, 100))
    limits.acquire("alice", "box", 6)
    with pytest.raises(LimitExceeded, match=r"workspace box would exceed 1 MiB"):
        limits.acquire("bob", "box", 6)
    limits.acquire("bob", "other", 6)
    assert limits.usage("agent:box") == (1, 6)


def test_new_streams_per_second_follow_a_token_bucket() -> None:
    limits, clock = quota(user=StreamLimits(100, 10**9, streams_per_second=2, burst=3))
    for _ in range(3):
        limits.acquire("alice", "box", 0).release()
    with pytest.raises(LimitExceeded, match="faster than 2 per second") as refused:
        limits.acquire("alice", "box", 0)
    assert refused.value.retry_after == pytest.approx(0.5)
    clock.now += 0.5
    limits.acquire("alice", "box", 0).release()
    with pytest.raises(LimitExceeded):
        limits.acquire("alice", "box", 0)


def test_a_refused_stream_costs_nothing() -> None:
    limits, _ = quota(agent=StreamLimits(1, 10**9, 1e6, 100))
    limits.acquire("alice", "box", 5)
    with pytest.raises(LimitExceeded):
        limits.acquire("bob", "box", 5)
    assert limits.usage("user:bob") == (0, 0)


def test_idle_entries_are_forgotten() -> None:
    limits, clock = quota(user=StreamLimits(10, 10**9, streams_per_second=1, burst=5))
    held = limits.acquire("holder", "box", 1)
    for n in range(5000):
        limits.acquire(f"user{n}", f"box{n}", 1).release()
    clock.now += 2
    limits.acquire("late", "box", 1)
    assert limits.usage("user:holder") == (1, 1)
    assert len(limits._usage) <= 4
    held.release()


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["acquire", "release", "tick"]), st.integers(0, 3), st.integers(0, 3)
        ),
        max_size=80,
    )
)
def test_limits_hold_and_usage_adds_up(ops: list[tuple[str, int, int]]) -> None:
    per_user = StreamLimits(3, 10, streams_per_second=2, burst=4)
    per_agent = StreamLimits(4, 12, streams_per_second=3, burst=5)
    limits, clock = quota(per_user, per_agent)
    held: list[tuple[str, str, int, Reservation]] = []
    for op, a, b in ops:
        if op == "acquire":
            user, agent, size = f"u{a}", f"a{b}", a + b
            with contextlib.suppress(LimitExceeded):
                held.append((user, agent, size, limits.acquire(user, agent, size)))
        elif op == "release" and held:
            user, agent, size, reservation = held.pop(a % len(held))
            reservation.release()
        else:
            clock.now += a / 2
        for name in {h[0] for h in held}:
            mine = [h for h in held if h[0] == name]
            assert limits.usage(f"user:{name}") == (len(mine), sum(h[2] for h in mine))
            assert len(mine) <= 3 and sum(h[2] for h in mine) <= 10
        for name in {h[1] for h in held}:
            theirs = [h for h in held if h[1] == name]
            assert limits.usage(f"agent:{name}") == (len(theirs), sum(h[2] for h in theirs))
            assert len(theirs) <= 4 and sum(h[2] for h in theirs) <= 12
