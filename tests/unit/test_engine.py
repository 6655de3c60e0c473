"""The engine's scheduling: serialised per workspace, concurrent across workspaces, no lost
kicks. The reconcile function is a recorder whose "slow stop" is an event the test holds."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from kuberde.aio import Kick
from kuberde.engine import Engine

pytestmark = pytest.mark.timeout(10)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.active: set[str] = set()
        self.overlaps: list[str] = []
        self.hold: dict[str, asyncio.Event] = {}
        self.entered: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def block(self, name: str) -> asyncio.Event:
        self.hold[name] = asyncio.Event()
        return self.hold[name]

    async def reconcile(self, name: str) -> None:
        if name in self.active:
            self.overlaps.append(name)
        self.active.add(name)
        self.calls.append(name)
        try:
            self.entered[name].set()
            if name in self.hold:
                await self.hold[name].wait()
        finally:
            self.active.discard(name)


def _engine(recorder: Recorder, names: list[str] | None = None) -> Engine:
    return Engine(recorder.reconcile, lambda: names or [], interval=3600)


async def test_a_slow_workspace_holds_up_nobody_else() -> None:
    recorder = Recorder()
    engine = _engine(recorder)
    release = recorder.block("a")
    engine.kick("a")
    await recorder.entered["a"].wait()
    engine.kick("b")
    await recorder.entered["b"].wait()
    assert "a" in recorder.active
    release.set()
    await engine.idle()
    assert recorder.calls == ["a", "b"]


async def test_a_kick_during_a_reconcile_runs_one_more_and_never_two_at_once() -> None:
    recorder = Recorder()
    engine = _engine(recorder)
    release = recorder.block("a")
    engine.kick("a")
    await recorder.entered["a"].wait()
    engine.kick("a")
    engine.kick("a")
    release.set()
    await engine.idle()
    assert recorder.calls == ["a", "a"]
    assert recorder.overlaps == []


async def test_a_command_holding_the_workspace_excludes_its_reconcile() -> None:
    recorder = Recorder()
    engine = _engine(recorder)
    async with engine.exclusive("a"):
        engine.kick("a")
        engine.kick("b")
        await recorder.entered["b"].wait()
        assert recorder.calls == ["b"]
    await engine.idle()
    assert recorder.calls == ["b", "a"]


async def test_a_failing_reconcile_is_logged_and_the_next_kick_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    async def failing(name: str) -> None:
        calls.append(name)
        raise RuntimeError("boom")

    engine = Engine(failing, lambda: [], interval=3600)
    engine.kick("a")
    await engine.idle()
    engine.kick("a")
    await engine.idle()
    assert calls == ["a", "a"]
    assert "reconciling a failed" in caplog.text


async def test_the_sweep_reconciles_every_workspace_and_kick_all_runs_it_now() -> None:
    recorder = Recorder()
    names = ["a", "b"]
    engine = _engine(recorder, names)
    task = asyncio.create_task(engine.run())
    try:
        await recorder.entered["a"].wait()
        await recorder.entered["b"].wait()
        names.append("c")
        engine.kick_all()
        await recorder.entered["c"].wait()
    finally:
        await engine.close()
        await task


async def test_after_close_kicks_are_ignored() -> None:
    recorder = Recorder()
    engine = _engine(recorder)
    await engine.close()
    engine.kick("a")
    await engine.idle()
    assert recorder.calls == []


async def test_a_kick_is_kept_until_the_loop_waits() -> None:
    kick = Kick()
    kick.set()  # while the loop works
    assert await kick.wait(3600) is True
    assert not kick.is_set()
    assert await kick.wait(0) is False


async def test_a_workspace_lock_is_forgotten_once_nobody_holds_or_waits_for_it() -> None:
    recorder = Recorder()
    engine = _engine(recorder)
    for n in range(50):
        engine.kick(f"w{n}")
    await engine.idle()
    assert len(engine._locks) == 0
    async with engine.exclusive("a"):
        engine.kick("a")
        assert len(engine._locks) == 1
    await engine.idle()
    assert recorder.calls[-1] == "a"
    assert len(engine._locks) == 0


async def test_a_command_arriving_as_the_lock_is_handed_on_still_waits_its_turn() -> None:
    recorder = Recorder()
    engine = _engine(recorder)
    release = recorder.block("a")
    inside: list[str] = []
    async with engine.exclusive("a"):
        engine.kick("a")
        for _ in range(10):
            await asyncio.sleep(0)  # the reconcile is now waiting for the lock

    async def command() -> None:
        async with engine.exclusive("a"):
            inside.append("command")
            assert "a" not in recorder.active, "a command beside a reconcile"

    late = asyncio.create_task(command())
    await recorder.entered["a"].wait()
    for _ in range(10):
        await asyncio.sleep(0)
    assert inside == []
    release.set()
    await asyncio.wait_for(late, 5)
    await engine.idle()
    assert inside == ["command"]
    assert len(engine._locks) == 0


class Flaky:
    """A reconcile that fails until told otherwise; records the failure counts it was
    retried after."""

    def __init__(self) -> None:
        self.failing = True
        self.calls = 0
        self.retried_after: list[int] = []
        self.called = asyncio.Event()

    async def reconcile(self, name: str) -> None:
        self.calls += 1
        self.called.set()
        if self.failing:
            raise RuntimeError(f"{name}: the API is down")

    def delay(self, failures: int) -> float:
        self.retried_after.append(failures)
        return 0.0

    async def calls_reach(self, count: int) -> None:
        async with asyncio.timeout(5):
            while self.calls < count:
                self.called.clear()
                await self.called.wait()


async def test_a_failed_reconcile_is_retried_with_growing_backoff_until_it_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky = Flaky()
    engine = Engine(flaky.reconcile, lambda: [], interval=3600, retry_delay=flaky.delay)
    engine.kick("a")
    await flaky.calls_reach(3)
    flaky.failing = False
    await flaky.calls_reach(4)  # the retry after the third failure succeeds
    await engine.idle()
    calls = flaky.calls
    assert flaky.retried_after == list(range(1, calls))
    assert engine.failures("a") == 0
    assert not engine.remembers("a")
    assert "reconciling a failed (1 in a row" in caplog.text
    assert "the API is down" in caplog.text

    flaky.failing = True  # a later failure starts the backoff over
    engine.kick("a")
    await flaky.calls_reach(calls + 1)
    flaky.failing = False
    await flaky.calls_reach(calls + 2)
    await engine.idle()
    assert flaky.retried_after[-1] == 1
    await engine.close()


async def test_a_kick_replaces_a_waiting_retry_and_success_forgets_the_failures() -> None:
    flaky = Flaky()
    engine = Engine(flaky.reconcile, lambda: [], interval=3600, retry_delay=lambda _: 3600.0)
    engine.kick("a")
    await engine.idle()
    assert engine.failures("a") == 1
    assert engine.remembers("a"), "a retry is waiting"
    flaky.failing = False
    engine.kick("a")  # e.g. a watch event: no waiting for the backoff
    await engine.idle()
    assert flaky.calls == 2
    assert engine.failures("a") == 0
    assert not engine.remembers("a")
    await engine.close()


async def test_a_workspace_deleted_while_failing_is_forgotten() -> None:
    """Its reconcile finds it gone and has nothing to do: no failure count, no retry, no lock."""
    deleted: set[str] = set()

    async def reconcile(name: str) -> None:
        if name not in deleted:
            raise RuntimeError("cannot write its Deployment")

    engine = Engine(reconcile, lambda: [], interval=3600, retry_delay=lambda _: 3600.0)
    for name in ("a", "b"):
        engine.kick(name)
    await engine.idle()
    assert engine.failures("a") == engine.failures("b") == 1
    deleted.add("a")
    engine.kick("a")  # the delete event
    await engine.idle()
    assert not engine.remembers("a")
    assert engine.remembers("b")
    await engine.close()
    assert len(engine._locks) == 0


async def test_close_drops_waiting_retries() -> None:
    flaky = Flaky()
    engine = Engine(flaky.reconcile, lambda: [], interval=3600, retry_delay=lambda _: 0.0)
    engine.kick("a")
    await flaky.calls_reach(1)
    await engine.close()
    calls = flaky.calls
    for _ in range(10):
        await asyncio.sleep(0)  # a retry timer that survived would fire here
    assert flaky.calls == calls
    assert not engine.remembers("a")


async def test_concurrency_bounds_the_reconciles_running_at_once() -> None:
    recorder = Recorder()
    engine = Engine(recorder.reconcile, lambda: [], interval=3600, concurrency=2)
    releases = {name: recorder.block(name) for name in ("a", "b", "c")}
    for name in ("a", "b", "c"):
        engine.kick(name)
    await recorder.entered["a"].wait()
    await recorder.entered["b"].wait()
    for _ in range(10):
        await asyncio.sleep(0)  # "c" had every chance to start
    assert recorder.active == {"a", "b"}
    releases["a"].set()
    await recorder.entered["c"].wait()
    assert recorder.active == {"b", "c"}
    releases["b"].set()
    releases["c"].set()
    await engine.idle()
    assert recorder.overlaps == []


def test_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        Engine(Recorder().reconcile, lambda: [], interval=1, concurrency=0)


async def test_close_with_cancel_stops_a_running_reconcile() -> None:
    recorder = Recorder()
    engine = _engine(recorder)
    recorder.block("a")  # never released
    engine.kick("a")
    await recorder.entered["a"].wait()
    await asyncio.wait_for(engine.close(cancel=True), 5)
    assert recorder.active == set()
    assert not engine.remembers("a")
