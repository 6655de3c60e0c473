from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kuberde.policy import (
    MAX_TTL,
    Activity,
    ActivitySnapshot,
    InvalidTTL,
    Phase,
    ScaleDecision,
    compute_phase,
    decide_scale_down,
    desired_replicas,
    format_duration,
    format_timestamp,
    idle_deadline,
    is_online,
    last_activity,
    parse_ttl,
)

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
TTL = timedelta(minutes=5)
STALENESS = timedelta(seconds=90)
US = timedelta(microseconds=1)
NAIVE = datetime(2026, 3, 1, 12, 0, 0)


def snap(
    *,
    last: datetime | None = T0,
    source: str | None = "stream closed",
    streams: int = 0,
    observed_at: datetime,
    online: bool = True,
) -> ActivitySnapshot:
    return ActivitySnapshot(
        online=online,
        open_streams=streams,
        last_activity=last,
        last_activity_source=source,
        observed_at=observed_at,
    )


def decide(
    *,
    now: datetime,
    ttl: timedelta | None = TTL,
    replicas: int = 1,
    snapshot: ActivitySnapshot | str | None = "fresh",
    woken_at: datetime | None = None,
    created_at: datetime = T0 - timedelta(days=1),
    max_staleness: timedelta = STALENESS,
) -> ScaleDecision:
    """A decision with a fresh snapshot reporting activity at T0 unless told otherwise."""
    chosen = snap(observed_at=now) if snapshot == "fresh" else snapshot
    assert not isinstance(chosen, str)
    return decide_scale_down(
        ttl=ttl,
        replicas=replicas,
        snapshot=chosen,
        woken_at=woken_at,
        created_at=created_at,
        now=now,
        max_staleness=max_staleness,
    )


# --- parse_ttl -------------------------------------------------------------------------

VALID_TTLS: list[tuple[object, timedelta | None]] = [
    (None, None),
    (0, None),
    ("0", None),
    ("", None),
    ("   ", None),
    ("\t\n", None),
    ("0s", None),
    ("0m", None),
    ("0h0m0s", None),
    ("000", None),
    ("1s", timedelta(seconds=1)),
    ("300s", timedelta(seconds=300)),
    ("45s", timedelta(seconds=45)),
    ("5m", timedelta(minutes=5)),
    ("90m", timedelta(minutes=90)),
    ("1h", timedelta(hours=1)),
    ("1d", timedelta(days=1)),
    ("1h30m", timedelta(hours=1, minutes=30)),
    ("1d2h", timedelta(days=1, hours=2)),
    ("2d3h4m5s", timedelta(days=2, hours=3, minutes=4, seconds=5)),
    ("1d30s", timedelta(days=1, seconds=30)),
    ("1h0m", timedelta(hours=1)),
    ("05m", timedelta(minutes=5)),
    (" 5m ", timedelta(minutes=5)),
    ("5m\n", timedelta(minutes=5)),
    ("300", timedelta(seconds=300)),
    (" 300 ", timedelta(seconds=300)),
    (300, timedelta(seconds=300)),
    (1, timedelta(seconds=1)),
    ("365d", MAX_TTL),
    ("8760h", MAX_TTL),
    (31_536_000, MAX_TTL),
    ("31536000", MAX_TTL),
    ("364d23h59m59s", MAX_TTL - timedelta(seconds=1)),
]


@pytest.mark.parametrize(("value", "expected"), VALID_TTLS)
def test_parse_ttl_valid(value: object, expected: timedelta | None) -> None:
    assert parse_ttl(value) == expected


