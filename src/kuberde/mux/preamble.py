"""The stream preamble: the first bytes the gateway sends on every stream it opens.

It tells the agent which local port to dial *before* any user byte arrives, so
server-first protocols (SSH banners, MySQL, SMTP, VNC) work. Wire format: a 2-byte
big-endian length N, then N bytes of a UTF-8 JSON object.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Literal, Protocol, cast

__all__ = [
    "MAX_PREAMBLE_SIZE",
    "Preamble",
    "PreambleError",
    "PreambleReader",
    "encode_preamble",
    "read_preamble",
]

ConnectionKind = Literal["ssh", "tcp", "port-forward", "http"]
KINDS: frozenset[str] = frozenset({"ssh", "tcp", "port-forward", "http"})
MAX_PREAMBLE_SIZE = 4096
_LENGTH = struct.Struct(">H")


class PreambleError(ValueError):
    """A preamble that is truncated, too large or not the JSON object we expect."""


@dataclass(frozen=True, slots=True)
class Preamble:
    port: int | None
    kind: ConnectionKind
    user: str


def encode_preamble(preamble: Preamble) -> bytes:
    body = json.dumps(
        {"port": preamble.port, "kind": preamble.kind, "user": preamble.user},
        separators=(",", ":"),
    ).encode()
    if len(body) > MAX_PREAMBLE_SIZE:
        raise PreambleError(f"preamble of {len(body)} bytes exceeds {MAX_PREAMBLE_SIZE}")
    return _LENGTH.pack(len(body)) + body


def _decode_body(body: bytes) -> Preamble:
    try:
        fields = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PreambleError(f"preamble is not UTF-8 JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise PreambleError("preamble must be a JSON object")
    port = fields.get("port")
    if port is not None and (
        not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536
    ):
        raise PreambleError(f"preamble port {port!r} is not a TCP port")
    kind = fields.get("kind", "tcp")
    if kind not in KINDS:
        raise PreambleError(f"preamble kind {kind!r} is not one of {sorted(KINDS)}")
    user = fields.get("user", "")
    if not isinstance(user, str):
        raise PreambleError("preamble user must be a string")
    return Preamble(port=port, kind=cast(ConnectionKind, kind), user=user)


class PreambleReader:
    """Accumulates stream bytes until a whole preamble has arrived.

    `feed` returns `(preamble, rest)` once complete — `rest` being the user's bytes that
    followed it — and `None` while more bytes are needed.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> tuple[Preamble, bytes] | None:
        self._buffer += data
        if len(self._buffer) < _LENGTH.size:
            return None
        (size,) = _LENGTH.unpack_from(self._buffer)
        if size > MAX_PREAMBLE_SIZE:
            raise PreambleError(f"preamble of {size} bytes exceeds {MAX_PREAMBLE_SIZE}")
        end = _LENGTH.size + size
        if len(self._buffer) < end:
            return None
        preamble = _decode_body(self._buffer[_LENGTH.size : end])
        rest, self._buffer = self._buffer[end:], b""
        return preamble, rest


class _Readable(Protocol):
    async def read(self) -> bytes: ...


async def read_preamble(stream: _Readable) -> tuple[Preamble, bytes]:
    """Read a stream until its preamble is whole: the preamble and the bytes after it."""
    reader = PreambleReader()
    while True:
        data = await stream.read()
        if not data:
            raise PreambleError("the stream ended before its preamble")
        found = reader.feed(data)
        if found is not None:
            return found
