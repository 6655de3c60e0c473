"""Whether a signed-in user still stands, for the built-in issuer's users file.

A sign-in remembers the fingerprint of its user's password hash: a browser session in its
record, an access token in its `kuberde_credential` claim (`Principal.credential`). Each
use re-reads the user (`UsersFile.get` costs one `stat` unless the file changed). Removing
the user or changing their password ends the session and refuses the token; the admin flag
is the one signed in with and the file's current one together, so demotion takes effect at
once and nothing promotes a sign-in beyond either.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from kuberde.auth import AuthError, Principal
from kuberde.auth.oidc import UserVerifier
from kuberde.auth.users import LocalUser, UsersFile, UsersFileError, password_fingerprint

__all__ = ["ListedTokenUsers", "ListedUsers", "NoStanding"]

log = logging.getLogger(__name__)


class NoStanding(Exception):
    """The user no longer stands; the message says why, for the one refused."""


class ListedUsers:
    """A `sessions.Standing` backed by `users.yaml`: only users it lists have sessions."""

    def __init__(self, users: UsersFile) -> None:
        self._users = users
        #: The users file's problem last logged: said once, not on every request.
        self._reported: str | None = None

    def _listed(self, username: str) -> LocalUser | None:
        """The user's entry; raises NoStanding while the file is unusable."""
        try:
            listed = self._users.get(username)
        except UsersFileError as exc:
            if str(exc) != self._reported:
                self._reported = str(exc)
                log.error("sign-ins are refused until the users file is fixed: %s", exc)
            raise NoStanding("the gateway's users file is unusable") from None
        self._reported = None
        return listed

    def standing(self, user: Principal, credential: str | None) -> Principal:
        """`user`, signed in with `credential`, as they stand now; raises NoStanding."""
        listed = self._listed(user.name)
        if listed is None:
            raise NoStanding(f"user {user.name} was removed")
        if credential is None or password_fingerprint(listed) != credential:
            raise NoStanding(f"the password of {user.name} changed; sign in again")
        admin = user.admin and listed.admin
        return user if admin == user.admin else replace(user, admin=admin)

    def sign_in(self, user: Principal) -> tuple[str | None, float | None]:
        try:
            listed = self._listed(user.name)
        except NoStanding:
            listed = None
        return (password_fingerprint(listed) if listed is not None else None), None

    def current(self, user: Principal, credential: str | None) -> Principal | None:
        try:
            return self.standing(user, credential)
        except NoStanding:
            return None

    def version(self) -> object:
        """Changes whenever the users file does (one `stat`)."""
        return self._users.version()

    def token_user(self, user: Principal) -> Principal:
        """A token's user as they stand now; raises AuthError (`revoked`). A token without
        a credential (minted with the key for the OS user who runs `kuberde up`, or by
        tests) names no users-file entry: it is good until it expires."""
        if user.credential is None:
            return user
        try:
            return self.standing(user, user.credential)
        except NoStanding as exc:
            raise AuthError("revoked", f"the token is no longer valid: {exc}") from None


class ListedTokenUsers:
    """A `UserVerifier` that also refuses tokens whose user no longer stands."""

    def __init__(self, verifier: UserVerifier, users: ListedUsers) -> None:
        self._verifier = verifier
        self.users = users

    async def verify_user(self, token: str) -> Principal:
        return self.users.token_user(await self._verifier.verify_user(token))
