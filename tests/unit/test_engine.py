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
