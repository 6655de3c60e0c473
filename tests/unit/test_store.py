from __future__ import annotations

import dataclasses
import sqlite3
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from kuberde.local import store as store_module
from kuberde.local.store import (
    LIFECYCLE_FIELDS,
    SCHEMA_VERSION,
    StateStore,
    StateStoreError,
    WorkspaceState,
)
from kuberde.policy import Phase

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
DOC = {
    "apiVersion": "kuberde.io/v1",
    "kind": "RDEAgent",
    "metadata": {"name": "dev"},
    "spec": {"owner": "alice", "ttl": "5m", "workload": {"command": ["sleep", "100"]}},
}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[StateStore]:
    with StateStore(db_path) as opened:
        yield opened


def add(store: StateStore, name: str = "dev", now: datetime = T0) -> WorkspaceState:
    return store.upsert_spec(name, "alice", f"user-alice-{name}", DOC, now)


def test_insert_sets_defaults_and_round_trips(store: StateStore) -> None:
    state = add(store)
    assert state == WorkspaceState(
        name="dev",
        owner="alice",
        agent_id="user-alice-dev",
        document=DOC,
        created_at=T0,
        scaled_down=False,
        scaled_down_at=None,
        woken_at=None,
        wake_requested_at=None,
        last_activity=None,
        last_activity_source=None,
        phase=Phase.PENDING,
        message="",
        pid=None,
        started_at=None,
        restarts=0,
    )
    assert store.get("dev") == state
    assert store.get("other") is None


def test_update_every_lifecycle_field_round_trips(store: StateStore) -> None:
    add(store)
    changes: dict[str, object] = {
        "scaled_down": True,
        "scaled_down_at": T0 + timedelta(seconds=1),
        "woken_at": T0 + timedelta(seconds=2),
        "wake_requested_at": T0 + timedelta(seconds=3),
        "last_activity": T0 + timedelta(seconds=4),
        "last_activity_source": "stream closed",
        "phase": Phase.SCALED_DOWN,
        "message": "scaled down; connecting wakes it",
        "pid": 4242,
        "started_at": T0 + timedelta(seconds=5),
        "restarts": 3,
        "extended_until": T0 + timedelta(hours=2),
    }
    assert set(changes) == LIFECYCLE_FIELDS
    updated = store.update("dev", **changes)
    assert {field: getattr(updated, field) for field in changes} == changes
    assert store.get("dev") == updated
    cleared = store.update("dev", pid=None, scaled_down=False, scaled_down_at=None)
    assert (cleared.pid, cleared.scaled_down, cleared.scaled_down_at) == (None, False, None)
    assert cleared.woken_at == T0 + timedelta(seconds=2)


def test_datetimes_come_back_aware_in_utc(store: StateStore) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2026, 3, 1, 14, 0, 0, 1, tzinfo=plus_two)
    add(store, now=local)
    state = store.update("dev", last_activity=local)
    for value in (state.created_at, state.last_activity):
        assert value is not None
        assert value.utcoffset() == timedelta(0)
        assert value == local
    raw = sqlite3.connect(store.path).execute("SELECT created_at FROM workspaces").fetchone()[0]
    assert raw == "2026-03-01T12:00:00.000001+00:00"


def test_naive_datetimes_are_refused(store: StateStore) -> None:
    naive = datetime(2026, 3, 1, 12, 0, 0)
    with pytest.raises(ValueError, match="naive"):
        add(store, now=naive)
    assert store.list() == []
    add(store)
    with pytest.raises(ValueError, match="naive"):
        store.update("dev", pid=7, woken_at=naive)
    assert store.get("dev") == add(store)  # nothing of the failed update was written


def test_phase_accepts_its_string_value(store: StateStore) -> None:
    add(store)
    assert store.update("dev", phase="Running").phase is Phase.RUNNING
    with pytest.raises(ValueError):
        store.update("dev", phase="Sleeping")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"colour": "blue"}, "unknown field.*colour"),
        ({"owner": "bob"}, "unknown field.*owner"),
        ({"document": {}}, "unknown field.*document"),
        ({"created_at": T0}, "unknown field.*created_at"),
        ({"pid": "12"}, "pid must be int or None"),
        ({"pid": True}, "pid must be int or None"),
        ({"restarts": None}, "restarts must be int"),
        ({"scaled_down": 1}, "scaled_down must be bool"),
        ({"message": None}, "message must be str"),
        ({"woken_at": "2026-03-01T12:00:00Z"}, "woken_at must be a datetime"),
        ({"phase": 3}, "phase must be a Phase"),
    ],
)
def test_update_refuses_bad_fields_and_types(
    store: StateStore, changes: dict[str, object], message: str
) -> None:
    before = add(store)
    with pytest.raises(TypeError, match=message):
        store.update("dev", **changes)
    assert store.get("dev") == before


def test_update_refuses_negative_restarts(store: StateStore) -> None:
    add(store)
    with pytest.raises(ValueError, match="negative"):
        store.update("dev", restarts=-1)


def test_update_of_missing_workspace_raises_key_error(store: StateStore) -> None:
    with pytest.raises(KeyError, match="ghost"):
        store.update("ghost", pid=1)
    with pytest.raises(KeyError):
        store.update("ghost")


