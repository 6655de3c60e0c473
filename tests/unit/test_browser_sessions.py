from __future__ import annotations

import hashlib
import logging
import sqlite3
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from kuberde.auth import Principal
from kuberde.auth.users import UsersFile
from kuberde.files import write_private
from kuberde.gateway.session_file import SESSIONS_FILE, SessionFile, SessionFileError
from kuberde.gateway.sessions import SessionLimits, SessionStore, Standing
from kuberde.gateway.standing import ListedUsers

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
    assert held == ALICE
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

    def start(self, standing: Standing | None = None, **limits: float) -> SessionStore:
        self.stop()
        self._file = SessionFile(self.path)
        return SessionStore(
            SessionLimits(**limits),  # type: ignore[arg-type]
            clock=self.clock,
            backend=self._file,
            standing=standing,
        )

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
    assert held == ALICE
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


# ---- standing: who a session's user is now ------------------------------------------------


def write_users(path: Path, users: dict[str, tuple[str, bool]]) -> None:
    """users.yaml with (password hash, admin) per user; the hashes need not be real here."""
    entries = {name: {"password_hash": h, "admin": admin} for name, (h, admin) in users.items()}
    write_private(path, yaml.safe_dump({"users": entries}))


def test_removal_or_a_new_password_ends_the_session_and_its_tickets(tmp_path: Path) -> None:
    users = tmp_path / "users.yaml"
    write_users(users, {"alice": ("scrypt$old", False), "bob": ("scrypt$bob", False)})
    sessions = SessionStore(standing=ListedUsers(UsersFile(users)))
    cookie, session = sessions.create(ALICE)
    ticket = sessions.redeem(sessions.handshake_code(session, HOST), HOST)
    bob, _ = sessions.create(Principal(kind="user", name="bob"))
    assert ticket is not None and session.credential and "scrypt" not in session.credential
    write_users(users, {"bob": ("scrypt$bob", False)})
    assert sessions.ticket(ticket, HOST) is None and sessions.get(cookie) is None
    write_users(users, {"alice": ("scrypt$old", False), "bob": ("scrypt$bob", False)})
    assert sessions.get(cookie) is None, "a session once ended stays ended"
    assert sessions.get(bob) is not None, "other users are unaffected"

    cookie, session = sessions.create(ALICE)
    ticket = sessions.redeem(sessions.handshake_code(session, HOST), HOST)
    write_users(users, {"alice": ("scrypt$new", False), "bob": ("scrypt$bob", False)})
    assert sessions.get(cookie) is None and sessions.ticket(ticket, HOST) is None
    assert sessions.get(bob) is not None


@pytest.mark.parametrize("signed_in", [False, True])
@pytest.mark.parametrize("listed", [False, True])
def test_admin_is_never_more_than_the_sign_in_or_the_file_says(
    tmp_path: Path, signed_in: bool, listed: bool
) -> None:
    users = tmp_path / "users.yaml"
    write_users(users, {"alice": ("scrypt$x", True)})
    sessions = SessionStore(standing=ListedUsers(UsersFile(users)))
    cookie, session = sessions.create(Principal(kind="user", name="alice", admin=signed_in))
    ticket = sessions.redeem(sessions.handshake_code(session, HOST), HOST)
    write_users(users, {"alice": ("scrypt$x", listed)})
    now, held = sessions.get(cookie), sessions.ticket(ticket, HOST)
    assert now is not None and held is not None
    assert now.user.admin == held.admin == (signed_in and listed)


