"""Reconnect delays: exponential backoff with full jitter.

Full jitter (a uniform draw between 0 and the current ceiling) spreads out the thousand
agents that all lose the gateway at the same moment when it restarts, and keeps every delay
under a known bound (0.5 s doubling to 30 s), so reconnect time after an outage is bounded.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


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
        return min(self.cap, self.base * 2.0**self._attempt)

    def next_delay(self) -> float:
        ceiling = self.ceiling
        if ceiling < self.cap:
            self._attempt += 1
        return self._rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        self._attempt = 0

    def session_ended(self, lasted: float) -> None:
        """A session that stayed up `stable_after` seconds proves the path works: start over.

        A shorter one (for example the gateway accepting and at once dropping us) keeps
        growing the delay, so a flapping gateway is not hammered.
        """
        if lasted >= self.stable_after:
            self.reset()
