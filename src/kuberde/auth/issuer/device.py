"""The device authorization grant (RFC 8628): pending codes, approval, polling, slow-down."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from kuberde.auth.issuer.protocol import Identity, OAuthError, sha256

#: RFC 8628 §6.1: no vowels (no words), no look-alike digits; 20^8 codes.
_USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
_USER_CODE_LENGTH = 8
_SLOW_DOWN_STEP = 5


@dataclass
class DeviceGrant:
    client_id: str
    scope: str
    user_code: str
    expires_at: float
    interval: int
    last_poll: float | None = None
    approved: Identity | None = None
    denied: bool = False


def normalize_user_code(value: str) -> str:
    return "".join(ch for ch in value.upper() if ch.isalnum())


def shown_user_code(user_code: str) -> str:
    """How a code is shown to people: two groups of four."""
    return f"{user_code[:4]}-{user_code[4:]}"


class DeviceGrants:
    """Device codes by hash, and their user codes; no I/O, time from `clock`."""

    def __init__(self, ttl: float, poll_interval: int, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._poll_interval = poll_interval
        self._clock = clock
        self._devices: dict[str, DeviceGrant] = {}
        self._user_codes: dict[str, str] = {}

    def expire(self) -> None:
        """Forget old grants; they linger one lifetime more to answer `expired_token`."""
        now = self._clock()
        for device_hash, grant in list(self._devices.items()):
            if grant.expires_at + self._ttl <= now:
                del self._devices[device_hash]
                self._user_codes.pop(grant.user_code, None)

    def _new_user_code(self) -> str:
        while True:
            code = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(_USER_CODE_LENGTH))
            if code not in self._user_codes:
                return code

    def start(self, client_id: str, scope: str) -> tuple[str, str]:
        """A new (device code, user code) pair awaiting approval."""
        self.expire()
        device_code = secrets.token_urlsafe(32)
        user_code = self._new_user_code()
        self._devices[sha256(device_code)] = DeviceGrant(
            client_id=client_id,
            scope=scope,
            user_code=user_code,
            expires_at=self._clock() + self._ttl,
            interval=self._poll_interval,
        )
        self._user_codes[user_code] = sha256(device_code)
        return device_code, user_code

    def pending(self, user_code: str) -> DeviceGrant | None:
        """The grant a person may still approve or deny with `user_code`."""
        self.expire()
        device_hash = self._user_codes.get(normalize_user_code(user_code))
        grant = self._devices.get(device_hash) if device_hash else None
        if grant is None or grant.approved is not None or grant.denied:
            return None
        return grant if grant.expires_at > self._clock() else None

    def redeem(self, device_code: str, client_id: str) -> DeviceGrant:
        """The approved grant for a token request, or the RFC 8628 §3.5 error to answer."""
        self.expire()
        device_hash = sha256(device_code)
        grant = self._devices.get(device_hash)
        if grant is None:
            raise OAuthError("invalid_grant", "the device code is unknown or already used")
        if grant.client_id != client_id:
            raise OAuthError("invalid_grant", "the device code was issued to another client")
        if grant.expires_at <= self._clock():
            self._forget(device_hash)
            raise OAuthError("expired_token", "the device code has expired; sign in again")
        if grant.denied:
            self._forget(device_hash)
            raise OAuthError("access_denied", "the sign-in was denied")
        if grant.approved is None:
            now = self._clock()
            too_soon = grant.last_poll is not None and now - grant.last_poll < grant.interval
            grant.last_poll = now
            if too_soon:
                grant.interval += _SLOW_DOWN_STEP
                raise OAuthError("slow_down", f"poll at most every {grant.interval} seconds")
            raise OAuthError("authorization_pending", "the sign-in has not been approved yet")
        self._forget(device_hash)
        return grant

    def _forget(self, device_hash: str) -> None:
        grant = self._devices.pop(device_hash, None)
        if grant is not None:
            self._user_codes.pop(grant.user_code, None)
