"""The refresh token store: a rotation is on disk once `persist` returns, the fsync runs in
a thread while the event loop goes on, and a change made during a write is never lost."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from kuberde.auth.issuer import refresh
from kuberde.auth.issuer.protocol import Identity, OAuthError
from kuberde.auth.issuer.refresh import RefreshTokens
from kuberde.files import write_private

pytestmark = pytest.mark.timeout(10)

ALICE = Identity("alice", admin=False, by_password=True, credential="c1")
TTL = 3600.0
TIMEOUT = 5.0


def _clock() -> float:
    return 1000.0


async def test_a_rotation_is_on_disk_once_persist_returns(tmp_path: Path) -> None:
    path = tmp_path / "refresh.json"
    store = RefreshTokens(path, _clock)
    first = store.issue(ALICE, "cli", "openid", TTL, None)
    await store.persist()
    identity, _, family = store.spend(first, "cli")
    second = store.issue(identity, "cli", "openid", TTL, family)
    await store.persist()

    assert RefreshTokens(path, _clock).spend(second, "cli")[0] == ALICE
    with pytest.raises(OAuthError, match="already used"):
        RefreshTokens(path, _clock).spend(first, "cli")


async def test_the_write_runs_off_the_loop_and_a_change_made_meanwhile_follows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "refresh.json"
    loop_thread = threading.get_ident()
    writers: list[int] = []
    entered = threading.Event()
    release = threading.Event()

    def blocking_write(target: Path, content: str) -> bool:
        writers.append(threading.get_ident())
        entered.set()
        assert release.wait(TIMEOUT), "the test never released the write"
        return write_private(target, content)

    monkeypatch.setattr(refresh, "write_private", blocking_write)
    store = RefreshTokens(path, _clock)
    first = store.issue(ALICE, "cli", "openid", TTL, None)
    writing = asyncio.create_task(store.persist())
    assert await asyncio.to_thread(entered.wait, TIMEOUT)

    # The loop is free while the first write is stuck in its thread.
    second = store.issue(ALICE, "cli", "openid", TTL, None)
    following = asyncio.create_task(store.persist())
    for _ in range(10):
        await asyncio.sleep(0)
    assert not writing.done() and not following.done()
    release.set()
    await asyncio.wait_for(asyncio.gather(writing, following), TIMEOUT)

    assert len(writers) == 2 and loop_thread not in writers
    reloaded = RefreshTokens(path, _clock)
    assert reloaded.family_of(first) is not None and reloaded.family_of(second) is not None


async def test_persist_without_changes_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[Path] = []

    def counting_write(target: Path, content: str) -> bool:
        writes.append(target)
        return write_private(target, content)

    monkeypatch.setattr(refresh, "write_private", counting_write)
    store = RefreshTokens(tmp_path / "refresh.json", _clock)
    await store.persist()
    store.issue(ALICE, "cli", "openid", TTL, None)
    await store.persist()
    await store.persist()
    assert len(writes) == 1
