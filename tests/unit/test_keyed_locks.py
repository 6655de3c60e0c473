"""KeyedLocks: one holder per key at a time, and nothing kept for keys nobody uses."""

from __future__ import annotations

import asyncio

from kuberde.aio import KeyedLocks

TIMEOUT = 10.0


async def test_holders_of_one_key_take_turns_and_the_lock_is_then_forgotten() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    order: list[str] = []
    release = asyncio.Event()
    two_inside = asyncio.Event()

    async def hold(key: str, name: str) -> None:
        async with locks.hold(key):
            assert key not in inside, "two holders of one key at once"
            inside.append(key)
            order.append(name)
            if len(order) == 2:
                two_inside.set()
            await release.wait()
            inside.remove(key)

    tasks = [asyncio.create_task(hold("a", f"a{n}")) for n in range(3)]
    tasks.append(asyncio.create_task(hold("b", "b0")))
    await asyncio.wait_for(two_inside.wait(), TIMEOUT)
    for _ in range(10):
        await asyncio.sleep(0)  # give a wrongly admitted third holder its chance
    assert sorted(order) == ["a0", "b0"]
    assert len(locks) == 2
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert order.count("a1") == order.count("a2") == 1
    assert len(locks) == 0


async def test_a_cancelled_waiter_does_not_leak_its_key() -> None:
    locks = KeyedLocks()
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks.hold("a"):
            held.set()
            await release.wait()

    first = asyncio.create_task(holder())
    await asyncio.wait_for(held.wait(), TIMEOUT)
    waiter = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    release.set()
    await asyncio.wait_for(first, TIMEOUT)
    assert len(locks) == 0
