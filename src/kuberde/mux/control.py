"""Control frames waiting to be sent: bounded and coalesced, with no I/O.

A peer that floods pings, or opens streams we refuse, while it stops reading must not make
us queue one reply per frame it sent (DESIGN.md §10). So replies merge instead of queueing:
one pong answers the latest ping, window updates for one stream add up into one frame, and
refusals are capped. A peer that keeps running into a bound gets a protocol error.
"""

from __future__ import annotations

from dataclasses import dataclass

from kuberde.mux.frame import HEADER_SIZE, Flag, FrameType, GoAwayCode, ProtocolError, encode_header

__all__ = ["ControlLimits", "ControlQueue"]


@dataclass(frozen=True, slots=True)
class ControlLimits:
    #: Pings answered by a later pong before the earlier one could be sent. A live peer
    #: pings every few seconds; thousands between two of our writes is a flood.
    max_coalesced_pings: int = 1024
    #: Refusals (RST) of streams the peer opened, queued and not yet sent.
    max_pending_refusals: int = 1024
    #: Our own pings in flight (keep-alive and `Session.ping` callers).
    max_pending_pings: int = 64


class ControlQueue:
    """Pending control frames; `take` drains them in order within a message budget.

    Order on the wire: pong, window updates (stream opens among them), resets, our pings,
    then go-away, so a go-away never overtakes the frames queued before it.
    """

    __slots__ = (
        "_coalesced_pings",
        "_go_away",
        "_limits",
        "_pings",
        "_pong",
        "_refusals",
        "_resets",
        "_window_updates",
    )

    def __init__(self, limits: ControlLimits | None = None) -> None:
        self._limits = limits or ControlLimits()
        self._pong: int | None = None
        self._coalesced_pings = 0
        #: stream id -> (flags, summed delta)
        self._window_updates: dict[int, tuple[Flag, int]] = {}
        #: stream id -> (the whole RST frame, whether it refuses a stream the peer opened)
        self._resets: dict[int, tuple[bytes, bool]] = {}
        self._refusals = 0
        self._pings: list[int] = []
        self._go_away: GoAwayCode | None = None

    def __bool__(self) -> bool:
        return bool(
            self._pong is not None
            or self._window_updates
            or self._resets
            or self._pings
            or self._go_away is not None
        )

    @property
    def frame_count(self) -> int:
        return (
            (self._pong is not None)
            + len(self._window_updates)
            + len(self._resets)
            + len(self._pings)
            + (self._go_away is not None)
        )

    def pong(self, opaque: int) -> None:
        """Answer a ping; an unsent answer to an earlier ping is replaced."""
        if self._pong is not None:
            self._coalesced_pings += 1
            if self._coalesced_pings > self._limits.max_coalesced_pings:
                raise ProtocolError(
                    f"ping flood: over {self._limits.max_coalesced_pings} pings between two writes"
                )
        self._pong = opaque

    def ping(self, opaque: int) -> None:
        """One of our own pings; callers are ours, so going over the bound is a bug."""
        if len(self._pings) >= self._limits.max_pending_pings:
            raise OverflowError(f"over {self._limits.max_pending_pings} pings in flight")
        self._pings.append(opaque)

    def window_update(self, stream_id: int, flags: Flag, delta: int) -> None:
        """Grant `delta` more bytes to a stream; merges with an unsent update for it."""
        pending = self._window_updates.get(stream_id)
        if pending is not None:
            flags |= pending[0]
            delta += pending[1]
        self._window_updates[stream_id] = (flags, min(delta, 0xFFFFFFFF))

    def reset(self, stream_id: int, flags: Flag, reason: bytes) -> None:
        """Reset one of our streams, saying why; one reset per stream is ever sent."""
        if stream_id not in self._resets:
            header = encode_header(FrameType.DATA, flags | Flag.RST, stream_id, len(reason))
            self._resets[stream_id] = (header + reason, False)

    def refuse(self, stream_id: int) -> None:
        """Refuse a stream the peer opened; too many unsent refusals is a protocol error."""
        if stream_id in self._resets:
            return
        if self._refusals >= self._limits.max_pending_refusals:
            raise ProtocolError(
                f"over {self._limits.max_pending_refusals} refused streams not yet answered"
            )
        self._refusals += 1
        refusal = encode_header(FrameType.WINDOW_UPDATE, Flag.RST, stream_id, 0)
        self._resets[stream_id] = (refusal, True)

    def go_away(self, code: GoAwayCode) -> None:
        """The first go-away wins, except that a protocol error overrides a normal one."""
        if self._go_away is None or code is GoAwayCode.PROTOCOL_ERROR:
            self._go_away = code

    def take(self, budget: int) -> list[bytes]:
        """Frames in wire order up to `budget` bytes (always at least one, if any is queued)."""
        frames: list[bytes] = []
        size = 0

        def room(frame_size: int) -> bool:
            return not frames or size + frame_size <= budget

        if self._pong is not None and room(HEADER_SIZE):
            frames.append(encode_header(FrameType.PING, Flag.ACK, 0, self._pong))
            size += HEADER_SIZE
            self._pong = None
            self._coalesced_pings = 0
        while self._window_updates and room(HEADER_SIZE):
            stream_id = next(iter(self._window_updates))
            flags, delta = self._window_updates.pop(stream_id)
            frames.append(encode_header(FrameType.WINDOW_UPDATE, flags, stream_id, delta))
            size += HEADER_SIZE
        while self._resets:
            stream_id = next(iter(self._resets))
            frame, refusal = self._resets[stream_id]
            if not room(len(frame)):
                break
            del self._resets[stream_id]
            self._refusals -= refusal
            frames.append(frame)
            size += len(frame)
        while self._pings and room(HEADER_SIZE):
            frames.append(encode_header(FrameType.PING, Flag.SYN, 0, self._pings.pop(0)))
            size += HEADER_SIZE
        if (
            self._go_away is not None
            and not self._window_updates
            and not self._resets
            and not self._pings
            and room(HEADER_SIZE)
        ):
            frames.append(encode_header(FrameType.GO_AWAY, Flag.NONE, 0, self._go_away))
            self._go_away = None
        return frames
