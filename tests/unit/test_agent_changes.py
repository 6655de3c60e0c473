"""What the gateway's watch of `/mgmt/agents` holds and says: coalesced changes, held and
released transitions, and the operator's parsing of each line."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kuberde.gateway.activity import ActivityTracker
from kuberde.gateway.agent_watch import DEFAULT_HEARTBEAT, heartbeat_of
from kuberde.gateway.changes import AgentChanges, Batch
from kuberde.operator.monitor import GatewayAgent, WatchEvent, newer_of, parse_watch_event

pytestmark = pytest.mark.timeout(10)


async def test_changes_are_coalesced_per_agent_in_first_change_order() -> None:
    changes = AgentChanges(limit=10)
    for agent in ("b", "a", "b", "b", "a", "c"):
        changes.add(agent)
    assert len(changes) == 3
    assert await changes.next(5.0) == Batch(("b", "a", "c"))
    assert len(changes) == 0


async def test_no_change_within_the_wait_is_an_empty_batch() -> None:
    changes = AgentChanges(limit=10)
    assert await changes.next(0.01) == Batch(())


async def test_a_change_ends_the_wait() -> None:
    changes = AgentChanges(limit=10)
    waiting = asyncio.ensure_future(changes.next(30.0))
    await asyncio.sleep(0)
    changes.add("a")
    assert await asyncio.wait_for(waiting, 5.0) == Batch(("a",))


@given(st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=2), max_size=200))
def test_pending_never_exceeds_the_limit(agents: list[str]) -> None:
    changes = AgentChanges(limit=5)
    for agent in agents:
        changes.add(agent)
        assert len(changes) <= 5
    batch = asyncio.run(changes.next(0.0))
    assert batch is not None
    if len(set(agents)) > 5:
        # Too many to hold: a full list says everything at once.
        assert batch == Batch((), resync=True)
    else:
        assert batch == Batch(tuple(dict.fromkeys(agents)))


async def test_after_a_resync_changes_are_collected_again() -> None:
    changes = AgentChanges(limit=1)
    changes.add("a")
    changes.add("b")
    assert await changes.next(1.0) == Batch((), resync=True)
    changes.add("c")
    assert await changes.next(1.0) == Batch(("c",))


async def test_closed_changes_end_the_watch() -> None:
    changes = AgentChanges(limit=10)
    waiting = asyncio.ensure_future(changes.next(30.0))
    await asyncio.sleep(0)
    changes.close()
    assert await asyncio.wait_for(waiting, 5.0) is None
    changes.add("a")
    assert await changes.next(30.0) is None


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        AgentChanges(limit=0)


def test_only_becoming_held_or_released_is_told() -> None:
    told: list[str] = []
    tracker = ActivityTracker(on_held=told.append)
    tracker.track("a")
    tracker.bytes_moved("a")
    assert told == [], "connecting and traffic are no change of hands"
    tracker.stream_opened("a")
    tracker.stream_opened("a")
    tracker.waiting_started("a")
    tracker.stream_closed("a")
    tracker.waiting_ended("a")
    assert told == ["a"], "held once, however many sessions"
    tracker.stream_closed("a")
    assert told == ["a", "a"], "released by the last one"
    tracker.http_started("b")
    tracker.http_ended("b")
    tracker.waiting_ended("b")
    assert told == ["a", "a", "b", "b"]


def test_tracking_an_agent_records_no_activity() -> None:
    tracker = ActivityTracker()
    tracker.track("a")
    activity = tracker.get("a")
    assert activity is not None
    assert (activity.last_activity, activity.last_activity_source, activity.sessions) == (
        None,
        None,
        0,
    )
    tracker.stream_opened("a")
    tracker.track("a")
    assert tracker.get("a") is activity and activity.sessions == 1, "tracking keeps what is known"


@pytest.mark.parametrize(
    ("value", "seconds"), [(None, DEFAULT_HEARTBEAT), ("0.1", 0.1), ("2", 2.0), ("60", 60.0)]
)
def test_heartbeat_parameter(value: str | None, seconds: float) -> None:
    assert heartbeat_of(value) == seconds


@pytest.mark.parametrize("value", ["0", "0.05", "61", "-1", "soon", "", "nan", "inf"])
def test_bad_heartbeat_parameter(value: str) -> None:
    with pytest.raises(ValueError, match=r"heartbeat must be a number of seconds from 0\.1 to 60"):
        heartbeat_of(value)


def _line(event: object) -> bytes:
    return json.dumps(event).encode() + b"\n"


ENTRY = {
    "id": "user-alice-dev",
    "owner": "alice",
    "online": True,
    "sessions": 2,
    "last_activity": "2026-01-02T03:04:05+00:00",
    "last_activity_source": "stream opened",
    "connected_since": "2026-01-02T03:00:00+00:00",
}
AGENT = GatewayAgent(
    online=True,
    sessions=2,
    last_activity=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    last_activity_source="stream opened",
)


def test_watch_events_parse() -> None:
    listed = parse_watch_event(_line({"type": "list", "agents": [ENTRY], "generated_at": "x"}))
    assert listed == WatchEvent(agents={"user-alice-dev": AGENT})
    one = parse_watch_event(_line({"type": "agent", "agent": ENTRY}))
    assert one == WatchEvent(agent_id="user-alice-dev", agent=AGENT)
    assert parse_watch_event(_line({"type": "gone", "id": "user-a-b"})) == WatchEvent(
        agent_id="user-a-b"
    )
    assert parse_watch_event(_line({"type": "heartbeat", "generated_at": "x"})) == WatchEvent()


@pytest.mark.parametrize(
    "line",
    [
        b"not json\n",
        _line([1, 2]),
        _line({"agents": []}),
        _line({"type": "list"}),
        _line({"type": "agent", "agent": {"online": True}}),
        _line({"type": "gone"}),
        _line({"type": "surprise"}),
    ],
)
def test_malformed_watch_lines_are_refused(line: bytes) -> None:
    with pytest.raises(ValueError):
        parse_watch_event(line)


_AGENTS = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]),
    st.builds(
        GatewayAgent,
        online=st.booleans(),
        sessions=st.integers(0, 3),
        last_activity=st.none(),
        last_activity_source=st.none(),
    ),
)


@given(_AGENTS, _AGENTS, st.sets(st.sampled_from(["a", "b", "c", "d"])))
def test_a_list_in_flight_yields_to_what_was_pushed_meanwhile(
    listed: dict[str, GatewayAgent], current: dict[str, GatewayAgent], changed: set[str]
) -> None:
    merged = newer_of(listed, current, changed)
    for agent_id in {*listed, *current, *changed}:
        source = current if agent_id in changed else listed
        assert merged.get(agent_id) == source.get(agent_id), agent_id
    assert set(merged) <= {*listed, *current}
