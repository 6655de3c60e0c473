"""Limits on password attempts: global, per source address, and per name at an address.

Guessing must cost the guesser, never the user being guessed at:
- every source address has a token bucket of attempts, so one address cannot spray names;
- all addresses together share a global bucket, so many addresses cannot spray a full
  scrypt hash each without bound — except for a name signing in from an address where it
  signed in before, so a spray never locks a known user out;
- repeated failures lock one name out at one address only: someone elsewhere failing as
  `alice` does not stop alice.

Pure bookkeeping, with times passed in; every map is bounded.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["SignInLimiter", "SignInLimits"]

_MAX_TRACKED = 10_000
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class SignInLimits:
    #: Failures of one name from one address before that pair is locked out for a while.
    max_failed_logins: int = 5
    lockout_seconds: float = 300.0
    per_address_per_second: float = 0.2
    per_address_burst: int = 10
    global_per_second: float = 5.0
    global_burst: int = 50
    #: How long a successful (name, address) pair stays exempt from the global bucket.
    known_for_seconds: float = 30 * 86400.0


@dataclass(slots=True)
class _Bucket:
    """GCRA: the theoretical arrival time of the next attempt."""

    rate: float
    burst: int
    tat: float = 0.0

    def wait(self, now: float) -> float:
        """Seconds until an attempt is allowed; 0 means take it now (and it is taken)."""
        interval = 1.0 / self.rate
        early = max(self.tat, now) - now - (self.burst - 1) * interval
        if early > 0:
            return early
        self.tat = max(self.tat, now) + interval
        return 0.0


def _bounded_put(table: OrderedDict[str, _V], key: str, value: _V) -> None:
    """Insert as the newest entry, dropping the oldest past the bound."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > _MAX_TRACKED:
        table.popitem(last=False)


@dataclass
class SignInLimiter:
    limits: SignInLimits = field(default_factory=SignInLimits)
    _global: _Bucket = field(init=False)
    _addresses: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)
    _failures: OrderedDict[str, list[float]] = field(default_factory=OrderedDict)
    _known: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self._global = _Bucket(self.limits.global_per_second, self.limits.global_burst)

    @staticmethod
    def _pair(username: str, address: str) -> str:
        return f"{address}\0{username}"

    def refusal(self, username: str, address: str, now: float) -> str | None:
        """Why this attempt may not check a password now, or None (the attempt is counted)."""
        pair = self._pair(username, address)
        if self._locked(pair, now):
            return "too many failed attempts for this name; try again later"
        bucket = self._addresses.get(address)
        if bucket is None:
            bucket = _Bucket(self.limits.per_address_per_second, self.limits.per_address_burst)
        wait = bucket.wait(now)
        _bounded_put(self._addresses, address, bucket)
        if wait:
            return f"too many sign-in attempts from your address; try again in {wait:.0f}s"
        known = self._known.get(pair)
        if known is not None and now - known < self.limits.known_for_seconds:
            return None
        wait = self._global.wait(now)
        if wait:
            return f"too many sign-in attempts right now; try again in {wait:.0f}s"
        return None

    def _locked(self, pair: str, now: float) -> bool:
        recent = [t for t in self._failures.get(pair, []) if now - t < self.limits.lockout_seconds]
        if recent:
            self._failures[pair] = recent
        else:
            self._failures.pop(pair, None)
        return len(recent) >= self.limits.max_failed_logins

    def failed(self, username: str, address: str, now: float) -> None:
        pair = self._pair(username, address)
        times = self._failures.get(pair, [])
        times.append(now)
        _bounded_put(self._failures, pair, times[-self.limits.max_failed_logins :])

    def succeeded(self, username: str, address: str, now: float) -> None:
        pair = self._pair(username, address)
        self._failures.pop(pair, None)
        _bounded_put(self._known, pair, now)