INVALID_TTLS: list[tuple[object, str]] = [
    ("-5m", "negative"),
    ("-1", "negative"),
    (-1, "negative"),
    (-300, "negative"),
    ("1.5h", "fractions"),
    ("0.5", "fractions"),
    ("1,5h", "fractions"),
    ("5x", "units d, h, m, s"),
    ("5ms", "units d, h, m, s"),
    ("5us", "units d, h, m, s"),
    ("1w", "units d, h, m, s"),
    ("5M", "units d, h, m, s"),
    ("1H", "units d, h, m, s"),
    ("5 m", "units d, h, m, s"),
    ("1h 30m", "units d, h, m, s"),
    ("m", "units d, h, m, s"),
    ("h5", "units d, h, m, s"),
    ("1h30", "units d, h, m, s"),
    ("5m5m", "units d, h, m, s"),
    ("1h1h", "units d, h, m, s"),
    ("30m1h", "units d, h, m, s"),
    ("1s1m", "units d, h, m, s"),
    ("1h1d", "units d, h, m, s"),
    ("+5m", "units d, h, m, s"),
    ("five minutes", "units d, h, m, s"),
    ("PT5M", "units d, h, m, s"),
    ("\u0665m", "units d, h, m, s"),
    ("\u0665", "units d, h, m, s"),
    ("366d", "maximum of 365d"),
    ("365d1s", "maximum of 365d"),
    ("8761h", "maximum of 365d"),
    ("9999999999999999999999999999d", "maximum of 365d"),
    (31_536_001, "maximum of 365d"),
    (10**40, "maximum of 365d"),
    ("1" * 33, "longer than 32 characters"),
    (True, "whole number of seconds"),
    (False, "whole number of seconds"),
    (1.5, "whole number of seconds"),
    (300.0, "whole number of seconds"),
    (timedelta(minutes=5), "whole number of seconds"),
    (["5m"], "whole number of seconds"),
]


@pytest.mark.parametrize(("value", "reason"), INVALID_TTLS)
def test_parse_ttl_invalid(value: object, reason: str) -> None:
    with pytest.raises(InvalidTTL) as caught:
        parse_ttl(value)
    message = str(caught.value)
    assert repr(value) in message
    assert reason in message
    assert caught.value.value == value
    assert isinstance(caught.value, ValueError)


@given(st.text(max_size=40))
def test_parse_ttl_never_raises_anything_but_invalid_ttl(text: str) -> None:
    try:
        result = parse_ttl(text)
    except InvalidTTL:
        return
    assert result is None or timedelta(0) < result <= MAX_TTL


@given(st.integers())
def test_parse_ttl_integers_are_seconds(value: int) -> None:
    if value < 0 or value > MAX_TTL.total_seconds():
        with pytest.raises(InvalidTTL):
            parse_ttl(value)
    else:
        expected = timedelta(seconds=value) if value else None
        assert parse_ttl(value) == expected
        assert parse_ttl(str(value)) == expected


# --- format_duration / format_timestamp -------------------------------------------------


@pytest.mark.parametrize(
    ("td", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(microseconds=999_999), "0s"),
        (timedelta(seconds=45), "45s"),
        (timedelta(seconds=45, microseconds=999_999), "45s"),
        (timedelta(minutes=5), "5m"),
        (timedelta(seconds=95), "1m35s"),
        (timedelta(minutes=6, seconds=12), "6m12s"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(hours=1, seconds=1), "1h1s"),
        (timedelta(days=2, hours=3), "2d3h"),
        (timedelta(days=1), "1d"),
        (timedelta(days=400), "400d"),
    ],
)
def test_format_duration(td: timedelta, text: str) -> None:
    assert format_duration(td) == text


def test_format_duration_rejects_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_duration(-US)


@given(st.integers(min_value=1, max_value=int(MAX_TTL.total_seconds())))
def test_format_parse_round_trip(seconds: int) -> None:
    td = timedelta(seconds=seconds)
    assert parse_ttl(format_duration(td)) == td


def test_format_timestamp_is_utc_z() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert format_timestamp(datetime(2026, 3, 1, 14, 0, 5, 999, tzinfo=plus_two)) == (
        "2026-03-01T12:00:05Z"
    )
    assert format_timestamp(T0) == "2026-03-01T12:00:00Z"


# --- last_activity / idle_deadline -------------------------------------------------------


