"""Failed password attempts per username, to lock out guessing."""

from __future__ import annotations

from dataclasses import dataclass, field

_MAX_TRACKED_NAMES = 10_000


@dataclass
class FailedLogins:
    """Sliding-window failure counts per name; the map is pruned so it cannot grow unbounded."""

    limit: int
    window: float
    attempts: dict[str, list[float]] = field(default_factory=dict)

    def locked(self, username: str, now: float) -> bool:
        recent = [t for t in self.attempts.get(username, []) if now - t < self.window]
        if recent:
            self.attempts[username] = recent
        else:
            self.attempts.pop(username, None)
        return len(recent) >= self.limit

    def failed(self, username: str, now: float) -> None:
        if len(self.attempts) >= _MAX_TRACKED_NAMES:
            self.attempts = {
                name: times
                for name, times in self.attempts.items()
                if now - times[-1] < self.window
            }
        self.attempts.setdefault(username, []).append(now)
