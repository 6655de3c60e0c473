"""Retry delays: exponential backoff with full jitter, for the agent's reconnects and the
lifecycle engine's retries of a failed reconcile.

Full jitter (a uniform draw between 0 and the current ceiling) spreads out the thousand
agents that all lose the gateway at the same moment when it restarts (or the reconciles that
all failed during one API outage), and keeps every delay under a known bound (0.5 s doubling
to 30 s by default), so the time to recover after an outage is bounded.
"""

from __future__ import annotations

import random

__all__ = ["Backoff", "ceiling", "full_jitter"]

#: Beyond this many doublings every ceiling is the cap anyway; the exponent stays a float.
_MAX_DOUBLINGS = 64


def ceiling(attempt: int, *, base: float, cap: float) -> float:
    """The largest delay after `attempt` earlier failures: `base` doubled per failure, at most
    `cap`."""
    return min(cap, base * 2.0 ** min(max(attempt, 0), _MAX_DOUBLINGS))


def full_jitter(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """A delay drawn uniformly between 0 and the ceiling after `attempt` earlier failures."""
    return rng.uniform(0.0, ceiling(attempt, base=base, cap=cap))


class Backoff:
    """Delays for successive failed attempts; `reset` after a connection that held."""

    def __init__(
        self,
        *,
        base: float = 0.5,
        cap: float = 30.0,
        stable_after: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < base <= cap:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.stable_after = stable_after
        self._rng = rng or random.Random()
        self._attempt = 0

    @property
    def ceiling(self) -> float:
        """The largest delay the next call to `next_delay` can return."""
        return ceiling(self._attempt, base=self.base, cap=self.cap)

    def next_delay(self) -> float:
        delay = full_jitter(self._attempt, base=self.base, cap=self.cap, rng=self._rng)
        if self.ceiling < self.cap:
            self._attempt += 1
        return delay

    def reset(self) -> None:
        self._attempt = 0

    def session_ended(self, lasted: float) -> None:
        """A session that stayed up `stable_after` seconds proves the path works: start over.

        A shorter one (for example the gateway accepting and at once dropping us) keeps
        growing the delay, so a flapping gateway is not hammered.
        """
        if lasted >= self.stable_after:
            self.reset()