def test_last_activity_picks_latest_and_skips_missing() -> None:
    result = last_activity(
        None,
        (None, "gateway"),
        (T0, "stream closed"),
        (T0 + timedelta(seconds=1), "woken"),
        (T0 - timedelta(days=1), "created"),
    )
    assert result == Activity(T0 + timedelta(seconds=1), "woken")


def test_last_activity_tie_goes_to_first_listed() -> None:
    assert last_activity((T0, "stream opened"), (T0, "woken")) == Activity(T0, "stream opened")


def test_last_activity_of_nothing_is_none() -> None:
    assert last_activity() is None
    assert last_activity(None, (None, "gateway")) is None


def test_last_activity_compares_across_timezones() -> None:
    earlier_in_utc = datetime(2026, 3, 1, 13, 0, tzinfo=timezone(timedelta(hours=2)))
    assert last_activity((earlier_in_utc, "a"), (T0, "b")) == Activity(T0, "b")


def test_idle_deadline() -> None:
    assert idle_deadline(TTL, T0) == T0 + TTL
    assert idle_deadline(None, T0) is None
    assert idle_deadline(TTL, None) is None


# --- naive datetimes are refused everywhere ----------------------------------------------


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="observed_at must be timezone-aware"):
        snap(observed_at=NAIVE)
    with pytest.raises(ValueError, match="last_activity must be timezone-aware"):
        snap(last=NAIVE, observed_at=T0)
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        decide(now=NAIVE, snapshot=None)
    with pytest.raises(ValueError, match="created_at must be timezone-aware"):
        decide(now=T0, created_at=NAIVE)
    with pytest.raises(ValueError, match="woken_at must be timezone-aware"):
        decide(now=T0, woken_at=NAIVE)
    with pytest.raises(ValueError, match="timezone-aware"):
        last_activity((NAIVE, "woken"))
    with pytest.raises(ValueError, match="timezone-aware"):
        idle_deadline(TTL, NAIVE)
    with pytest.raises(ValueError, match="timezone-aware"):
        format_timestamp(NAIVE)
    with pytest.raises(ValueError, match="wake_requested_at must be timezone-aware"):
        desired_replicas(scaled_down=True, wake_requested_at=NAIVE, scaled_down_at=T0)
    with pytest.raises(ValueError, match="scaled_down_at must be timezone-aware"):
        desired_replicas(scaled_down=True, wake_requested_at=T0, scaled_down_at=NAIVE)


