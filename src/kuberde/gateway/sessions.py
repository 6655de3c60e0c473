"""Browser sessions kept on the server: sign-ins in progress, sessions, and app credentials.

A browser holds only random handles; what they mean lives here, stored under their SHA-256
so a memory dump or a log of this table reveals no usable cookie. Three kinds:

- a *login* in progress (OIDC `state`, PKCE verifier, where to go next), used once;
- a *session* of the dashboard host (its cookie, the user, a CSRF token);
- an *app ticket*: the host-only credential of one app host, minted through a one-time
  *handshake code* the dashboard hands the browser in a redirect. A ticket is good for its
  own host only, so JavaScript in one app can neither read the dashboard's session nor use
  its own credential anywhere else. Signing out ends the session and its tickets.

Every use of a session or ticket asks a `Standing` who its user is *now*: the gateway's
built-in issuer re-reads the users file (removal or a new password ends the session and
its tickets, demotion takes effect at once); an external provider cannot be asked on each
request, so there a session ends when the token it was started with expires.

Bookkeeping with an injectable clock; everything is bounded (oldest entries go first).
Sessions and tickets are written through to a `SessionBackend` when there is one (the
gateway's `session_file.SessionFile`), so they survive a restart; logins in progress and
handshake codes live a minute or ten and stay in memory.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

from kuberde.auth import Principal

__all__ = [
    "AppTicket",
    "BrowserSession",
    "PendingLogin",
    "SessionBackend",
    "SessionLimits",
    "SessionStore",
    "Standing",
    "UntilTokenExpiry",
]


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class SessionLimits:
    session_ttl: float = 12 * 3600.0
    login_ttl: float = 600.0
    code_ttl: float = 60.0
    ticket_ttl: float = 3600.0
    max_sessions: int = 10_000
    max_logins: int = 1_000
    max_tickets: int = 50_000


@dataclass(frozen=True, slots=True)
class PendingLogin:
    state: str
    code_verifier: str
    next_url: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class BrowserSession:
    key: str
    user: Principal
    csrf_token: str
    expires_at: float
    #: What the `Standing` recorded at sign-in to recognise the same user later (the
    #: built-in issuer: a fingerprint of the password hash, never the hash itself).
    credential: str | None = None


@dataclass(frozen=True, slots=True)
class AppTicket:
    """Speaks for its session's user as they stand at each use: it holds no user of its own."""

    session_key: str
    host: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class _Code:
    session_key: str
    host: str
    expires_at: float


class SessionBackend(Protocol):
    """Durable storage of sessions and tickets by hashed handle (`evicted`: session or
    ticket keys the memory bound just dropped, to drop with them)."""

    def load(self, now: float) -> tuple[list[BrowserSession], list[tuple[str, AppTicket]]]: ...

    def put_session(self, session: BrowserSession, evicted: Iterable[str] = ()) -> None: ...

    def put_ticket(self, key: str, ticket: AppTicket, evicted: Iterable[str] = ()) -> None: ...

    def end(self, session_key: str) -> None: ...


class Standing(Protocol):
    """Whether a signed-in user still may use their session, and as whom."""

    def sign_in(self, user: Principal) -> tuple[str | None, float | None]:
        """What to record with a new session of `user`, and the latest time (epoch
        seconds) it may last until; None: no such limit."""
        ...

    def current(self, user: Principal, credential: str | None) -> Principal | None:
        """The session's user as they stand now (`user` as signed in, with what `sign_in`
        recorded); None ends the session and its tickets."""
        ...


class UntilTokenExpiry:
    """For a provider we cannot ask on every request: a session lasts no longer than the
    token it was started with."""

    def sign_in(self, user: Principal) -> tuple[str | None, float | None]:
        return None, user.expires_at.timestamp() if user.expires_at is not None else None

    def current(self, user: Principal, credential: str | None) -> Principal | None:
        return user


V = TypeVar("V")


class _Bounded(Generic[V]):
    """Entries by hashed handle, dropped at expiry or, oldest first, past `limit`."""

    def __init__(self, limit: int) -> None:
        self._items: OrderedDict[str, V] = OrderedDict()
        self._limit = limit

    def put(self, key: str, value: V) -> list[str]:
        """Add an entry; returns the keys of the oldest ones it pushed out."""
        self._items[key] = value
        evicted = []
        while len(self._items) > self._limit:
            evicted.append(self._items.popitem(last=False)[0])
        return evicted

    def get(self, key: str) -> V | None:
        return self._items.get(key)

    def pop(self, key: str) -> V | None:
        return self._items.pop(key, None)

    def drop_where(self, doomed: Callable[[V], bool]) -> None:
        for key in [key for key, value in self._items.items() if doomed(value)]:
            del self._items[key]

    def __len__(self) -> int:
        return len(self._items)


