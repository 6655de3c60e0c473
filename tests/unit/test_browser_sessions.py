from __future__ import annotations

from kuberde.auth import Principal
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
