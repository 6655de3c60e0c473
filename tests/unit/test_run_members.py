"""`descendants_of`: which processes belong to a run, from the parent links /proc gives."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kuberde.local.supervisor import ProcessKey, descendants_of


def test_a_session_below_a_marked_process_is_found_through_every_level() -> None:
    # sshd listener 10 -> [priv] 11 -> user 12 -> sleep 13; 20 is someone else's.
    parents = {(10, 1): 1, (11, 5): 10, (12, 6): 11, (13, 7): 12, (20, 8): 1}
    assert descendants_of({(10, 1)}, parents) == {(10, 1), (11, 5), (12, 6), (13, 7)}


def test_no_roots_means_nothing() -> None:
    assert descendants_of(set(), {(10, 1): 1}) == set()


@given(
    st.dictionaries(
        st.tuples(st.integers(2, 30), st.integers(0, 3)), st.integers(1, 30), max_size=40
    ),
    st.data(),
)
def test_result_is_the_roots_closed_under_children(
    parents: dict[ProcessKey, int], data: st.DataObject
) -> None:
    roots = data.draw(st.sets(st.sampled_from(sorted(parents)))) if parents else set()
    found = descendants_of(roots, parents)
    assert roots <= found
    # Closed: every child of a found process is found.
    assert all(key in found for key, parent in parents.items() if parent in {p for p, _ in found})
    # Minimal: every found process other than a root has a found parent.
    assert all(key in roots or parents[key] in {p for p, _ in found} for key in found)
