"""The soak's accounting: every failed attempt is explained by an injected fault or not."""

from __future__ import annotations

from bench.soak import FAULT_SHADOW, Timeline, explain


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
