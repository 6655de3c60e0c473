"""The soak's own logic: failures explained by injected faults, payloads checked end to end."""

from __future__ import annotations

import itertools
import os
import random

from bench.soak import FAULT_SHADOW, LAG_METRIC, Timeline, cpu_shares, explain, gauge, per_minute
from bench.soakpeers import BLOCK, CHUNK, Payload, TrailerCheck
from hypothesis import given, settings
from hypothesis import strategies as st


def test_failures_are_explained_by_a_restart_or_a_kill_of_that_agent_only() -> None:
    timeline = Timeline(restarts=[(100.0, 110.0)])
    kills = {"user-u1-w1": [200.0]}
    assert explain((105.0, "user-u2-w2", "HTTP 404"), kills, timeline) == "gateway restart"
    late = 110.0 + FAULT_SHADOW
    assert explain((late, "user-u2-w2", "HTTP 404"), kills, timeline) == "gateway restart"
    assert explain((late + 1, "user-u2-w2", "x"), kills, timeline) == "unexplained: x"
    assert explain((99.0, "user-u2-w2", "x"), kills, timeline) == "unexplained: x"
    assert explain((210.0, "user-u1-w1", "closed early"), kills, timeline) == "agent killed"
    assert explain((210.0, "user-u3-w3", "closed early"), kills, timeline) == (
        "unexplained: closed early"
    )
    assert explain((199.0, "user-u1-w1", "y"), kills, timeline) == "unexplained: y"


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3 * CHUNK), st.lists(st.integers(1, CHUNK), min_size=1), st.integers(0, 99))
def test_a_payload_checks_out_however_it_is_split_and_not_once_changed(
    size: int, cuts: list[int], flip: int
) -> None:
    payload = Payload(random.Random(size), os.urandom(BLOCK), size)
    chunks = list(payload.chunks())
    assert len(set(chunks)) == len(chunks)  # no two chunks alike
    data = b"".join(chunks) + payload.digest.digest()
    assert len(data) == size + 32

    def check(stream: bytes) -> TrailerCheck:
        checker = TrailerCheck()
        pieces = itertools.cycle(cuts)
        offset = 0
        while offset < len(stream):
            cut = next(pieces)
            checker.update(stream[offset : offset + cut])
            offset += cut
        return checker

    whole = check(data)
    assert whole.intact() and whole.tail == payload.digest.digest()
    position = flip * len(data) // 100
    changed = data[:position] + bytes([data[position] ^ 1]) + data[position + 1 :]
    assert not check(changed).intact()
    assert not check(data[:-1]).intact()


def test_cpu_shares_are_per_process_and_skip_a_restarted_counter() -> None:
    shares = cpu_shares(
        {"gateway": 10.0, "agents-0": 1.0}, {"gateway": 2.0, "agents-0": 6.0, "probe-0": 1.0}, 10.0
    )
    assert shares == {"gateway": 0.0, "agents-0": 0.5}


def test_the_loop_lag_gauge_is_read_from_the_gateways_metrics_text() -> None:
    text = (
        "# HELP kuberde_event_loop_lag_seconds How late\n"
        "# TYPE kuberde_event_loop_lag_seconds gauge\n"
        "kuberde_event_loop_lag_seconds_other 9.0\n"
        "kuberde_event_loop_lag_seconds 0.125\n"
    )
    assert gauge(text, LAG_METRIC) == 0.125
    assert gauge("kuberde_agents_online 3.0\n", LAG_METRIC) is None
    assert gauge("kuberde_event_loop_lag_seconds NaNish\n", LAG_METRIC) is None


@given(st.lists(st.tuples(st.integers(0, 3600), st.floats(0, 10)), max_size=50))
def test_per_minute_puts_every_sample_in_the_minute_it_fell_in(
    samples: list[tuple[int, float]],
) -> None:
    buckets = per_minute([(1000 + at, value) for at, value in samples], 1000)
    assert sorted(v for values in buckets.values() for v in values) == sorted(
        value for _, value in samples
    )
    for at, value in samples:
        assert value in buckets[int(at // 60)]
