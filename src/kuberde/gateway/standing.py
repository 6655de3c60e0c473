"""Whether a browser session's user still stands, for the built-in issuer's users file.

A session remembers the fingerprint of its user's password hash at sign-in; each use
re-reads the user (`UsersFile.get` costs one `stat` unless the file changed). Removing the
user or changing their password ends the session; the admin flag is the one signed in with
and the file's current one together, so demotion takes effect at once and nothing promotes
a session beyond either.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from kuberde.auth import Principal
from kuberde.auth.users import LocalUser, UsersFile, UsersFileError, password_fingerprint

__all__ = ["ListedUsers"]

log = logging.getLogger(__name__)


class ListedUsers:
    """A `sessions.Standing` backed by `users.yaml`: only users it lists have sessions."""

    def __init__(self, users: UsersFile) -> None:
        self._users = users
        #: The users file's problem last logged: said once, not on every request.
        self._reported: str | None = None

    def _listed(self, username: str) -> LocalUser | None:
        try:
            listed = self._users.get(username)
        except UsersFileError as exc:
            if str(exc) != self._reported:
                self._reported = str(exc)
                log.error("browser sessions are refused until the users file is fixed: %s", exc)
            return None
        self._reported = None
        return listed

    def sign_in(self, user: Principal) -> tuple[str | None, float | None]:
        listed = self._listed(user.name)
        return (password_fingerprint(listed) if listed is not None else None), None

    def current(self, user: Principal, credential: str | None) -> Principal | None:
        listed = self._listed(user.name)
        if listed is None or credential is None or password_fingerprint(listed) != credential:
            return None
        admin = user.admin and listed.admin
        return user if admin == user.admin else replace(user, admin=admin)