def test_snapshot_rejects_negative_streams_and_is_frozen() -> None:
    with pytest.raises(ValueError, match="open_streams"):
        snap(streams=-1, observed_at=T0)
    snapshot = snap(observed_at=T0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.open_streams = 3  # type: ignore[misc]


def test_decide_rejects_negative_inputs() -> None:
    with pytest.raises(ValueError, match="replicas must not be negative"):
        decide(now=T0, replicas=-1)
    with pytest.raises(ValueError, match="max_staleness must not be negative"):
        decide(now=T0, max_staleness=-US)
    with pytest.raises(ValueError, match="ttl must not be negative"):
        decide(now=T0, ttl=-US)


# --- decide_scale_down: the rules ----------------------------------------------------------


def test_idle_past_ttl_scales_down_with_reason() -> None:
    now = T0 + timedelta(minutes=6, seconds=12)
    decision = decide(now=now)
    assert decision == ScaleDecision(
        scale_down=True,
        reason=("idle for 6m12s (ttl 5m), lastActivity: 2026-03-01T12:00:00Z (stream closed)"),
        idle_deadline=T0 + TTL,
        last_activity=T0,
        last_activity_source="stream closed",
    )


def test_exactly_at_deadline_is_not_idle() -> None:
    decision = decide(now=T0 + TTL)
    assert not decision.scale_down
    assert decision.idle_deadline == T0 + TTL
    assert "TTL not expired, deadline 2026-03-01T12:05:00Z" in decision.reason


def test_one_microsecond_past_deadline_is_idle() -> None:
    assert decide(now=T0 + TTL + US).scale_down


def test_one_microsecond_before_deadline_is_not_idle() -> None:
    assert not decide(now=T0 + TTL - US).scale_down


@pytest.mark.parametrize("ttl", [None, timedelta(0)])
def test_disabled_ttl_never_scales_down(ttl: timedelta | None) -> None:
    decision = decide(now=T0 + timedelta(days=3650), ttl=ttl)
    assert not decision.scale_down
    assert decision.reason == "TTL disabled"
    assert decision.idle_deadline is None
    assert decision.last_activity == T0


@pytest.mark.parametrize("raw", [0, "0", "", None, "0s"])
def test_ttl_zero_from_spec_never_scales_down(raw: object) -> None:
    decision = decide(now=T0 + timedelta(days=3650), ttl=parse_ttl(raw))
    assert not decision.scale_down
    assert decision.reason == "TTL disabled"


def test_already_scaled_down_is_left_alone() -> None:
    decision = decide(now=T0 + timedelta(hours=1), replicas=0)
    assert not decision.scale_down
    assert decision.reason == "already scaled down (replicas 0)"


def test_missing_snapshot_fails_safe() -> None:
    decision = decide(now=T0 + timedelta(days=1), snapshot=None)
    assert not decision.scale_down
    assert decision.reason == "no activity data from the gateway; not scaling down"
    # Creation (a day earlier than T0) is the only activity known.
    assert decision.last_activity_source == "created"


def test_stale_snapshot_fails_safe() -> None:
    now = T0 + timedelta(hours=1)
    stale = snap(observed_at=now - timedelta(seconds=95))
    decision = decide(now=now, snapshot=stale)
    assert not decision.scale_down
    assert decision.reason == "activity data is stale (observed 1m35s ago); not scaling down"


def test_snapshot_exactly_max_staleness_old_is_fresh() -> None:
    now = T0 + timedelta(hours=1)
    assert decide(now=now, snapshot=snap(observed_at=now - STALENESS)).scale_down
    assert not decide(now=now, snapshot=snap(observed_at=now - STALENESS - US)).scale_down


def test_snapshot_observed_in_the_future_counts_as_fresh() -> None:
    now = T0 + timedelta(hours=1)
    assert decide(now=now, snapshot=snap(observed_at=now + timedelta(seconds=5))).scale_down


@pytest.mark.parametrize(("streams", "reason"), [(1, "1 open stream"), (2, "2 open streams")])
def test_open_streams_prevent_scale_down(streams: int, reason: str) -> None:
    now = T0 + timedelta(days=30)
    decision = decide(now=now, snapshot=snap(streams=streams, observed_at=now))
    assert not decision.scale_down
    assert decision.reason == reason


def test_offline_agent_without_activity_is_still_scaled_down() -> None:
    now = T0 + timedelta(hours=1)
    assert decide(now=now, snapshot=snap(online=False, observed_at=now)).scale_down


def test_creation_counts_as_activity() -> None:
    created = T0
    now = created + TTL
    no_activity = snap(last=None, source=None, observed_at=now)
    decision = decide(now=now, snapshot=no_activity, created_at=created)
    assert not decision.scale_down
    assert decision.last_activity_source == "created"
    assert decide(now=now + US, snapshot=no_activity, created_at=created).scale_down


def test_reported_activity_without_source_is_labelled_gateway() -> None:
    now = T0 + timedelta(hours=1)
    decision = decide(now=now, snapshot=snap(source=None, observed_at=now))
    assert decision.last_activity_source == "gateway"


def test_gateway_activity_older_than_creation_is_ignored() -> None:
    created = T0 + timedelta(minutes=1)
    now = T0 + TTL + timedelta(seconds=30)
    decision = decide(now=now, created_at=created)
    assert not decision.scale_down
    assert decision.last_activity == created


# --- wake ordering ---------------------------------------------------------------------------


def test_wake_restarts_the_idle_clock() -> None:
    woken = T0 + timedelta(minutes=10)
    # Gateway activity is long past the TTL, but the wake is recent.
    decision = decide(now=woken + TTL, woken_at=woken)
    assert not decision.scale_down
    assert decision.last_activity == woken
    assert decision.last_activity_source == "woken"
    assert decision.idle_deadline == woken + TTL
    assert decide(now=woken + TTL + US, woken_at=woken).scale_down


def test_activity_after_wake_extends_the_clock() -> None:
    woken = T0 - timedelta(minutes=1)
    decision = decide(now=T0 + TTL, woken_at=woken)
    assert decision.last_activity_source == "stream closed"
    assert not decision.scale_down


def test_wake_during_scale_down_wins_and_is_not_immediately_undone() -> None:
    """Scale-down at T, user connects at T+1s while replicas are still going to 0."""
    scaled_down_at = T0 + TTL + US
    wake = scaled_down_at + timedelta(seconds=1)
    replicas = desired_replicas(
        scaled_down=True, wake_requested_at=wake, scaled_down_at=scaled_down_at
    )
    assert replicas == 1
    # The next sweep must not scale it down again: the wake restarted the clock.
    for offset in (timedelta(0), timedelta(seconds=30), TTL):
        decision = decide(now=wake + offset, replicas=replicas, woken_at=wake)
        assert not decision.scale_down, decision.reason


def test_wake_older_than_scale_down_does_not_undo_it() -> None:
    scaled_down_at = T0 + timedelta(hours=1)
    for wake in (scaled_down_at - timedelta(seconds=1), scaled_down_at):
        assert (
            desired_replicas(
                scaled_down=True, wake_requested_at=wake, scaled_down_at=scaled_down_at
            )
            == 0
        )


def test_desired_replicas_table() -> None:
    assert desired_replicas(scaled_down=False, wake_requested_at=None, scaled_down_at=None) == 1
    assert desired_replicas(scaled_down=False, wake_requested_at=T0, scaled_down_at=T0) == 1
    assert desired_replicas(scaled_down=True, wake_requested_at=None, scaled_down_at=T0) == 0
    assert desired_replicas(scaled_down=True, wake_requested_at=None, scaled_down_at=None) == 0
    assert desired_replicas(scaled_down=True, wake_requested_at=T0, scaled_down_at=None) == 1
    assert desired_replicas(scaled_down=True, wake_requested_at=T0 + US, scaled_down_at=T0) == 1


def test_reconcile_does_not_flap() -> None:
    """Scale-down, then repeated reconciles with an old wake annotation: stays at 0."""
    old_wake = T0
    scaled_down_at = T0 + timedelta(minutes=30)
    for _ in range(5):
        assert (
            desired_replicas(
                scaled_down=True, wake_requested_at=old_wake, scaled_down_at=scaled_down_at
            )
            == 0
        )


# --- clock skew ------------------------------------------------------------------------------


def test_future_activity_is_clamped_to_now() -> None:
    now = T0
    future = snap(last=now + timedelta(minutes=3), observed_at=now)
    decision = decide(now=now, snapshot=future)
    assert not decision.scale_down
    assert decision.last_activity == now
    assert decision.idle_deadline == now + TTL
    assert decision.last_activity_source == "stream closed"
    assert "reported 3m in the future" in decision.reason
    assert "idle for 0s" in decision.reason


def test_future_activity_postpones_by_at_most_the_skew() -> None:
    reported = T0 + timedelta(minutes=3)
    for now in (T0, reported, reported + TTL):
        decision = decide(now=now, snapshot=snap(last=reported, observed_at=now))
        assert not decision.scale_down
    late = reported + TTL + US
    assert decide(now=late, snapshot=snap(last=reported, observed_at=late)).scale_down


def test_future_wake_and_creation_are_clamped_too() -> None:
    now = T0
    decision = decide(
        now=now,
        snapshot=snap(last=None, source=None, observed_at=now),
        woken_at=now + timedelta(seconds=10),
        created_at=now + timedelta(seconds=20),
    )
    assert decision.last_activity == now
    assert decision.last_activity_source == "created"
    assert not decision.scale_down


def test_mixed_timezones_decide_on_instants() -> None:
    plus_two = timezone(timedelta(hours=2))
    now_local = (T0 + TTL + US).astimezone(plus_two)
    assert decide(now=now_local).scale_down
    assert not decide(now=(T0 + TTL).astimezone(plus_two)).scale_down


# --- properties ----------------------------------------------------------------------------

moments = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
)
offsets = st.timedeltas(min_value=timedelta(days=-2), max_value=timedelta(days=2))
ttls = st.one_of(st.none(), st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=1)))