def test_a_broken_users_file_fails_closed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Nobody can be re-checked, so nobody is let in (signing in is refused too)."""
    users = tmp_path / "users.yaml"
    write_users(users, {"alice": ("scrypt$x", False)})
    sessions = SessionStore(standing=ListedUsers(UsersFile(users)))
    cookie, _ = sessions.create(ALICE)
    users.write_text("users: [")
    assert sessions.get(cookie) is None
    unlisted, _ = sessions.create(Principal(kind="user", name="mallory"))
    assert caplog.text.count("refused until the users file is fixed") == 1, "said once"
    write_users(users, {"alice": ("scrypt$x", False)})
    assert sessions.get(unlisted) is None and sessions.get(cookie) is None


@dataclass
class Directory:
    """A standing over a dict: what tests change between uses of a session."""

    users: dict[str, tuple[str, bool]] = field(default_factory=dict)

    def sign_in(self, user: Principal) -> tuple[str | None, float | None]:
        listed = self.users.get(user.name)
        return (listed[0] if listed else None), None

    def current(self, user: Principal, credential: str | None) -> Principal | None:
        listed = self.users.get(user.name)
        if listed is None or listed[0] != credential:
            return None
        return Principal(kind="user", name=user.name, admin=user.admin and listed[1])


@given(
    st.booleans(),
    st.lists(st.sampled_from(["remove", "password", "demote", "promote", "use"]), max_size=20),
)
def test_a_session_lives_exactly_until_its_user_stops_standing(
    admin: bool, changes: list[str]
) -> None:
    directory = Directory({"alice": ("pw0", admin)})
    sessions = SessionStore(standing=directory)
    cookie, session = sessions.create(Principal(kind="user", name="alice", admin=admin))
    ticket = sessions.redeem(sessions.handshake_code(session, HOST), HOST)
    ended = False
    for number, change in enumerate(changes):
        password, listed_admin = directory.users.get("alice", (f"pw{number}", False))
        if change == "remove":
            directory.users.pop("alice", None)
            ended = True
        elif change == "password":
            directory.users["alice"] = (f"pw{number + 1}", listed_admin)
            ended = True
        elif change in ("demote", "promote") and "alice" in directory.users:
            directory.users["alice"] = (password, change == "promote")
        now, held = sessions.get(cookie), sessions.ticket(ticket, HOST)
        if ended:
            assert now is None and held is None
        else:
            assert now is not None and held is not None
            expected = admin and directory.users["alice"][1]
            assert now.user.admin == held.admin == expected


def test_by_default_a_session_ends_with_the_token_it_started_with() -> None:
    sessions, clock = store(session_ttl=1000)
    token_end = clock.now + 100
    user = Principal(kind="user", name="alice", expires_at=datetime.fromtimestamp(token_end, UTC))
    cookie, session = sessions.create(user)
    assert session.expires_at == token_end
    ticket = sessions.redeem(sessions.handshake_code(session, HOST), HOST)
    clock.now += 99
    assert sessions.get(cookie) is not None and sessions.ticket(ticket, HOST) is not None
    clock.now += 1
    assert sessions.get(cookie) is None and sessions.ticket(ticket, HOST) is None


def test_a_restored_session_is_checked_by_its_recorded_fingerprint(tmp_path: Path) -> None:
    users = tmp_path / "users.yaml"
    write_users(users, {"alice": ("scrypt$old", False)})
    standing = ListedUsers(UsersFile(users))
    disk = Disk(tmp_path / SESSIONS_FILE, Clock())
    cookie, session = disk.start(standing).create(ALICE)
    assert disk.start(standing).get(cookie) == session
    disk.stop()
    written = b"".join(p.read_bytes() for p in tmp_path.glob(SESSIONS_FILE + "*"))
    assert session.credential is not None and session.credential.encode() in written
    assert b"scrypt$old" not in written
    write_users(users, {"alice": ("scrypt$new", False)})
    assert disk.start(standing).get(cookie) is None
    disk.stop()


@pytest.mark.parametrize("version", [0, 1])
def test_an_older_session_file_is_emptied_with_a_log_line_and_a_newer_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, version: int
) -> None:
    path = tmp_path / SESSIONS_FILE
    with sqlite3.connect(path) as conn:  # the file as that version wrote it
        conn.execute("PRAGMA application_id = 0x4B524453")
        conn.execute(f"PRAGMA user_version = {version}")
        credential = ", credential TEXT" if version == 1 else ""
        conn.execute(
            "CREATE TABLE sessions (key TEXT PRIMARY KEY, user TEXT NOT NULL, "
            f"csrf TEXT NOT NULL, expires_at REAL NOT NULL{credential})"
        )
        conn.execute(
            "CREATE TABLE tickets (key TEXT PRIMARY KEY, session_key TEXT NOT NULL, "
            "host TEXT NOT NULL, user TEXT NOT NULL, expires_at REAL NOT NULL)"
        )
        conn.execute(
            "INSERT INTO sessions (key, user, csrf, expires_at) VALUES ('k', ?, 'c', 1e12)",
            ('{"kind": "user", "name": "alice", "admin": true}',),
        )
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, "kuberde.gateway.session_file"):
        disk = Disk(path, Clock())
        sessions = disk.start()
    assert "older version: its 1 sessions are dropped" in caplog.text
    cookie, _ = sessions.create(ALICE)
    assert disk.start().get(cookie) is not None
    disk.stop()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT key FROM sessions").fetchall() != [("k",)]
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(SessionFileError, match="newer KubeRDE"):
        SessionFile(path)
