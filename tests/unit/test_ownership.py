"""Who holds a colliding agent ID: order-independent, records first, then age, then name."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kuberde.operator.ownership import (
    Claimant,
    Recorded,
    choose_holder,
    claimant_of,
    id_taken,
    recorded_owner,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)

times = st.one_of(st.none(), st.integers(0, 3).map(lambda s: T0 + timedelta(seconds=s)))
claimants = st.lists(
    st.builds(
        Claimant,
        namespace=st.sampled_from(["kuberde", "other"]),
        name=st.sampled_from(["dev", "smith-dev", "x"]),
        owner=st.sampled_from(["alice", "alice-smith", "bob"]),
        created=times,
    ),
    min_size=1,
    max_size=5,
    unique_by=lambda c: (c.namespace, c.name),
)
records = st.lists(
    st.one_of(
        st.none(),
        st.tuples(
            st.sampled_from(["alice", "alice-smith", "bob"]),
            st.sampled_from(["dev", "smith-dev", "x"]),
        ),
    ),
    max_size=2,
)


@given(claimants, records, st.randoms())
def test_the_holder_does_not_depend_on_order(
    pool: list[Claimant], recorded: list[Recorded | None], rng: random.Random
) -> None:
    shuffled = list(pool)
    rng.shuffle(shuffled)
    assert choose_holder(shuffled, recorded) == choose_holder(pool, recorded)


@given(claimants, records)
def test_the_first_record_naming_a_claimant_wins(
    pool: list[Claimant], recorded: list[Recorded | None]
) -> None:
    holder = choose_holder(pool, recorded)
    assert holder in pool
    named = [r for r in recorded if r is not None and any(c.identity == r for c in pool)]
    if named:
        assert holder.identity == named[0]
        return
    for other in pool:
        if holder.created is not None and other.created is not None:
            assert (holder.created, holder.namespace, holder.name) <= (
                other.created,
                other.namespace,
                other.name,
            )
        elif other.created is not None:
            raise AssertionError(f"{holder} has no creation time but {other} does")


@given(claimants, records)
def test_the_holder_is_the_holder_of_any_group_it_is_in(
    pool: list[Claimant], recorded: list[Recorded | None]
) -> None:
    """Each claimant reconciles with what it sees; they agree when they see the same pool."""
    holder = choose_holder(pool, recorded)
    for me in pool:
        others = [c for c in pool if c != me]
        assert choose_holder([me, *others], recorded) == holder


def test_examples() -> None:
    alice = Claimant("kuberde", "smith-dev", "alice", T0 + timedelta(seconds=5))
    smith = Claimant("kuberde", "dev", "alice-smith", T0)
    assert choose_holder([alice, smith], []) == smith, "older"
    assert choose_holder([alice, smith], [None, ("alice", "smith-dev")]) == alice, "owns the PVC"
    assert choose_holder([alice, smith], [("alice-smith", "dev"), ("alice", "smith-dev")]) == smith
    same_second = Claimant("kuberde", "smith-dev", "alice", T0)
    assert choose_holder([same_second, smith], []) == smith, "then by name"
    unknown_age = Claimant("kuberde", "a", "alice-smith")
    assert choose_holder([unknown_age, alice], []) == alice
    with pytest.raises(ValueError, match="at least one"):
        choose_holder([], [])


def test_claimant_and_record_from_objects() -> None:
    body = {
        "metadata": {
            "name": "dev",
            "namespace": "kuberde",
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"owner": "alice-smith"},
    }
    assert claimant_of(body) == Claimant("kuberde", "dev", "alice-smith", T0)
    assert claimant_of({}) == Claimant("", "", "", None)
    labels = {"kuberde.io/owner": "alice", "kuberde.io/rdeagent": "smith-dev"}
    assert recorded_owner({"metadata": {"labels": labels}}) == ("alice", "smith-dev")
    assert recorded_owner(None) is None
    assert recorded_owner({"metadata": {"labels": {"kuberde.io/owner": "alice"}}}) is None
    assert recorded_owner({"metadata": {"labels": {**labels, "kuberde.io/owner": ""}}}) is None


def test_the_gateway_lets_nobody_use_an_id_the_operator_has_not_settled() -> None:
    from kuberde.gateway.directory import AgentRecord
    from kuberde.gateway.kubernetes import holder_of

    alice = AgentRecord("user-alice-smith-dev", "alice", "smith-dev")
    smith = AgentRecord("user-alice-smith-dev", "alice-smith", "dev")
    lost = AgentRecord("user-alice-smith-dev", "alice-smith", "dev", error="agent ID taken")
    assert holder_of([alice]) == alice
    assert holder_of([lost, alice]) == holder_of([alice, lost]) == alice
    contested = holder_of([alice, smith])
    assert contested == holder_of([smith, alice])
    assert contested.error is not None and "waiting for the operator" in contested.error
    both_lost = AgentRecord("user-alice-smith-dev", "alice", "smith-dev", error="foreign volume")
    assert holder_of([both_lost, lost]).error is not None


@given(
    st.builds(
        Claimant,
        namespace=st.just("kuberde"),
        name=st.from_regex(r"[a-z][a-z0-9-]{2,20}", fullmatch=True),
        owner=st.from_regex(r"[a-z][a-z0-9-]{2,20}", fullmatch=True),
    )
)
def test_a_taken_id_names_its_holder_only_to_the_admin(holder: Claimant) -> None:
    """Issue 11: the status (`shown`) names no other owner or RDEAgent; log and Event do."""
    refusal = id_taken("user-bob-dev", holder)
    assert f"{holder.name!r}" in refusal.detail and f"{holder.owner!r}" in refusal.detail
    assert "'" not in refusal.shown
    assert refusal.shown == (
        "agent ID user-bob-dev is already taken by another workspace; choose another name"
    )