@dataclasses.dataclass(frozen=True)
class Scenario:
    ttl: timedelta | None
    replicas: int
    snapshot: ActivitySnapshot | None
    woken_at: datetime | None
    created_at: datetime
    now: datetime
    max_staleness: timedelta

    def decide(self) -> ScaleDecision:
        return decide_scale_down(
            ttl=self.ttl,
            replicas=self.replicas,
            snapshot=self.snapshot,
            woken_at=self.woken_at,
            created_at=self.created_at,
            now=self.now,
            max_staleness=self.max_staleness,
        )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    now = draw(moments)
    around_now = offsets.map(lambda d: now + d)
    snapshot = draw(
        st.one_of(
            st.none(),
            st.builds(
                ActivitySnapshot,
                online=st.booleans(),
                open_streams=st.integers(min_value=0, max_value=3),
                last_activity=st.one_of(st.none(), around_now),
                last_activity_source=st.one_of(st.none(), st.just("stream closed")),
                observed_at=around_now,
            ),
        )
    )
    return Scenario(
        ttl=draw(ttls),
        replicas=draw(st.integers(min_value=0, max_value=2)),
        snapshot=snapshot,
        woken_at=draw(st.one_of(st.none(), around_now)),
        created_at=draw(around_now),
        now=now,
        max_staleness=draw(st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=1))),
    )


