"""Browser sessions on disk, so a gateway restart signs nobody out.

One SQLite file in the gateway's state directory (`browser-sessions.db`, 0600, WAL), apart
from the local runtime's `state.db`: the gateway also runs without the local runtime
(`kuberde server`), and neither schema has to know the other. Rows are keyed by the SHA-256
of the browser's handle, as in memory: the file holds no usable cookie, and of a user's
password only the fingerprint a session checks it by. Expired rows are
deleted when the file is loaded; signing out deletes the session and its app tickets.

`SessionStore` keeps working from memory and writes through here. Writes run in order on
one thread of their own, never on the event loop that carries every tunnel; `close` waits
for them. A write lost to a crash costs that browser one sign-in, nothing more.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from kuberde.auth import Principal
from kuberde.files import create_private
from kuberde.gateway.sessions import AppTicket, BrowserSession
from kuberde.sqlitefiles import prepare_private, transaction

__all__ = ["SESSIONS_FILE", "SessionFile", "SessionFileError"]

log = logging.getLogger(__name__)

SESSIONS_FILE = "browser-sessions.db"
#: Ours: `PRAGMA application_id` of the file ("KRDS").
_APPLICATION_ID = 0x4B524453
#: `PRAGMA user_version`. 1: sessions record their `credential`; 2: tickets hold no user
#: (they speak for their session's). Rows of an older file are dropped (their users sign in
#: again), never read as sessions nobody can re-check.
_SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY, user TEXT NOT NULL, csrf TEXT NOT NULL, expires_at REAL NOT NULL,
    credential TEXT
);
CREATE TABLE IF NOT EXISTS tickets (
    key TEXT PRIMARY KEY, session_key TEXT NOT NULL, host TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tickets_by_session ON tickets (session_key);
"""


class SessionFileError(OSError):
    """The session file cannot be used; the message says what to do (an OSError, so the
    commands report it like any file they cannot open)."""


def _user_json(user: Principal) -> str:
    return json.dumps(
        {
            "kind": user.kind,
            "name": user.name,
            "owner": user.owner,
            "admin": user.admin,
            "expires_at": user.expires_at.isoformat() if user.expires_at else None,
        }
    )


def _user(text: str) -> Principal:
    data: dict[str, Any] = json.loads(text)
    expires = data.get("expires_at")
    return Principal(
        kind=data["kind"],
        name=data["name"],
        owner=data.get("owner"),
        admin=bool(data.get("admin")),
        expires_at=datetime.fromisoformat(expires) if expires else None,
    )


class SessionFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            create_private(path)
            self._conn = sqlite3.connect(
                path, isolation_level=None, timeout=5.0, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise SessionFileError(f"cannot open browser session file {path}: {exc}") from exc
        try:
            self._prepare()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise SessionFileError(
                f"browser session file {path} is unreadable ({exc}); move it aside "
                "(browsers then sign in again)"
            ) from exc
        except SessionFileError:
            self._conn.close()
            raise
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="browser-sessions")

    def _prepare(self) -> None:
        conn = self._conn
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id != _APPLICATION_ID and (app_id != 0 or tables):
            raise SessionFileError(
                f"{self.path} is not a KubeRDE browser session file; refusing to change it"
            )
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise SessionFileError(
                f"{self.path} was written by a newer KubeRDE (schema {version}); "
                "move it aside or upgrade"
            )
        prepare_private(conn, self.path)
        if tables and version < _SCHEMA_VERSION:
            with self._transaction():
                dropped = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
                conn.execute("DROP TABLE IF EXISTS sessions")
                conn.execute("DROP TABLE IF EXISTS tickets")
            log.warning(
                "browser session file %s is from an older version: its %d sessions are "
                "dropped (those browsers sign in again)",
                self.path,
                dropped,
            )
        conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return transaction(self._conn)

    def load(self, now: float) -> tuple[list[BrowserSession], list[tuple[str, AppTicket]]]:
        """Every current session and ticket, oldest first; expired ones are deleted."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            conn.execute(
                "DELETE FROM tickets WHERE expires_at <= ? "
                "OR session_key NOT IN (SELECT key FROM sessions)",
                (now,),
            )
            sessions = [
                BrowserSession(key, _user(user), csrf, expires, credential)
                for key, user, csrf, expires, credential in conn.execute(
                    "SELECT key, user, csrf, expires_at, credential FROM sessions ORDER BY rowid"
                )
            ]
            tickets = [
                (key, AppTicket(session_key, host, expires))
                for key, session_key, host, expires in conn.execute(
                    "SELECT key, session_key, host, expires_at FROM tickets ORDER BY rowid"
                )
            ]
        return sessions, tickets

    def put_session(self, session: BrowserSession, evicted: Iterable[str] = ()) -> None:
        row = (
            session.key,
            _user_json(session.user),
            session.csrf_token,
            session.expires_at,
            session.credential,
        )
        evicted = list(evicted)

        def write(conn: sqlite3.Connection) -> None:
            self._forget(conn, evicted)
            conn.execute("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?)", row)

        self._write(write)

    def put_ticket(self, key: str, ticket: AppTicket, evicted: Iterable[str] = ()) -> None:
        row = (key, ticket.session_key, ticket.host, ticket.expires_at)
        gone = [(k,) for k in evicted]

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM tickets WHERE key = ?", gone)
            conn.execute("INSERT OR REPLACE INTO tickets VALUES (?, ?, ?, ?)", row)

        self._write(write)

    def end(self, session_key: str) -> None:
        """Sign-out: the session and every ticket minted from it."""
        self._write(lambda conn: self._forget(conn, [session_key]))

    def _write(self, write: Callable[[sqlite3.Connection], None]) -> None:
        """`write` as one transaction on the writer thread, after every earlier one."""

        def run() -> None:
            with self._transaction() as conn:
                write(conn)

        self._writer.submit(run).add_done_callback(self._report)

    def _report(self, done: Future[None]) -> None:
        error = done.exception()
        if error is not None:
            log.warning("cannot save browser sessions to %s: %s", self.path, error)

    @staticmethod
    def _forget(conn: sqlite3.Connection, session_keys: Iterable[str]) -> None:
        keys = [(key,) for key in session_keys]
        conn.executemany("DELETE FROM sessions WHERE key = ?", keys)
        conn.executemany("DELETE FROM tickets WHERE session_key = ?", keys)

    def close(self) -> None:
        """Finish every write, then close the file."""
        self._writer.shutdown(wait=True)
        self._conn.close()