def test_upsert_keeps_lifecycle_state_and_creation_time(store: StateStore) -> None:
    add(store)
    lifecycle = store.update(
        "dev", scaled_down=True, scaled_down_at=T0, last_activity=T0, restarts=2, pid=9
    )
    new_doc = {**DOC, "spec": {**DOC["spec"], "ttl": "1h"}}  # type: ignore[dict-item]
    later = T0 + timedelta(hours=1)
    updated = store.upsert_spec("dev", "alice", "user-alice-dev", new_doc, later)
    assert updated.document == new_doc
    assert updated.created_at == T0
    assert dataclasses.replace(updated, document=DOC) == lifecycle


def test_upsert_refuses_a_document_that_is_not_json(store: StateStore) -> None:
    with pytest.raises(TypeError):
        store.upsert_spec("dev", "alice", "user-alice-dev", {"when": T0}, T0)
    assert store.get("dev") is None


def test_list_is_ordered_and_delete_reports_existence(store: StateStore) -> None:
    for name in ("web", "api", "dev"):
        add(store, name)
    assert [state.name for state in store.list()] == ["api", "dev", "web"]
    assert store.delete("dev") is True
    assert store.delete("dev") is False
    assert [state.name for state in store.list()] == ["api", "web"]


def test_state_survives_reopening(db_path: Path) -> None:
    with StateStore(db_path) as first:
        add(first)
        expected = first.update("dev", scaled_down=True, scaled_down_at=T0, phase=Phase.SCALED_DOWN)
    with StateStore(db_path) as second:
        assert second.list() == [expected]


def test_file_is_private_and_in_wal_mode(store: StateStore, db_path: Path) -> None:
    add(store)
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    wal = db_path.with_name(db_path.name + "-wal")
    assert wal.exists()
    assert stat.S_IMODE(wal.stat().st_mode) == 0o600
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
    with sqlite3.connect(db_path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_loose_mode_of_an_existing_file_is_tightened(db_path: Path) -> None:
    db_path.parent.mkdir()
    db_path.touch(mode=0o644)
    db_path.chmod(0o644)
    with StateStore(db_path) as store:
        add(store)
        wal = db_path.with_name(db_path.name + "-wal")
        assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600


def test_empty_file_is_migrated_to_current_schema(db_path: Path) -> None:
    db_path.parent.mkdir()
    db_path.write_bytes(b"")
    with StateStore(db_path) as store:
        add(store)
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        columns = [row[1] for row in raw.execute("PRAGMA table_info(workspaces)")]
    assert set(LIFECYCLE_FIELDS) < set(columns)


def test_corrupt_file_is_reported_and_kept(db_path: Path) -> None:
    db_path.parent.mkdir()
    garbage = b"this is not an sqlite database\n" * 200
    db_path.write_bytes(garbage)
    with pytest.raises(StateStoreError, match="corrupt") as caught:
        StateStore(db_path)
    assert str(db_path) in str(caught.value)
    assert db_path.read_bytes() == garbage


def test_foreign_database_is_refused_untouched(db_path: Path) -> None:
    db_path.parent.mkdir()
    with sqlite3.connect(db_path) as foreign:
        foreign.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    before = db_path.read_bytes()
    with pytest.raises(StateStoreError, match="did not create") as caught:
        StateStore(db_path)
    assert str(db_path) in str(caught.value)
    assert db_path.read_bytes() == before
    with sqlite3.connect(db_path) as foreign:
        assert foreign.execute("PRAGMA user_version").fetchone()[0] == 0


def test_database_from_a_newer_version_is_refused(db_path: Path) -> None:
    StateStore(db_path).close()
    with sqlite3.connect(db_path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateStoreError, match="newer") as caught:
        StateStore(db_path)
    assert str(db_path) in str(caught.value)


def test_damaged_pages_are_reported_at_open(db_path: Path) -> None:
    with StateStore(db_path) as store:
        for index in range(200):
            add(store, f"ws-{index}")
    data = bytearray(db_path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    assert len(data) > 3 * page_size
    data[2 * page_size : 3 * page_size] = b"\xa5" * page_size  # a table page, not the header
    db_path.write_bytes(bytes(data))
    with pytest.raises(StateStoreError, match="corrupt") as caught:
        StateStore(db_path)
    assert str(db_path) in str(caught.value)


def test_unusable_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(StateStoreError, match="cannot create state database"):
        StateStore(blocker / "state.db")


def test_a_version_1_database_gains_extended_until(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as raw:
        raw.execute(store_module._MIGRATIONS[0])
        raw.execute(f"PRAGMA application_id = {store_module._APPLICATION_ID}")
        raw.execute("PRAGMA user_version = 1")
        raw.execute(
            "INSERT INTO workspaces (name, owner, agent_id, spec, created_at) "
            "VALUES ('dev', 'alice', 'user-alice-dev', '{}', ?)",
            (T0.isoformat(),),
        )
    raw.close()
    with StateStore(path) as migrated:
        state = migrated.get("dev")
        assert state is not None and state.extended_until is None
        assert migrated.update("dev", extended_until=T0).extended_until == T0