@given(scenarios())
def test_scale_down_implies_every_precondition(case: Scenario) -> None:
    decision = case.decide()
    assert decision.last_activity is not None
    assert decision.last_activity <= case.now
    if not decision.scale_down:
        return
    assert case.ttl is not None and case.ttl > timedelta(0)
    assert case.replicas > 0
    assert case.snapshot is not None
    assert case.now - case.snapshot.observed_at <= case.max_staleness
    assert case.snapshot.open_streams == 0
    assert case.now - decision.last_activity > case.ttl
    assert decision.idle_deadline is not None and case.now > decision.idle_deadline
    for candidate in (case.snapshot.last_activity, case.woken_at, case.created_at):
        if candidate is not None:
            assert decision.last_activity >= min(candidate, case.now)


@given(scenarios(), st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=2)))
def test_not_scaling_down_now_means_not_earlier(case: Scenario, earlier_by: timedelta) -> None:
    if case.decide().scale_down:
        return
    assert not dataclasses.replace(case, now=case.now - earlier_by).decide().scale_down


@given(scenarios())
def test_scale_down_eventually_happens_without_activity(case: Scenario) -> None:
    assume(case.ttl is not None and case.ttl > timedelta(0))
    assert case.ttl is not None
    reported = case.snapshot.last_activity if case.snapshot else None
    times = [t for t in (reported, case.woken_at, case.created_at) if t is not None]
    later = max(times) + case.ttl + US
    fresh = ActivitySnapshot(
        online=False,
        open_streams=0,
        last_activity=reported,
        last_activity_source="stream closed",
        observed_at=later,
    )
    decision = dataclasses.replace(case, now=later, snapshot=fresh, replicas=1).decide()
    assert decision.scale_down, decision.reason


@given(
    st.booleans(),
    st.one_of(st.none(), moments),
    st.one_of(st.none(), moments),
)
def test_desired_replicas_property(
    scaled_down: bool, wake: datetime | None, scaled_down_at: datetime | None
) -> None:
    result = desired_replicas(
        scaled_down=scaled_down, wake_requested_at=wake, scaled_down_at=scaled_down_at
    )
    if not scaled_down:
        expected = 1
    elif wake is None:
        expected = 0
    elif scaled_down_at is None:
        expected = 1
    else:
        expected = 1 if wake > scaled_down_at else 0
    assert result == expected


# --- phases ----------------------------------------------------------------------------------


