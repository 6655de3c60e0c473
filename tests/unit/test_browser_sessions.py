from __future__ import annotations

import hashlib
import sqlite3
import stat
from pathlib import Path

import pytest

from kuberde.auth import Principal
from kuberde.gateway.session_file import SESSIONS_FILE, SessionFile, SessionFileError
from kuberde.gateway.sessions import SessionLimits, SessionStore

ALICE = Principal(kind="user", name="alice")
HOST = "dev--alice.localhost:8080"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store(**limits: float) -> tuple[SessionStore, Clock]:
    clock = Clock()
    return SessionStore(SessionLimits(**limits), clock=clock), clock  # type: ignore[arg-type]


def test_a_login_is_used_once_and_expires() -> None:
    sessions, clock = store(login_ttl=10)
    login = sessions.begin_login("/next")
    assert sessions.finish_login(login.state) == login
    assert sessions.finish_login(login.state) is None
    late = sessions.begin_login("/")
    clock.now += 11
    assert sessions.finish_login(late.state) is None


def test_sessions_expire_and_end() -> None:
    sessions, clock = store(session_ttl=100)
    cookie, session = sessions.create(ALICE)
    assert sessions.get(cookie) == session and session.user == ALICE
    assert sessions.get("forged") is None and sessions.get(None) is None
    sessions.end(cookie)
    assert sessions.get(cookie) is None
    cookie, _ = sessions.create(ALICE)
    clock.now += 101
    assert sessions.get(cookie) is None


def test_a_ticket_is_for_its_own_host_only_and_dies_with_its_session() -> None:
    sessions, _ = store()
    cookie, session = sessions.create(ALICE)
    code = sessions.handshake_code(session, HOST)
    assert sessions.redeem(code, "other--alice.localhost:8080") is None  # and it is spent
    code = sessions.handshake_code(session, HOST)
    ticket = sessions.redeem(code, HOST)
    assert ticket is not None and sessions.redeem(code, HOST) is None
    held = sessions.ticket(ticket, HOST)
    assert held is not None and held.user == ALICE
    assert sessions.ticket(ticket, "9000--dev--alice.localhost:8080") is None
    assert sessions.ticket(cookie, HOST) is None  # the session cookie is no ticket
    sessions.end(cookie)
    assert sessions.ticket(ticket, HOST) is None


def test_codes_and_tickets_expire() -> None:
    sessions, clock = store(code_ttl=5, ticket_ttl=50)
    _, session = sessions.create(ALICE)
    code = sessions.handshake_code(session, HOST)
    clock.now += 6
    assert sessions.redeem(code, HOST) is None
    ticket = sessions.redeem(sessions.handshake_code(session, HOST), HOST)
    clock.now += 51
    assert sessions.ticket(ticket, HOST) is None


def test_the_tables_are_bounded() -> None:
    sessions, _ = store(max_sessions=3)
    cookies = [sessions.create(ALICE)[0] for _ in range(5)]
    assert [sessions.get(c) is not None for c in cookies] == [False, False, True, True, True]


# ---- kept on disk: a restart signs nobody out -------------------------------------------------


class Disk:
    """One session file across gateway restarts: each `start` closes the file of the gateway
    before it (which finishes its writes), as stopping that gateway would."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path, self.clock = path, clock
        self._file: SessionFile | None = None

    def start(self, **limits: float) -> SessionStore:
        self.stop()
        self._file = SessionFile(self.path)
        return SessionStore(SessionLimits(**limits), clock=self.clock, backend=self._file)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def test_sessions_and_tickets_survive_a_restart_and_sign_out_ends_them(tmp_path: Path) -> None:
    disk = Disk(tmp_path / SESSIONS_FILE, Clock())
    admin = Principal(kind="user", name="root", admin=True)
    first = disk.start()
    cookie, session = first.create(ALICE)
    other, _ = first.create(admin)
    ticket = first.redeem(first.handshake_code(session, HOST), HOST)
    assert ticket is not None

    second = disk.start()
    assert second.get(cookie) == session
    restored = second.get(other)
    assert restored is not None and restored.user == admin
    held = second.ticket(ticket, HOST)
    assert held is not None and held.user == ALICE
    assert second.ticket(ticket, "other--alice.localhost:8080") is None

    second.end(cookie)
    third = disk.start()
    assert third.get(cookie) is None and third.ticket(ticket, HOST) is None
    assert third.get(other) is not None


def test_only_hashes_are_on_disk_and_the_file_is_private(tmp_path: Path) -> None:
    disk = Disk(tmp_path / SESSIONS_FILE, Clock())
    sessions = disk.start()
    cookie, session = sessions.create(ALICE)
    ticket = sessions.redeem(sessions.handshake_code(session, HOST), HOST)
    assert ticket is not None
    disk.stop()
    written = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert cookie.encode() not in written and ticket.encode() not in written
    assert hashlib.sha256(cookie.encode()).hexdigest().encode() in written
    for file in tmp_path.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file


def test_a_write_never_waits_for_the_file(tmp_path: Path) -> None:
    """Sign-in runs on the event loop that carries every tunnel: saving the session must not
    wait there, even while another process holds the file locked."""
    disk = Disk(tmp_path / SESSIONS_FILE, Clock())
    sessions = disk.start()
    with sqlite3.connect(disk.path, isolation_level=None) as other:
        other.execute("BEGIN EXCLUSIVE")
        cookie, _ = sessions.create(ALICE)  # a blocking write would raise "locked" here
        other.execute("COMMIT")
    assert disk.start().get(cookie) is not None
    disk.stop()


def test_expired_and_evicted_entries_are_not_restored(tmp_path: Path) -> None:
    path, clock = tmp_path / SESSIONS_FILE, Clock()
    disk = Disk(path, clock)
    first = disk.start(session_ttl=100, max_sessions=2)
    old, _ = first.create(ALICE)
    clock.now += 60
    kept = [first.create(ALICE)[0] for _ in range(2)]  # the first one is pushed out
    assert disk.start().get(old) is None
    clock.now += 50  # past the first of the two
    later = disk.start()
    assert [later.get(c) is not None for c in kept] == [True, True]
    clock.now += 60
    assert [disk.start().get(c) is not None for c in kept] == [False, False]
    disk.stop()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (0,)


def test_a_file_that_is_not_ours_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / SESSIONS_FILE
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    before = path.read_bytes()
    with pytest.raises(SessionFileError, match="not a KubeRDE browser session file"):
        SessionFile(path)
    assert path.read_bytes() == before
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(SessionFileError, match="move it aside"):
        SessionFile(garbage)
    assert garbage.read_bytes() == b"not sqlite at all" * 100
