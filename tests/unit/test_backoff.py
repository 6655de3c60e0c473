from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kuberde.backoff import Backoff, ceiling, full_jitter
from kuberde.engine import RETRY_BASE, RETRY_CAP


def test_ceiling_doubles_from_half_a_second_to_thirty() -> None:
    backoff = Backoff(rng=random.Random(1))
    ceilings = []
    for _ in range(10):
        ceilings.append(backoff.ceiling)
        backoff.next_delay()
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


@given(seed=st.integers(), attempts=st.integers(min_value=1, max_value=200))
def test_every_delay_is_within_zero_and_its_ceiling(seed: int, attempts: int) -> None:
    backoff = Backoff(rng=random.Random(seed))
    for _ in range(attempts):
        ceiling = backoff.ceiling
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling <= 30.0


def test_full_jitter_spreads_delays_over_the_whole_range() -> None:
    rng = random.Random(7)
    delays = []
    for _ in range(2000):
        backoff = Backoff(rng=rng)
        for _ in range(6):
            backoff.next_delay()
        delays.append(backoff.next_delay())  # ceiling 30 s
    assert min(delays) < 3.0
    assert max(delays) > 27.0
    assert len({round(delay, 3) for delay in delays}) > 1000


def test_same_seed_same_delays() -> None:
    first = Backoff(rng=random.Random(42))
    second = Backoff(rng=random.Random(42))
    assert [first.next_delay() for _ in range(20)] == [second.next_delay() for _ in range(20)]


def test_reset_starts_over() -> None:
    backoff = Backoff(rng=random.Random(3))
    for _ in range(8):
        backoff.next_delay()
    backoff.reset()
    assert backoff.ceiling == 0.5
    assert backoff.next_delay() <= 0.5


@given(lasted=st.floats(min_value=30.0, max_value=1e9), failures=st.integers(0, 50))
def test_a_session_that_held_resets(lasted: float, failures: int) -> None:
    backoff = Backoff(rng=random.Random(0))
    for _ in range(failures):
        backoff.next_delay()
    backoff.session_ended(lasted)
    assert backoff.ceiling == 0.5


@given(lasted=st.floats(min_value=0.0, max_value=29.999), failures=st.integers(1, 50))
def test_a_short_session_keeps_growing(lasted: float, failures: int) -> None:
    backoff = Backoff(rng=random.Random(0))
    for _ in range(failures):
        backoff.next_delay()
    before = backoff.ceiling
    backoff.session_ended(lasted)
    assert backoff.ceiling == before > 0.5


def test_many_attempts_do_not_overflow() -> None:
    backoff = Backoff(rng=random.Random(0))
    for _ in range(10_000):
        assert backoff.next_delay() <= 30.0
    assert backoff.ceiling == 30.0


@pytest.mark.parametrize(("base", "cap"), [(0.0, 30.0), (-1.0, 30.0), (5.0, 1.0)])
def test_bad_parameters(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="base"):
        Backoff(base=base, cap=cap)


@given(
    attempt=st.integers(min_value=-5, max_value=10**6),
    base=st.floats(min_value=0.001, max_value=10.0),
    extra=st.floats(min_value=0.0, max_value=1000.0),
)
def test_the_ceiling_doubles_from_base_to_cap_and_never_overflows(
    attempt: int, base: float, extra: float
) -> None:
    cap = base + extra
    value = ceiling(attempt, base=base, cap=cap)
    assert base <= value <= cap
    assert ceiling(attempt + 1, base=base, cap=cap) >= value
    if 0 <= attempt < 30:
        assert value == min(cap, base * 2**attempt)
    if attempt >= 64:
        assert value == cap


def test_the_engine_schedule_reaches_its_cap_and_stays() -> None:
    """The operator's retries: 0.5 s, 1 s, 2 s, ... at most a minute apart."""
    assert [ceiling(n, base=RETRY_BASE, cap=RETRY_CAP) for n in range(9)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        60.0,
        60.0,
    ]


@given(seed=st.integers(), attempt=st.integers(min_value=0, max_value=1000))
def test_full_jitter_stays_under_the_ceiling(seed: int, attempt: int) -> None:
    delay = full_jitter(attempt, base=0.5, cap=60.0, rng=random.Random(seed))
    assert 0.0 <= delay <= ceiling(attempt, base=0.5, cap=60.0)
