"""LoopLag: a loop kept busy past a timer's due time is reported that late; stop ends it."""

from __future__ import annotations

import asyncio

from kuberde.aio import LoopLag

TIMEOUT = 10.0
BLOCK = 0.05


async def test_a_blocked_loop_is_reported_at_least_as_late_as_it_was_blocked() -> None:
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    reported = asyncio.Event()

    def report(lag: float) -> None:
        lags.append(lag)
        reported.set()

    lag = LoopLag(report, interval=0.01)
    lag.start()
    try:
        due = loop.time() + 0.01
        while loop.time() < due + BLOCK:
            pass  # a busy callback: the loop runs nothing else meanwhile, the timer is late
        async with asyncio.timeout(TIMEOUT):
            await reported.wait()
    finally:
        lag.stop()
    assert lags[0] >= BLOCK
    assert all(value >= 0 for value in lags)


async def test_stop_cancels_the_timer() -> None:
    lags: list[float] = []
    lag = LoopLag(lags.append, interval=0.001)
    lag.start()
    lag.stop()
    lag.stop()  # twice is harmless (shutdown after a failed start)
    await asyncio.sleep(0.02)
    assert lags == []
