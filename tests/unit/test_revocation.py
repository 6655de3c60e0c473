"""HeldConnections: a change closes exactly the held connections whose check gives a
reason, each once and with that reason, however often the change is announced; the
others stay held until their block ends."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kuberde.gateway.revocation import Check, Close, HeldConnections

pytestmark = pytest.mark.unit


def _check(index: int, lost: bool) -> Check:
    return lambda: f"gone {index}" if lost else None


def _close(index: int, closed: list[tuple[int, str]]) -> Close:
    async def close(reason: str) -> None:
        closed.append((index, reason))

    return close


@given(st.lists(st.booleans(), max_size=20), st.integers(min_value=1, max_value=5))
def test_a_change_closes_the_connections_that_lost_their_standing(
    lost: list[bool], changes: int
) -> None:
    async def scenario() -> None:
        held = HeldConnections()
        closed: list[tuple[int, str]] = []
        with contextlib.ExitStack() as stack:
            for index, gone in enumerate(lost):
                stack.enter_context(held.hold(_check(index, gone), _close(index, closed)))
            for _ in range(changes):
                held.changed()
            for _ in range(3):  # the check, then the closing tasks
                await asyncio.sleep(0)
            assert sorted(closed) == [(i, f"gone {i}") for i, gone in enumerate(lost) if gone]
            assert len(held) == lost.count(False)
        assert len(held) == 0

    asyncio.run(scenario())