class SessionStore:
    def __init__(
        self,
        limits: SessionLimits | None = None,
        clock: Callable[[], float] = time.time,
        backend: SessionBackend | None = None,
        standing: Standing | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        """With a `backend`, the sessions and tickets it holds are loaded now. `standing`
        is asked on every use (default: `UntilTokenExpiry`); `on_end` is told whenever a
        session ends (what was opened with it must close: `HeldConnections.changed`)."""
        self.limits = limits or SessionLimits()
        self._on_end = on_end
        self._clock = clock
        self._standing = standing or UntilTokenExpiry()
        self._backend = backend
        self._logins: _Bounded[PendingLogin] = _Bounded(self.limits.max_logins)
        self._sessions: _Bounded[BrowserSession] = _Bounded(self.limits.max_sessions)
        self._codes: _Bounded[_Code] = _Bounded(self.limits.max_logins)
        self._tickets: _Bounded[AppTicket] = _Bounded(self.limits.max_tickets)
        if backend is not None:
            sessions, tickets = backend.load(clock())
            for session in sessions:
                self._sessions.put(session.key, session)
            for key, ticket in tickets:
                self._tickets.put(key, ticket)

    # ---- sign-in -------------------------------------------------------------------------

    def begin_login(self, next_url: str) -> PendingLogin:
        login = PendingLogin(
            state=secrets.token_urlsafe(24),
            code_verifier=secrets.token_urlsafe(48),
            next_url=next_url,
            expires_at=self._clock() + self.limits.login_ttl,
        )
        self._logins.put(_hash(login.state), login)
        return login

    def finish_login(self, state: str) -> PendingLogin | None:
        """The login `state` names, once; None when unknown, used or expired."""
        login = self._logins.pop(_hash(state))
        if login is None or login.expires_at <= self._clock():
            return None
        return login

    # ---- sessions ------------------------------------------------------------------------

    def create(self, user: Principal) -> tuple[str, BrowserSession]:
        """A new session for `user`; returns the cookie value and the session."""
        cookie = secrets.token_urlsafe(32)
        credential, until = self._standing.sign_in(user)
        expires = self._clock() + self.limits.session_ttl
        session = BrowserSession(
            key=_hash(cookie),
            user=user,
            csrf_token=secrets.token_urlsafe(24),
            expires_at=expires if until is None else min(expires, until),
            credential=credential,
        )
        evicted = self._sessions.put(session.key, session)
        if self._backend is not None:
            self._backend.put_session(session, evicted)
        return cookie, session

    def get(self, cookie: str | None) -> BrowserSession | None:
        if not cookie:
            return None
        return self._current(_hash(cookie))

    def _current(self, key: str) -> BrowserSession | None:
        """The session stored under `key` with its user as they stand now; one whose user
        no longer stands is ended here."""
        session = self._sessions.get(key)
        if session is None or session.expires_at <= self._clock():
            return None
        user = self._standing.current(session.user, session.credential)
        if user is None:
            self._end(key)
            return None
        return session if user == session.user else replace(session, user=user)

    def end(self, cookie: str | None) -> None:
        """Sign out: the session and every app ticket minted from it stop working."""
        if cookie:
            self._end(_hash(cookie))

    def _end(self, key: str) -> None:
        self._sessions.pop(key)
        self._tickets.drop_where(lambda ticket: ticket.session_key == key)
        self._codes.drop_where(lambda code: code.session_key == key)
        if self._backend is not None:
            self._backend.end(key)
        if self._on_end is not None:
            self._on_end()

    # ---- app hosts -----------------------------------------------------------------------

    def handshake_code(self, session: BrowserSession, host: str) -> str:
        """A one-time code the app host `host` trades for its own ticket (a redirect away)."""
        code = secrets.token_urlsafe(32)
        self._codes.put(_hash(code), _Code(session.key, host, self._clock() + self.limits.code_ttl))
        return code

    def redeem(self, code: str, host: str) -> str | None:
        """Trade a handshake code for the host's ticket (cookie value); None if not valid here."""
        entry = self._codes.pop(_hash(code))
        now = self._clock()
        if entry is None or entry.expires_at <= now or entry.host != host:
            return None
        session = self._current(entry.session_key)
        if session is None:
            return None
        ticket = secrets.token_urlsafe(32)
        expires = min(session.expires_at, now + self.limits.ticket_ttl)
        key, minted = _hash(ticket), AppTicket(session.key, host, expires)
        evicted = self._tickets.put(key, minted)
        if self._backend is not None:
            self._backend.put_ticket(key, minted, evicted)
        return ticket

    def ticket(self, value: str | None, host: str) -> Principal | None:
        """Whom the ticket a cookie holds speaks for (its session's user, as they stand
        now), if it was minted for this very host and is current."""
        if not value:
            return None
        ticket = self._tickets.get(_hash(value))
        if ticket is None or ticket.host != host or ticket.expires_at <= self._clock():
            return None
        session = self._current(ticket.session_key)
        if session is None:
            return None
        return session.user