def _expected_phase(
    error: str | None, replicas: int, running: bool, online: bool, seen: bool
) -> Phase:
    if error:
        return Phase.ERROR
    if replicas == 0:
        return Phase.SCALED_DOWN
    if not running:
        return Phase.PENDING
    if online:
        return Phase.RUNNING
    return Phase.DISCONNECTED if seen else Phase.STARTING


@pytest.mark.parametrize(
    ("error", "replicas", "running", "online", "seen"),
    list(
        itertools.product(
            [None, "", "bad TTL"], [0, 1], [False, True], [False, True], [False, True]
        )
    ),
)
def test_compute_phase_table(
    error: str | None, replicas: int, running: bool, online: bool, seen: bool
) -> None:
    phase = compute_phase(
        error=error,
        desired_replicas=replicas,
        workload_running=running,
        agent_online=online,
        agent_seen_since_start=seen,
    )
    assert phase == _expected_phase(error, replicas, running, online, seen)


def test_compute_phase_named_rows() -> None:
    def phase(
        *,
        error: str | None = None,
        replicas: int = 1,
        running: bool = True,
        online: bool = False,
        seen: bool = False,
    ) -> Phase:
        return compute_phase(
            error=error,
            desired_replicas=replicas,
            workload_running=running,
            agent_online=online,
            agent_seen_since_start=seen,
        )

    assert phase(error="invalid TTL '5x'", online=True) is Phase.ERROR
    assert phase(replicas=0, online=True, seen=True) is Phase.SCALED_DOWN
    assert phase(running=False, online=True) is Phase.PENDING
    assert phase(online=True) is Phase.RUNNING
    assert phase(online=False, seen=False) is Phase.STARTING
    assert phase(online=False, seen=True) is Phase.DISCONNECTED


def test_compute_phase_rejects_negative_replicas() -> None:
    with pytest.raises(ValueError, match="desired_replicas"):
        compute_phase(
            error=None,
            desired_replicas=-1,
            workload_running=True,
            agent_online=True,
            agent_seen_since_start=True,
        )


def test_phase_values_and_online() -> None:
    assert [p.value for p in Phase] == [
        "Pending",
        "Starting",
        "Running",
        "Disconnected",
        "ScaledDown",
        "Error",
    ]
    assert [p for p in Phase if is_online(p)] == [Phase.RUNNING]
    assert Phase("ScaledDown") is Phase.SCALED_DOWN
    assert f"{Phase.RUNNING}" == "Running"


def test_extend_is_activity_now_and_optionally_a_later_deadline() -> None:
    from kuberde.policy import extension

    assert extension(ttl=TTL, now=T0, duration=None) == (T0 + TTL, None)
    two_hours = timedelta(hours=2)
    assert extension(ttl=TTL, now=T0, duration=two_hours) == (T0 + two_hours, T0 + two_hours)
    # A duration shorter than the TTL never brings the deadline forward.
    assert extension(ttl=TTL, now=T0, duration=timedelta(minutes=1))[0] == T0 + TTL
    with pytest.raises(ValueError, match="no TTL"):
        extension(ttl=None, now=T0, duration=two_hours)
    with pytest.raises(ValueError, match="positive"):
        extension(ttl=TTL, now=T0, duration=timedelta(0))


def test_an_extension_holds_off_scale_down_until_it_ends() -> None:
    until = T0 + timedelta(hours=1)

    def decide(now: datetime) -> ScaleDecision:
        return decide_scale_down(
            ttl=TTL,
            replicas=1,
            snapshot=snap(observed_at=now),
            woken_at=None,
            created_at=T0 - timedelta(days=1),
            now=now,
            max_staleness=STALENESS,
            extended_until=until,
        )

    held = decide(T0 + timedelta(minutes=30))
    assert not held.scale_down and "extended until" in held.reason
    assert held.idle_deadline == until
    assert decide(until + timedelta(seconds=1)).scale_down
    assert idle_deadline(TTL, T0, T0 + timedelta(seconds=1)) == T0 + TTL
