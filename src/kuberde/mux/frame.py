"""yamux v0 frame codec, sans-I/O.

Every frame starts with a 12-byte big-endian header::

    version:u8  type:u8  flags:u16  stream_id:u32  length:u32

`length` is the payload size for DATA frames, the window delta for WINDOW_UPDATE, an opaque
value for PING and the error code for GO_AWAY. Only DATA frames carry a payload.

One KubeRDE extension: a DATA frame with the RST flag may carry a short UTF-8 reason, so a
peer learns *why* a stream was refused (a plain yamux peer would just see a reset).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

__all__ = [
    "HEADER_SIZE",
    "MAX_FRAME_PAYLOAD",
    "VERSION",
    "Flag",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "GoAwayCode",
    "ProtocolError",
    "encode_frame",
    "encode_header",
]

VERSION = 0
HEADER_SIZE = 12
#: Largest payload we accept in one DATA frame: the largest window a stream may have.
MAX_FRAME_PAYLOAD = 16 * 1024 * 1024

_HEADER = struct.Struct(">BBHII")
_MAX_STREAM_ID = 0xFFFFFFFF


class FrameType(IntEnum):
    DATA = 0
    WINDOW_UPDATE = 1
    PING = 2
    GO_AWAY = 3


class Flag(IntFlag):
    NONE = 0
    SYN = 1
    ACK = 2
    FIN = 4
    RST = 8


class GoAwayCode(IntEnum):
    NORMAL = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


#: Decoded types and flags by value: calling an enum per frame was a visible share of a
#: 1-byte round trip's CPU (`make bench`, rtt).
_TYPES = tuple(FrameType)
_FLAGS = tuple(Flag(value) for value in range(16))


class ProtocolError(Exception):
    """The peer sent bytes that are not valid yamux; the session must end with a go-away."""


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    flags: Flag
    stream_id: int
    length: int
    payload: bytes = b""


def encode_header(frame_type: FrameType, flags: Flag, stream_id: int, length: int) -> bytes:
    return _HEADER.pack(VERSION, frame_type, flags, stream_id, length)


def encode_frame(frame: Frame) -> bytes:
    if frame.type is FrameType.DATA and frame.length != len(frame.payload):
        raise ValueError("a DATA frame's length must equal its payload size")
    if frame.type is not FrameType.DATA and frame.payload:
        raise ValueError(f"a {frame.type.name} frame carries no payload")
    return encode_header(frame.type, frame.flags, frame.stream_id, frame.length) + frame.payload


def _validate(
    version: int, type_: int, flags: int, stream_id: int, length: int, max_payload: int
) -> Frame:
    if version != VERSION:
        raise ProtocolError(f"unsupported yamux version {version}")
    if type_ >= len(_TYPES):
        raise ProtocolError(f"unknown frame type {type_}")
    frame_type = _TYPES[type_]
    if flags >= len(_FLAGS):
        raise ProtocolError(f"unknown flags 0x{flags:x}")
    if frame_type in (FrameType.PING, FrameType.GO_AWAY) and stream_id != 0:
        raise ProtocolError(f"{frame_type.name} frame on stream {stream_id}")
    if frame_type in (FrameType.DATA, FrameType.WINDOW_UPDATE) and stream_id == 0:
        raise ProtocolError(f"{frame_type.name} frame on stream 0")
    if frame_type is FrameType.DATA and length > max_payload:
        raise ProtocolError(f"DATA frame of {length} bytes exceeds {max_payload}")
    return Frame(frame_type, _FLAGS[flags], stream_id, length)


class FrameDecoder:
    """Turns a byte stream, cut anywhere, into frames.

    Frames may span input chunks and one chunk may hold many frames, because the WebSocket
    underneath is treated as a plain byte stream.
    """

    __slots__ = ("_buffer", "_max_payload", "_pending")

    def __init__(self, max_payload: int = MAX_FRAME_PAYLOAD) -> None:
        """`max_payload` refuses oversized DATA headers before buffering their payload."""
        self._buffer = bytearray()
        self._pending: Frame | None = None
        self._max_payload = max_payload

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """Return every frame completed by `data`; raise ProtocolError on invalid input."""
        frames: list[Frame] = []
        if not self._buffer and self._pending is None:
            offset = self._parse(memoryview(data), frames)
            if offset < len(data):
                self._buffer += data[offset:]
            return frames
        self._buffer += data
        with memoryview(self._buffer) as view:
            offset = self._parse(view, frames)
        del self._buffer[:offset]
        return frames

    def _parse(self, view: memoryview, frames: list[Frame]) -> int:
        offset = 0
        size = len(view)
        while True:
            header = self._pending
            if header is None:
                if size - offset < HEADER_SIZE:
                    return offset
                version, type_, flags, stream_id, length = _HEADER.unpack_from(view, offset)
                header = _validate(version, type_, flags, stream_id, length, self._max_payload)
                offset += HEADER_SIZE
            if header.type is not FrameType.DATA or header.length == 0:
                frames.append(header)
                self._pending = None
                continue
            end = offset + header.length
            if end > size:
                self._pending = header
                return offset
            payload = bytes(view[offset:end])
            frames.append(Frame(header.type, header.flags, header.stream_id, end - offset, payload))
            self._pending = None
            offset = end
