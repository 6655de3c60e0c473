"""The decide step (`kuberde.plan.decide`), exhaustively: every combination the strategies can
build must give a plan that keeps the lifecycle rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from kuberde import policy
from kuberde.plan import (
    AWAITING_AGENT,
    SCALED_DOWN_MESSAGE,
    Action,
    Desired,
    Observation,
    Plan,
    Running,
    agent_seen_since,
    decide,
    hold_for_agent,
    verdict,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
STALENESS = timedelta(seconds=5)

offsets = st.integers(min_value=-7_200, max_value=60).map(lambda s: NOW + timedelta(seconds=s))
optional_times = st.none() | offsets
ttls = st.none() | st.integers(min_value=1, max_value=3_600).map(lambda s: timedelta(seconds=s))
activities = st.none() | st.builds(policy.Activity, offsets, st.sampled_from(["recorded", "bytes"]))
desireds = st.builds(
    Desired,
    ttl=ttls,
    created_at=offsets,
    scaled_down=st.booleans(),
    scaled_down_at=optional_times,
    wake_requested_at=optional_times,
    woken_at=optional_times,
    recorded_activity=activities,
)
runnings = st.builds(
    Running,
    current=st.booleans(),
    workload_running=st.booleans(),
    agent_seen=st.booleans(),
    failure=st.none() | st.just("workload failed: boom"),
)
snapshots = st.builds(
    policy.ActivitySnapshot,
    online=st.booleans(),
    open_streams=st.integers(min_value=0, max_value=3),
    last_activity=optional_times,
    last_activity_source=st.none() | st.just("stream closed"),
    observed_at=st.integers(min_value=-20, max_value=0).map(lambda s: NOW + timedelta(seconds=s)),
)
observations = st.builds(
    Observation,
    desired=st.none() | desireds,
    running=st.none() | runnings,
    activity=st.none() | snapshots,
    now=st.just(NOW),
)


def _plan(observation: Observation) -> Plan:
    return decide(observation, max_staleness=STALENESS)


def _replicas(desired: Desired) -> int:
    return policy.desired_replicas(
        scaled_down=desired.scaled_down,
        wake_requested_at=desired.wake_requested_at,
        scaled_down_at=desired.scaled_down_at,
    )


@given(observations)
def test_a_deleted_workspace_is_only_ever_stopped(observation: Observation) -> None:
    """The delete-during-stop race: whatever runs when the re-read finds no record is stopped,
    and nothing is started."""
    if observation.desired is not None:
        return
    plan = _plan(observation)
    expected = Action.NONE if observation.running is None else Action.STOP
    assert plan.action is expected
    assert plan.phase is None and plan.replicas == 0
    assert not plan.woken and not plan.scaled_down


@given(st.none() | runnings, st.none() | snapshots)
def test_a_sweep_that_saw_the_workspace_before_its_delete_does_not_start_it(
    running: Running | None, snapshot: policy.ActivitySnapshot | None
) -> None:
    """The stale observation would start it; the one re-read inside the lock must not."""
    stale = Observation(Desired(None, NOW, False, None, None, None, None), None, snapshot, NOW)
    assert _plan(stale).action is Action.START
    reread = Observation(None, running, snapshot, NOW)
    assert _plan(reread).action in (Action.NONE, Action.STOP)


@given(observations)
def test_starts_and_restarts_only_what_should_run(observation: Observation) -> None:
    plan = _plan(observation)
    desired, running = observation.desired, observation.running
    if plan.action is Action.START:
        assert desired is not None and running is None and _replicas(desired) == 1
    if plan.action is Action.RESTART:
        assert desired is not None and running is not None and not running.current
        assert _replicas(desired) == 1
    if desired is not None and _replicas(desired) == 0:
        assert plan.action is (Action.NONE if running is None else Action.STOP)
        assert plan.phase is policy.Phase.SCALED_DOWN and plan.message == SCALED_DOWN_MESSAGE


@given(observations)
def test_a_wake_that_wins_clears_the_marker_and_restarts_the_idle_clock(
    observation: Observation,
) -> None:
    plan = _plan(observation)
    desired = observation.desired
    woken = desired is not None and desired.scaled_down and _replicas(desired) == 1
    assert plan.woken is woken
    if woken:
        assert plan.action is not Action.SCALE_DOWN


@given(observations)
def test_scales_down_only_when_the_policy_says_idle_and_the_agent_has_been_up(
    observation: Observation,
) -> None:
    plan = _plan(observation)
    if plan.action is not Action.SCALE_DOWN:
        return
    desired, running, snapshot = observation.desired, observation.running, observation.activity
    assert desired is not None and running is not None and running.current
    assert desired.ttl is not None
    assert snapshot is not None and snapshot.open_streams == 0
    assert NOW - snapshot.observed_at <= STALENESS
    assert running.agent_seen or snapshot.online
    assert plan.scaled_down and plan.replicas == 0
    assert plan.phase is policy.Phase.SCALED_DOWN
    assert plan.last_activity is not None and NOW - plan.last_activity.at > desired.ttl


@given(desireds, runnings, snapshots)
def test_never_scales_down_a_workspace_whose_agent_has_not_come_up(
    desired: Desired, running: Running, snapshot: policy.ActivitySnapshot
) -> None:
    """Startup slower than the TTL (a loaded machine) is not idleness."""
    starting = Running(running.current, running.workload_running, False, running.failure)
    offline = policy.ActivitySnapshot(False, 0, None, None, snapshot.observed_at)
    plan = _plan(Observation(desired, starting, offline, NOW))
    assert plan.action is not Action.SCALE_DOWN


@given(desireds, snapshots, st.booleans())
def test_the_hold_keeps_the_verdict_once_the_agent_was_seen_and_only_ever_keeps_before(
    desired: Desired, snapshot: policy.ActivitySnapshot, seen: bool
) -> None:
    """The guard both runtimes apply: before the agent's first connection since its start,
    never a scale-down (and no deadline past due); after it, or for a verdict to keep it
    anyway, the verdict as it is."""
    _, checked = verdict(desired, snapshot, now=NOW, max_staleness=STALENESS)
    held = hold_for_agent(checked, agent_seen=seen)
    if seen or not checked.scale_down:
        assert held == checked
    else:
        assert not held.scale_down and held.idle_deadline is None
        assert held.reason == AWAITING_AGENT
        assert (held.last_activity, held.last_activity_source) == (
            checked.last_activity,
            checked.last_activity_source,
        )


@given(offsets, st.booleans(), optional_times)
def test_the_agent_counts_as_seen_when_online_or_seen_online_since_the_start(
    started_at: datetime, online: bool, seen_online_at: datetime | None
) -> None:
    seen = agent_seen_since(started_at, online=online, seen_online_at=seen_online_at)
    since = seen_online_at is not None and seen_online_at >= started_at
    assert seen is (online or since)
    # A connection before the latest start (created, woken) is not one since it.
    if seen_online_at is not None and not online:
        later = max(started_at, seen_online_at) + timedelta(microseconds=1)
        assert not agent_seen_since(later, online=False, seen_online_at=seen_online_at)


@given(observations)
def test_the_phase_is_the_one_after_the_action(observation: Observation) -> None:
    plan = _plan(observation)
    if plan.phase is None:
        return
    online = observation.activity is not None and observation.activity.online
    running = observation.running
    if plan.action in (Action.START, Action.RESTART):
        assert plan.phase is policy.Phase.PENDING
    if plan.phase is policy.Phase.RUNNING:
        assert plan.action is Action.NONE and online
        assert running is not None and running.workload_running and not running.failure
    if plan.phase is policy.Phase.ERROR:
        assert running is not None and running.failure and plan.message == running.failure
    if plan.phase is policy.Phase.STARTING:
        assert running is not None and not running.agent_seen and not online


@given(desireds, snapshots)
def test_status_follows_the_agent_connection(
    desired: Desired, snapshot: policy.ActivitySnapshot
) -> None:
    """Same record, same processes: online gives Running, gone gives Disconnected."""
    if _replicas(desired) == 0:
        return
    running = Running(current=True, workload_running=True, agent_seen=True, failure=None)
    busy = policy.ActivitySnapshot(True, 1, snapshot.last_activity, None, snapshot.observed_at)
    gone = policy.ActivitySnapshot(False, 1, snapshot.last_activity, None, snapshot.observed_at)
    assert _plan(Observation(desired, running, busy, NOW)).phase is policy.Phase.RUNNING
    assert _plan(Observation(desired, running, gone, NOW)).phase is policy.Phase.DISCONNECTED


def test_a_sweep_scales_down_an_idle_workspace_with_its_reason() -> None:
    desired = Desired(
        timedelta(seconds=60), NOW - timedelta(hours=1), False, None, None, None, None
    )
    running = Running(current=True, workload_running=True, agent_seen=True, failure=None)
    snapshot = policy.ActivitySnapshot(True, 0, NOW - timedelta(minutes=5), "stream closed", NOW)
    plan = _plan(Observation(desired, running, snapshot, NOW))
    assert plan.action is Action.SCALE_DOWN
    assert plan.reason.startswith("idle for 5m (ttl 1m)")
    assert plan.last_activity == policy.Activity(NOW - timedelta(minutes=5), "stream closed")


def test_recorded_activity_newer_than_the_gateways_counts() -> None:
    """A gateway restart forgets activity; the recorded last activity keeps the idle clock."""
    recorded = policy.Activity(NOW - timedelta(seconds=30), "recorded")
    desired = Desired(
        timedelta(seconds=60), NOW - timedelta(hours=1), False, None, None, None, recorded
    )
    running = Running(current=True, workload_running=True, agent_seen=True, failure=None)
    snapshot = policy.ActivitySnapshot(True, 0, None, None, NOW)
    plan = _plan(Observation(desired, running, snapshot, NOW))
    assert plan.action is Action.NONE
    assert plan.last_activity == recorded
