"""Workspace state of the embedded runtime, kept in SQLite so it survives `kuberde up` restarts.

A workspace that was scaled down must stay down across a restart, and its idle clock must be
kept, so everything the lifecycle policy reads (scaled-down marker, wake request, last
activity) lives here rather than in memory. SQLite in WAL mode gives atomic writes without a
server; the file is created 0600 because the spec documents may carry environment secrets.

Datetimes are stored as ISO-8601 UTC text and returned timezone-aware; naive datetimes are
refused, as in `kuberde.policy`. The API is synchronous; the local runtime calls it from one
worker thread of its own, so a slow disk or a lock wait never stalls the event loop.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from kuberde.files import create_private
from kuberde.policy import Phase
from kuberde.sqlitefiles import prepare_private, transaction

__all__ = [
    "LIFECYCLE_FIELDS",
    "SCHEMA_VERSION",
    "STATE_DB_NAME",
    "StateStore",
    "StateStoreError",
    "WorkspaceState",
]

STATE_DB_NAME = "state.db"
SCHEMA_VERSION = 2
# "KRDE": marks the file as ours, so a foreign SQLite database is refused rather than altered.
_APPLICATION_ID = 0x4B524445

_MIGRATIONS: tuple[str, ...] = (
    # v0 -> v1
    """
    CREATE TABLE workspaces (
        name TEXT PRIMARY KEY NOT NULL,
        owner TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        spec TEXT NOT NULL,
        created_at TEXT NOT NULL,
        scaled_down INTEGER NOT NULL DEFAULT 0,
        scaled_down_at TEXT,
        woken_at TEXT,
        wake_requested_at TEXT,
        last_activity TEXT,
        last_activity_source TEXT,
        phase TEXT NOT NULL DEFAULT 'Pending',
        message TEXT NOT NULL DEFAULT '',
        pid INTEGER,
        started_at TEXT,
        restarts INTEGER NOT NULL DEFAULT 0
    )
    """,
    # v1 -> v2: `kuberde extend NAME DURATION` keeps a workspace up until a chosen time.
    "ALTER TABLE workspaces ADD COLUMN extended_until TEXT",
)


class StateStoreError(Exception):
    """The state database cannot be used; the message names the file and what to do."""


@dataclass(frozen=True, slots=True)
class WorkspaceState:
    """One workspace row: its spec (`document`, the RDEAgent as a dict) and lifecycle state."""

    name: str
    owner: str
    agent_id: str
    document: dict[str, Any]
    created_at: datetime
    scaled_down: bool
    scaled_down_at: datetime | None
    woken_at: datetime | None
    wake_requested_at: datetime | None
    last_activity: datetime | None
    last_activity_source: str | None
    phase: Phase
    message: str
    pid: int | None
    started_at: datetime | None
    restarts: int
    extended_until: datetime | None = None


def _to_text(value: datetime) -> str:
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(f"datetime must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC).isoformat()


def _from_text(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _optional_time(field: str) -> Callable[[object], object]:
    def convert(value: object) -> object:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"{field} must be a datetime or None, got {type(value).__name__}")
        return _to_text(value)

    return convert


def _typed(field: str, kind: type, *, optional: bool) -> Callable[[object], object]:
    def convert(value: object) -> object:
        if value is None and optional:
            return None
        # bool is an int subclass; a True pid or restart count is always a caller bug.
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            allowed = f"{kind.__name__} or None" if optional else kind.__name__
            raise TypeError(f"{field} must be {allowed}, got {type(value).__name__}")
        return (1 if value else 0) if kind is bool else value

    return convert


def _phase(value: object) -> object:
    if not isinstance(value, str):
        raise TypeError(f"phase must be a Phase, got {type(value).__name__}")
    return Phase(value).value


def _restarts(value: object) -> object:
    converted = _typed("restarts", int, optional=False)(value)
    if isinstance(converted, int) and converted < 0:
        raise ValueError(f"restarts must not be negative, got {converted}")
    return converted


# The lifecycle fields `update` accepts, each with its check and conversion to a column value.
_CONVERTERS: dict[str, Callable[[object], object]] = {
    "scaled_down": _typed("scaled_down", bool, optional=False),
    "scaled_down_at": _optional_time("scaled_down_at"),
    "woken_at": _optional_time("woken_at"),
    "wake_requested_at": _optional_time("wake_requested_at"),
    "last_activity": _optional_time("last_activity"),
    "last_activity_source": _typed("last_activity_source", str, optional=True),
    "phase": _phase,
    "message": _typed("message", str, optional=False),
    "pid": _typed("pid", int, optional=True),
    "started_at": _optional_time("started_at"),
    "restarts": _restarts,
    "extended_until": _optional_time("extended_until"),
}
LIFECYCLE_FIELDS = frozenset(_CONVERTERS)


def _row_to_state(row: sqlite3.Row) -> WorkspaceState:
    created_at = _from_text(row["created_at"])
    assert created_at is not None  # NOT NULL column
    return WorkspaceState(
        name=row["name"],
        owner=row["owner"],
        agent_id=row["agent_id"],
        document=json.loads(row["spec"]),
        created_at=created_at,
        scaled_down=bool(row["scaled_down"]),
        scaled_down_at=_from_text(row["scaled_down_at"]),
        woken_at=_from_text(row["woken_at"]),
        wake_requested_at=_from_text(row["wake_requested_at"]),
        last_activity=_from_text(row["last_activity"]),
        last_activity_source=row["last_activity_source"],
        phase=Phase(row["phase"]),
        message=row["message"],
        pid=row["pid"],
        started_at=_from_text(row["started_at"]),
        restarts=row["restarts"],
        extended_until=_from_text(row["extended_until"]),
    )


class StateStore:
    """The workspaces table in one SQLite file (normally `<state dir>/state.db`).

    Opening migrates an empty or older database to `SCHEMA_VERSION`. Every write runs in its
    own transaction. Not thread-safe: use it from one thread at a time (any one thread).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            create_private(path)
        except OSError as exc:
            raise StateStoreError(f"cannot create state database {path}: {exc}") from exc
        try:
            self._conn = sqlite3.connect(
                path, isolation_level=None, timeout=5.0, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StateStoreError(f"cannot open state database {path}: {exc}") from exc
        self._conn.row_factory = sqlite3.Row
        try:
            self._prepare()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            if getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED"):
                raise StateStoreError(
                    f"state database {path} is locked by another process; is another "
                    "`kuberde up` using this state directory?"
                ) from exc
            raise StateStoreError(
                f"state database {path} is unreadable ({exc}); it may be corrupt or not a "
                "KubeRDE state file. Move it aside to start with empty state."
            ) from exc
        except StateStoreError:
            self._conn.close()
            raise

    def _prepare(self) -> None:
        # Identify the file before anything writes to it: switching to WAL rewrites the header.
        self._schema_version()
        mode = prepare_private(self._conn, self.path)
        if mode != "wal":
            raise StateStoreError(f"state database {self.path}: cannot enable WAL mode ({mode})")
        # Cheap at our size, and it turns a damaged file into one clear error at startup
        # instead of failures in the middle of a lifecycle step.
        problems = [row[0] for row in self._conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise StateStoreError(
                f"state database {self.path} is corrupt ({'; '.join(problems)}). "
                "Move it aside to start with empty state."
            )
        with self._transaction():
            self._migrate()

    def _schema_version(self) -> int:
        """Our schema version in this file (0 for a new, empty one); refuse anyone else's."""
        conn = self._conn
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        app_id: int = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id == 0 and version == 0:
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise StateStoreError(
                    f"{self.path} is an SQLite database that KubeRDE did not create; "
                    "refusing to change it. Use another --state-dir or move the file aside."
                )
        elif app_id != _APPLICATION_ID:
            raise StateStoreError(
                f"{self.path} is an SQLite database that KubeRDE did not create "
                f"(application_id {app_id:#x}); refusing to change it."
            )
        if version > SCHEMA_VERSION:
            raise StateStoreError(
                f"state database {self.path} has schema version {version}, newer than this "
                f"kuberde understands ({SCHEMA_VERSION}); upgrade kuberde."
            )
        return version

    def _migrate(self) -> None:
        """Bring the schema to `SCHEMA_VERSION`, one step per version, in the open transaction."""
        version = self._schema_version()
        for step in range(version, SCHEMA_VERSION):
            self._conn.execute(_MIGRATIONS[step])
        if version != SCHEMA_VERSION:
            self._conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return transaction(self._conn)

    def _fetch(self, conn: sqlite3.Connection, name: str) -> WorkspaceState | None:
        row = conn.execute("SELECT * FROM workspaces WHERE name = ?", (name,)).fetchone()
        return None if row is None else _row_to_state(row)

    def upsert_spec(
        self, name: str, owner: str, agent_id: str, document: dict[str, Any], now: datetime
    ) -> WorkspaceState:
        """Insert a workspace, or replace its spec while keeping its lifecycle state.

        `now` becomes `created_at` on insert only, so re-applying a file does not restart the
        idle clock. Raises TypeError if `document` is not JSON-serialisable.
        """
        spec = json.dumps(document, sort_keys=True, separators=(",", ":"))
        created_at = _to_text(now)
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO workspaces (name, owner, agent_id, spec, created_at) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET "
                "owner = excluded.owner, agent_id = excluded.agent_id, spec = excluded.spec",
                (name, owner, agent_id, spec, created_at),
            )
            state = self._fetch(conn, name)
        assert state is not None
        return state

    def get(self, name: str) -> WorkspaceState | None:
        return self._fetch(self._conn, name)

    def list(self) -> builtins.list[WorkspaceState]:
        """Every workspace, ordered by name."""
        rows = self._conn.execute("SELECT * FROM workspaces ORDER BY name").fetchall()
        return [_row_to_state(row) for row in rows]

    def delete(self, name: str) -> bool:
        """Forget a workspace; False if there was none by that name."""
        with self._transaction() as conn:
            cursor = conn.execute("DELETE FROM workspaces WHERE name = ?", (name,))
        return cursor.rowcount > 0

    def update(self, name: str, **changes: object) -> WorkspaceState:
        """Change lifecycle fields (see `LIFECYCLE_FIELDS`) and return the new state.

        Raises TypeError for a field that is not a lifecycle field (the spec, owner and
        creation time change only through `upsert_spec`) or a value of the wrong type,
        ValueError for a naive datetime or unknown phase, KeyError if there is no such
        workspace.
        """
        unknown = sorted(set(changes) - LIFECYCLE_FIELDS)
        if unknown:
            raise TypeError(
                f"update() got unknown field(s) {', '.join(unknown)}; "
                f"lifecycle fields are {', '.join(sorted(LIFECYCLE_FIELDS))}"
            )
        values = {field: _CONVERTERS[field](value) for field, value in changes.items()}
        with self._transaction() as conn:
            if values:
                # Column names come from _CONVERTERS' keys, never from the caller's strings.
                assignments = ", ".join(f"{field} = :{field}" for field in values)
                conn.execute(
                    f"UPDATE workspaces SET {assignments} WHERE name = :_name",
                    {**values, "_name": name},
                )
            state = self._fetch(conn, name)
        if state is None:
            raise KeyError(name)
        return state

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
