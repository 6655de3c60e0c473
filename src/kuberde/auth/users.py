"""The built-in issuer's users: `users.yaml` in the state directory.

```yaml
users:
  alice:
    password_hash: "scrypt$32768$8$1$<salt>$<hash>"
    admin: false
    account: alice     # optional: under a root `kuberde up`, run alice's workloads as this
```

Passwords are stored as scrypt hashes (`hashlib.scrypt`, salted, parameters kept with each
hash so they can be raised later). The file is re-read when it changes, so adding or
removing a user needs no restart; removing one also stops their refresh tokens working.
Like the signing key, a file other users could read is refused.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kuberde.files import write_private
from kuberde.naming import InvalidName, is_os_user_name, validate_name

__all__ = [
    "USERS_FILE",
    "LocalUser",
    "UsersFile",
    "UsersFileError",
    "hash_password",
    "password_fingerprint",
    "set_user",
    "verify_password",
]

log = logging.getLogger(__name__)

USERS_FILE = "users.yaml"
_SCHEME = "scrypt"
_N, _R, _P = 2**15, 8, 1
_SALT_BYTES = 16
_HASH_BYTES = 32
_MAX_MEMORY = 128 * 1024 * 1024


class UsersFileError(Exception):
    """The users file cannot be used; nobody can sign in with a password until it is fixed."""


@dataclass(frozen=True)
class LocalUser:
    username: str
    password_hash: str = field(repr=False)
    admin: bool = False
    #: The existing OS account this user's workloads run as (default: `kuberde-<name>`).
    account: str | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAX_MEMORY, dklen=length
    )


def hash_password(password: str) -> str:
    """An encoded scrypt hash: `scrypt$N$r$p$salt$hash` (base64url, no padding)."""
    if not password:
        raise ValueError("the password must not be empty")
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password, salt, _N, _R, _P, _HASH_BYTES)
    return f"{_SCHEME}${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(encoded: str, password: str) -> bool:
    """Constant-time check of `password` against an encoded hash; False if malformed."""
    try:
        scheme, n, r, p, salt, expected = encoded.split("$")
        if scheme != _SCHEME:
            return False
        wanted = _unb64(expected)
        actual = _scrypt(password, _unb64(salt), int(n), int(r), int(p), len(wanted))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, wanted)


def password_fingerprint(user: LocalUser) -> str:
    """Changes whenever the password does and says nothing about it: what a sign-in keeps
    to notice a new password (refresh tokens, browser sessions)."""
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:32]


@functools.cache
def _dummy_hash() -> str:
    """Checked when the user does not exist, so a wrong name costs as long as a wrong password."""
    return hash_password(secrets.token_urlsafe(16))


def _parse(document: Any, path: Path) -> dict[str, LocalUser]:
    if document is None:
        return {}
    entries = document.get("users") if isinstance(document, dict) else None
    if entries is None:
        entries = {}
    if not isinstance(entries, dict):
        raise UsersFileError(f"{path}: 'users' must be a mapping of username to settings")
    users: dict[str, LocalUser] = {}
    for name, settings in entries.items():
        try:
            username = validate_name(name, "username")
        except InvalidName as exc:
            raise UsersFileError(f"{path}: {exc}") from None
        if not isinstance(settings, dict) or not isinstance(settings.get("password_hash"), str):
            raise UsersFileError(f"{path}: user {username!r} needs a 'password_hash' string")
        admin = settings.get("admin", False)
        if not isinstance(admin, bool):
            raise UsersFileError(f"{path}: user {username!r}: 'admin' must be true or false")
        account = settings.get("account")
        if account is not None and not (isinstance(account, str) and is_os_user_name(account)):
            raise UsersFileError(f"{path}: user {username!r}: 'account' must be an OS user name")
        users[username] = LocalUser(username, settings["password_hash"], admin, account)
    return users


def _read(path: Path) -> tuple[dict[str, LocalUser], tuple[int, int, int]]:
    fd = os.open(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UsersFileError(f"{path} is not a regular file")
        if info.st_mode & 0o077:
            raise UsersFileError(
                f"{path} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}`"
            )
        data = file.read()
    try:
        document = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise UsersFileError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from None
    return _parse(document, path), (info.st_ino, info.st_mtime_ns, info.st_size)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, on one line (PyYAML's own message spans several)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


class UsersFile:
    """The users file, re-read whenever it changes on disk; a missing file means no users."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._users: dict[str, LocalUser] = {}
        self._signature: tuple[int, int, int] | None = None

    def version(self) -> tuple[int, int, int] | None:
        """The file's `stat` signature (None: no file): it changes whenever the file does."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size

    def _current(self) -> Mapping[str, LocalUser]:
        signature = self.version()
        if signature is None:
            self._users, self._signature = {}, None
        elif signature != self._signature:
            self._users, self._signature = _read(self.path)
        return self._users

    def get(self, username: str) -> LocalUser | None:
        """The user, or None if absent; raises UsersFileError if the file is unusable."""
        return self._current().get(username)

    async def authenticate(self, username: str, password: str) -> LocalUser | None:
        """The user if the password is right; scrypt runs in a thread, off the event loop."""
        try:
            user = self.get(username)
        except UsersFileError as exc:
            log.error("password sign-in is unavailable: %s", exc)
            user = None
        encoded = user.password_hash if user is not None else _dummy_hash()
        valid = await asyncio.to_thread(verify_password, encoded, password)
        return user if valid and user is not None else None


def _entry(user: LocalUser) -> dict[str, Any]:
    entry: dict[str, Any] = {"password_hash": user.password_hash, "admin": user.admin}
    if user.account is not None:
        entry["account"] = user.account
    return entry


def set_user(path: Path, username: str, password: str, *, admin: bool = False) -> None:
    """Add or update a user, writing the file atomically with mode 0600."""
    validate_name(username, "username")
    users = dict(_read(path)[0]) if path.exists() else {}
    previous = users.get(username)
    account = previous.account if previous is not None else None
    users[username] = LocalUser(username, hash_password(password), admin, account)
    document = {"users": {name: _entry(user) for name, user in sorted(users.items())}}
    write_private(path, yaml.safe_dump(document, sort_keys=False))
