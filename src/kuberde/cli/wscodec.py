"""The client side of RFC 6455, sans I/O: the upgrade request, its answer, and frames.

`kuberde connect` is on the critical path of every `ssh`; importing aiohttp costs more
than the whole connection should. This codec needs only the standard library, so the
ProxyCommand starts in tens of milliseconds. It speaks what the gateway needs: binary and
text messages (fragmented or not), ping/pong and close, no extensions.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from importlib.machinery import EXTENSION_SUFFIXES, ExtensionFileLoader
from importlib.util import find_spec, module_from_spec, spec_from_file_location

__all__ = [
    "BINARY",
    "CLOSE",
    "PING",
    "PONG",
    "TEXT",
    "FrameReader",
    "InPlaceMasker",
    "Message",
    "Upgrade",
    "WebSocketError",
    "accept_for",
    "close_payload",
    "encode_frame",
    "frame_head",
    "handshake_key",
    "in_place_masker",
    "mask",
    "parse_close",
    "parse_upgrade",
    "upgrade_request",
]

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA = frozenset({TEXT, BINARY})
_CONTROL = frozenset({CLOSE, PING, PONG})
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Past this the answer to the upgrade is not an HTTP head we want to read.
MAX_HEAD = 64 * 1024


class WebSocketError(Exception):
    """The peer broke RFC 6455 (or our size limit); `code` is the close code to send."""

    def __init__(self, message: str, code: int = 1002) -> None:
        super().__init__(message)
        self.code = code


def handshake_key() -> str:
    """A fresh `Sec-WebSocket-Key`: 16 random bytes, base64."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def accept_for(key: str) -> str:
    """The `Sec-WebSocket-Accept` a server must answer to `key` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def upgrade_request(host: str, target: str, key: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """The HTTP/1.1 GET that asks for the upgrade; `target` is path and query."""
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True)
class Upgrade:
    """The head of the server's answer; `rest` is what followed it in the same read."""

    status: int
    headers: dict[str, str]
    rest: bytes

    def accepted(self, key: str) -> bool:
        """A 101 with the headers RFC 6455 requires, answering our `key`."""
        return (
            self.status == 101
            and self.headers.get("upgrade", "").lower() == "websocket"
            and "upgrade" in self.headers.get("connection", "").lower()
            and self.headers.get("sec-websocket-accept") == accept_for(key)
        )


