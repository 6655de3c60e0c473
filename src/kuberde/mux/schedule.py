"""Which ready stream puts the next frame into a link message, and how many bytes it may.

Plain round robin with a whole message per turn made a new stream's SYN and first bytes,
or a keystroke, wait behind one message of bulk data per other busy stream on the
session (issue 11). This policy keeps two lanes, as fq_codel's sparse-flow rule does:

- a stream that becomes ready joins the *new* lane, which goes first, for one small turn
  (`SPARSE_QUANTUM`); what fits in it (a SYN and preamble, a keystroke, a short request)
  leaves in the next message whatever bulk waits;
- a stream with more to send than that moves to the *bulk* lane, served by deficit round
  robin: at most `quantum` bytes per turn, the rest of a turn cut short by the end of a
  message carried into the next one;
- while bulk waits, the new lane may fill at most half of a message, so a crowd of new
  streams slows bulk down but cannot stop it.

A stream stays in its lane until it has nothing left to send (or its window is shut), so
it cannot jump the queue by writing again. Pure bookkeeping, no I/O: the session asks
`pick` for the next turn and reports each frame with `served`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["SPARSE_QUANTUM", "FairScheduler"]

#: A new lane turn: a stream preamble, a keystroke or an HTTP request's head fit in one.
SPARSE_QUANTUM = 16 * 1024

K = TypeVar("K", bound=Hashable)


class FairScheduler(Generic[K]):
    """Ready streams (any hashable key) in a new lane and a bulk lane; see the module doc.

    Per message: `begin(room)`, then `pick()` and `served(...)` in turn until `pick`
    returns None. Byte counts given to `served` are payloads; each frame also costs
    `overhead` bytes (its header) of the message's room.
    """

    __slots__ = (
        "_bulk",
        "_deficit",
        "_new",
        "_new_room",
        "_overhead",
        "_picked",
        "_quantum",
        "_room",
        "_sparse_quantum",
    )

    def __init__(
        self, quantum: int, *, overhead: int, sparse_quantum: int = SPARSE_QUANTUM
    ) -> None:
        if quantum < 1 or overhead < 1:
            raise ValueError("quantum and overhead must be positive")
        self._quantum = quantum
        self._sparse_quantum = min(sparse_quantum, quantum)
        self._overhead = overhead
        self._new: deque[K] = deque()
        self._bulk: deque[K] = deque()
        #: Every queued key -> payload bytes left in its current turn.
        self._deficit: dict[K, int] = {}
        self._room = 0
        self._new_room = 0
        #: The lane of the key `pick` returned last, until `served` settles its turn.
        self._picked: deque[K] | None = None

    def __bool__(self) -> bool:
        return bool(self._deficit)

    def __len__(self) -> int:
        return len(self._deficit)

    def __contains__(self, key: K) -> bool:
        return key in self._deficit

    def add(self, key: K) -> None:
        """`key` has something to send; a key already queued keeps its place."""
        if key not in self._deficit:
            self._deficit[key] = self._sparse_quantum
            self._new.append(key)

    def begin(self, room: int) -> None:
        """Start a message with `room` bytes left for frames."""
        self._room = room
        self._new_room = room // 2

    def pick(self) -> tuple[K, int] | None:
        """The key whose turn it is and the most payload bytes it may put in this frame,
        or None when the message is full or nothing is ready."""
        room = self._room - self._overhead
        if room <= 0:
            return None
        if self._new and (not self._bulk or self._new_room > self._overhead):
            lane = self._new
            if self._bulk:
                room = min(room, self._new_room - self._overhead)
        elif self._bulk:
            lane = self._bulk
        else:
            return None
        self._picked = lane
        key = lane[0]
        return key, min(self._deficit[key], room)

    def served(self, key: K, sent: int | None, more: bool) -> None:
        """Settle the turn `pick` gave `key`: `sent` payload bytes in one frame (None: it
        had no frame to send), and whether it still has something to send."""
        lane = self._picked
        if lane is None or lane[0] != key:
            raise RuntimeError("served() must follow pick() for the same key")
        self._picked = None
        if sent is not None:
            cost = sent + self._overhead
            self._room -= cost
            if lane is self._new:
                self._new_room -= cost
        left = self._deficit[key] - (sent or 0)
        if not more:
            lane.popleft()
            del self._deficit[key]
        elif left <= 0 or not sent:
            lane.popleft()
            self._bulk.append(key)
            self._deficit[key] = self._quantum
        else:
            self._deficit[key] = left
