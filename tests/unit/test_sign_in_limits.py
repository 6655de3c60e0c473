"""Password attempt limits: per address, global, and lockouts that cannot lock a user out."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kuberde.auth.issuer.lockout import SignInLimiter, SignInLimits


def test_one_address_is_slowed_and_others_are_not() -> None:
    limiter = SignInLimiter(SignInLimits(per_address_per_second=0.5, per_address_burst=3))
    assert [limiter.refusal(f"u{n}", "10.0.0.1", 0.0) for n in range(3)] == [None] * 3
    refusal = limiter.refusal("u3", "10.0.0.1", 0.0)
    assert refusal is not None and "from your address" in refusal
    assert limiter.refusal("u3", "10.0.0.2", 0.0) is None
    assert limiter.refusal("u3", "10.0.0.1", 2.0) is None


def test_failures_lock_a_name_out_at_one_address_only() -> None:
    limits = SignInLimits(max_failed_logins=3, lockout_seconds=60, per_address_burst=100)
    limiter = SignInLimiter(limits)
    for _ in range(3):
        assert limiter.refusal("alice", "attacker", 0.0) is None
        limiter.failed("alice", "attacker", 0.0)
    refusal = limiter.refusal("alice", "attacker", 1.0)
    assert refusal is not None and "failed attempts" in refusal
    assert limiter.refusal("alice", "home", 1.0) is None
    assert limiter.refusal("alice", "attacker", 61.0) is None


def test_the_global_limit_spares_known_name_and_address_pairs() -> None:
    limiter = SignInLimiter(SignInLimits(global_per_second=1.0, global_burst=2))
    assert limiter.refusal("alice", "home", 0.0) is None
    limiter.succeeded("alice", "home", 0.0)
    assert limiter.refusal("x", "a", 0.0) is None
    refused = limiter.refusal("y", "b", 0.0)
    assert refused is not None and "right now" in refused
    assert limiter.refusal("alice", "home", 0.0) is None
    assert limiter.refusal("alice", "elsewhere", 0.0) is not None


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50), st.booleans()), max_size=300))
def test_global_attempts_never_exceed_the_bucket(attempts: list[tuple[int, int, bool]]) -> None:
    limits = SignInLimits(global_per_second=1.0, global_burst=5, per_address_burst=1000)
    limiter = SignInLimiter(limits)
    now = 0.0
    checked = 0
    for name, address, tick in attempts:
        if tick:
            now += 0.5
        if limiter.refusal(f"u{name}", f"a{address}", now) is None:
            checked += 1
            limiter.failed(f"u{name}", f"a{address}", now)
    assert checked <= limits.global_burst + now * limits.global_per_second
