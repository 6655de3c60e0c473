"""Users' requests carried on an RDEAgent (`kuberde stop`, `kuberde extend` on Kubernetes):
`plan.read_requests` and `plan.honour_stop`, and an extension through `plan.verdict`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from kuberde import policy
from kuberde.naming import EXTEND_ANNOTATION, STOP_ANNOTATION, WAKE_ANNOTATION
from kuberde.operator.annotations import parse_time
from kuberde.plan import Desired, Requests, honour_stop, read_requests, request_time_text, verdict

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
STALENESS = timedelta(seconds=5)

times = st.integers(min_value=-7_200_000_000, max_value=7_200_000_000).map(
    lambda us: NOW + timedelta(microseconds=us)
)
optional_times = st.none() | times
junk = st.text(max_size=200).filter(lambda text: _parses(text) is None)


def _parses(text: str) -> datetime | None:
    return read_requests({STOP_ANNOTATION: text}).stop_requested_at


def _stamp(when: datetime) -> str:
    return policy.format_timestamp(when)


@given(stop=optional_times, until=optional_times)
def test_timestamps_the_gateway_writes_are_read_back(
    stop: datetime | None, until: datetime | None
) -> None:
    annotations = {WAKE_ANNOTATION: _stamp(NOW), "other": "x"}
    if stop is not None:
        annotations[STOP_ANNOTATION] = stop.isoformat(timespec="microseconds")
    if until is not None:
        annotations[EXTEND_ANNOTATION] = _stamp(until)
    requests = read_requests(annotations)
    assert requests == Requests(stop, until.replace(microsecond=0) if until else None)


@given(bad=junk, which=st.sampled_from([STOP_ANNOTATION, EXTEND_ANNOTATION]))
def test_a_bad_value_is_ignored_with_a_message_naming_it(bad: str, which: str) -> None:
    requests = read_requests({which: bad})
    assert requests.stop_requested_at is None and requests.extended_until is None
    [problem] = requests.problems
    assert which in problem and "ignored" in problem
    assert len(problem) < 200, "a huge value is not quoted whole"
    assert (
        honour_stop(requests, scaled_down=False, scaled_down_at=None, wake_requested_at=None)
        is None
    )


def test_a_naive_time_means_utc() -> None:
    requests = read_requests({EXTEND_ANNOTATION: "2026-01-02T05:00:00"})
    assert requests.extended_until == datetime(2026, 1, 2, 5, tzinfo=UTC)


@given(stop=times, scaled_down=st.booleans(), scaled_down_at=optional_times, wake=optional_times)
def test_a_stop_scales_down_unless_a_later_wake_overtook_it_and_then_clears_itself(
    stop: datetime, scaled_down: bool, scaled_down_at: datetime | None, wake: datetime | None
) -> None:
    before = policy.desired_replicas(
        scaled_down=scaled_down, wake_requested_at=wake, scaled_down_at=scaled_down_at
    )
    outcome = honour_stop(
        Requests(stop_requested_at=stop),
        scaled_down=scaled_down,
        scaled_down_at=scaled_down_at,
        wake_requested_at=wake,
    )
    assert outcome is not None
    if wake is not None and wake >= stop:
        # Overtaken: nothing changes but the request going away.
        assert outcome.scaled_down_at is None and "overtaken" in outcome.reason
        return
    assert outcome.scaled_down_at is not None
    assert outcome.scaled_down_at >= stop
    if scaled_down and scaled_down_at is not None:
        assert outcome.scaled_down_at >= scaled_down_at, "a recorded scale-down never moves back"
    # As written on the RDEAgent and read back by the reconciler: sub-second order survives.
    written = parse_time(request_time_text(outcome.scaled_down_at))
    assert written == outcome.scaled_down_at
    after = policy.desired_replicas(
        scaled_down=True, wake_requested_at=wake, scaled_down_at=written
    )
    assert after == 0, f"still {after} replicas after a stop (before: {before})"
    # A wake asked for after the stop wins again.
    later = outcome.scaled_down_at + timedelta(microseconds=1)
    assert (
        policy.desired_replicas(
            scaled_down=True, wake_requested_at=later, scaled_down_at=outcome.scaled_down_at
        )
        == 1
    )
    # Once written, the record carries no request: honouring it again does nothing.
    assert (
        honour_stop(
            read_requests({}),
            scaled_down=True,
            scaled_down_at=outcome.scaled_down_at,
            wake_requested_at=wake,
        )
        is None
    )


def _desired(ttl: timedelta, until: datetime | None) -> Desired:
    return Desired(
        ttl=ttl,
        created_at=NOW - timedelta(hours=3),
        scaled_down=False,
        scaled_down_at=None,
        wake_requested_at=None,
        woken_at=None,
        recorded_activity=None,
        extended_until=until,
    )


@given(
    ttl=st.integers(min_value=1, max_value=3_600).map(lambda s: timedelta(seconds=s)),
    idle=st.integers(min_value=0, max_value=7_200).map(lambda s: timedelta(seconds=s)),
    until=optional_times,
    streams=st.integers(min_value=0, max_value=2),
)
def test_an_extension_moves_the_idle_deadline_and_holds_until_then(
    ttl: timedelta, idle: timedelta, until: datetime | None, streams: int
) -> None:
    snapshot = policy.ActivitySnapshot(
        online=True,
        open_streams=streams,
        last_activity=NOW - idle,
        last_activity_source="bytes",
        observed_at=NOW,
    )
    _, plain = verdict(_desired(ttl, None), snapshot, now=NOW, max_staleness=STALENESS)
    _, extended = verdict(_desired(ttl, until), snapshot, now=NOW, max_staleness=STALENESS)
    assert plain.idle_deadline == NOW - idle + ttl
    expected = max(plain.idle_deadline, until) if until is not None else plain.idle_deadline
    assert extended.idle_deadline == expected
    if until is not None and until >= NOW:
        assert not extended.scale_down
    if extended.scale_down:
        assert plain.scale_down, "an extension never brings a scale-down forward"