def parse_upgrade(buffer: bytes) -> Upgrade | None:
    """The answer's head once it is complete in `buffer`, else None (read more).

    Header names are lower-cased; a repeated header keeps its last value.
    """
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise WebSocketError("the answer to the upgrade has no end of headers")
        return None
    lines = buffer[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise WebSocketError(f"not an HTTP answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return Upgrade(int(parts[1]), headers, buffer[end + 4 :])


#: Masks a bytearray in place with a 4-byte key.
InPlaceMasker = Callable[[bytes, bytearray], None]


def _mask_with_integers(key: bytes, data: bytearray) -> None:
    """XOR `data` with the 4-byte `key` repeated, as whole big integers: one C loop per
    step instead of one Python step per byte (about 150 MB/s)."""
    size = len(data)
    pad = (key * (size // 4 + 1))[:size]
    data[:] = (int.from_bytes(data, "little") ^ int.from_bytes(pad, "little")).to_bytes(
        size, "little"
    )


@cache
def in_place_masker() -> InPlaceMasker:
    """aiohttp's compiled masker (GB/s) when it is installed, loaded from its file alone:
    importing it the usual way runs aiohttp's package init, which costs the ProxyCommand
    more start-up than its whole connection. Otherwise the integer fallback."""
    package = find_spec("aiohttp")
    name = "aiohttp._websocket.mask"
    for directory in (package and package.submodule_search_locations) or ():
        for suffix in EXTENSION_SUFFIXES:
            path = os.path.join(directory, "_websocket", f"mask{suffix}")
            if not os.path.exists(path):
                continue
            loader = ExtensionFileLoader(name, path)
            spec = spec_from_file_location(name, path, loader=loader)
            if spec is None:
                continue
            try:
                module = module_from_spec(spec)
                loader.exec_module(module)
            except ImportError:
                continue
            compiled = getattr(module, "_websocket_mask_cython", None)
            if callable(compiled):
                masker: InPlaceMasker = compiled
                return masker
    return _mask_with_integers


def mask(key: bytes, data: bytes | bytearray | memoryview) -> bytearray:
    """`data` XORed with the 4-byte `key` repeated (RFC 6455 §5.3), as a new buffer."""
    masked = bytearray(data)
    if masked:
        in_place_masker()(key, masked)
    return masked


def frame_head(opcode: int, size: int, key: bytes = b"") -> bytes:
    """The head of one final frame of `size` payload bytes: masked with the 4-byte `key`
    (what a client sends, RFC 6455 §5.3), or unmasked without one (a server's)."""
    bit = 0x80 if key else 0
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, bit | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, bit | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, bit | 127, size)
    return head + key


def encode_frame(opcode: int, payload: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """One final, masked frame (clients must mask every frame, RFC 6455 §5.3)."""
    return frame_head(opcode, len(payload), key) + mask(key, payload)


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's body: the code, then at most 123 bytes of reason."""
    return struct.pack("!H", code) + reason.encode("utf-8")[:123]


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """(code, reason) of a close frame; no code when the body is empty."""
    if len(payload) < 2:
        return None, ""
    (code,) = struct.unpack_from("!H", payload)
    return code, payload[2:].decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Message:
    opcode: int
    data: bytes


class FrameReader:
    """Turns the server's bytes into whole messages; control frames come out as they
    arrive, even in the middle of a fragmented message.

    A server must not mask (RFC 6455 §5.1); messages over `max_size` are refused (1009).
    """

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_opcode: int | None = None
        self._fragment_size = 0

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        messages: list[Message] = []
        while (frame := self._next_frame()) is not None:
            message = self._assemble(*frame)
            if message is not None:
                messages.append(message)
        return messages

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        first, second = buffer[0], buffer[1]
        if first & 0x70:
            raise WebSocketError("a frame with reserved bits set (no extension was agreed)")
        if second & 0x80:
            raise WebSocketError("the server masked a frame")
        size, offset = second & 0x7F, 2
        if size == 126:
            if len(buffer) < 4:
                return None
            (size,) = struct.unpack_from("!H", buffer, 2)
            offset = 4
        elif size == 127:
            if len(buffer) < 10:
                return None
            (size,) = struct.unpack_from("!Q", buffer, 2)
            offset = 10
        opcode = first & 0x0F
        if size > self._max_size:
            raise WebSocketError(f"a frame of {size} bytes is over the limit", 1009)
        if len(buffer) < offset + size:
            return None
        payload = bytes(buffer[offset : offset + size])
        del buffer[: offset + size]
        return bool(first & 0x80), opcode, payload

    def _assemble(self, final: bool, opcode: int, payload: bytes) -> Message | None:
        if opcode in _CONTROL:
            if not final or len(payload) > 125:
                raise WebSocketError("a fragmented or oversized control frame")
            return Message(opcode, payload)
        if opcode in _DATA:
            if self._fragment_opcode is not None:
                raise WebSocketError("a new message inside a fragmented one")
            if final:
                return Message(opcode, payload)
            self._fragment_opcode = opcode
        elif opcode != CONTINUATION or self._fragment_opcode is None:
            raise WebSocketError(f"unexpected opcode {opcode:#x}")
        self._fragment_size += len(payload)
        if self._fragment_size > self._max_size:
            raise WebSocketError("a message over the size limit", 1009)
        self._fragments.append(payload)
        if not final:
            return None
        message = Message(self._fragment_opcode, b"".join(self._fragments))
        self._fragments.clear()
        self._fragment_opcode = None
        self._fragment_size = 0
        return message
