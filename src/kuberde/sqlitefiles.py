"""What every SQLite file of ours does the same way: private (0600, WAL files too), WAL
journal with NORMAL sync, and one IMMEDIATE transaction per write."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

__all__ = ["prepare_private", "transaction"]


def prepare_private(conn: sqlite3.Connection, path: Path) -> str:
    """Make the file and its WAL files 0600 and switch to WAL; returns the journal mode the
    file now has (the caller refuses anything but `wal`)."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)
    mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
    conn.execute("PRAGMA synchronous = NORMAL")
    return mode


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    # IMMEDIATE takes the write lock up front, so a read-then-write cannot be interleaved.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        # SQLite may already have rolled back (disk full, I/O error); do not mask that error.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
