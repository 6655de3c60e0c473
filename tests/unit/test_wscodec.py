"""The lean WebSocket client codec (RFC 6455) used by `kuberde connect`."""

from __future__ import annotations

import random
import struct
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kuberde.cli import wscodec
from kuberde.cli.wscodec import BINARY, CLOSE, PING, TEXT, FrameReader, Message, WebSocketError


def server_frame(opcode: int, payload: bytes, *, final: bool = True) -> bytes:
    """An unmasked frame as a server sends it."""
    first = (0x80 if final else 0) | opcode
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", first, size) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", first, 126, size) + payload
    return struct.pack("!BBQ", first, 127, size) + payload


def unmask_client_frame(frame: bytes) -> tuple[int, bytes]:
    """Decode one masked client frame (what a server does)."""
    assert frame[0] & 0x80, "client frames are final"
    assert frame[1] & 0x80, "client frames are masked"
    size, offset = frame[1] & 0x7F, 2
    if size == 126:
        (size,) = struct.unpack_from("!H", frame, 2)
        offset = 4
    elif size == 127:
        (size,) = struct.unpack_from("!Q", frame, 2)
        offset = 10
    key = frame[offset : offset + 4]
    payload = frame[offset + 4 :]
    assert len(payload) == size
    return frame[0] & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(payload))


#: Payloads on both sides of the 16-bit length field's limit. Their bytes come from a seeded
#: generator: drawing 65 kB byte by byte made hypothesis the slowest part of the unit tier,
#: and the sizes, not the contents, are what these cases are about.
AROUND_THE_16_BIT_LENGTH = st.builds(
    lambda size, seed: random.Random(seed).randbytes(size),
    st.integers(65_530, 65_540),
    st.integers(0, 2**32),
)


def test_accept_matches_the_rfc_example() -> None:
    assert wscodec.accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def byte_wise_xor(key: bytes, data: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


@given(st.binary(min_size=4, max_size=4), st.binary(max_size=70_000))
def test_mask_is_the_byte_wise_xor(key: bytes, data: bytes) -> None:
    assert wscodec.mask(key, data) == byte_wise_xor(key, data)


@given(st.binary(min_size=4, max_size=4), st.binary(max_size=3_000))
def test_the_integer_fallback_is_the_byte_wise_xor_too(key: bytes, data: bytes) -> None:
    masked = bytearray(data)
    wscodec._mask_with_integers(key, masked)
    assert masked == byte_wise_xor(key, data)


def test_the_compiled_masker_is_found_without_importing_aiohttp() -> None:
    """aiohttp is installed here, so its C masker must be what `connect` uses (about seven times
    the integer fallback's speed), and loading it must not run aiohttp's package init."""
    probe = (
        "import sys; from kuberde.cli import wscodec; "
        "print(wscodec.in_place_masker() is not wscodec._mask_with_integers, "
        "'aiohttp' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["True", "False"]


@given(
    st.sampled_from([BINARY, TEXT, PING, CLOSE]),
    st.one_of(st.binary(max_size=300), AROUND_THE_16_BIT_LENGTH),
    st.binary(min_size=4, max_size=4),
)
def test_client_frames_decode_as_a_server_would(opcode: int, payload: bytes, key: bytes) -> None:
    assert unmask_client_frame(wscodec.encode_frame(opcode, payload, key)) == (opcode, payload)


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6), st.integers(1, 50))
def test_reader_reassembles_fragments_across_any_split(parts: list[bytes], step: int) -> None:
    wire = b"".join(
        server_frame(BINARY if i == 0 else 0, part, final=i == len(parts) - 1)
        for i, part in enumerate(parts)
    ) + server_frame(TEXT, b'{"event":"eof"}')
    reader = FrameReader(max_size=1 << 20)
    messages: list[Message] = []
    for start in range(0, len(wire), step):
        messages += reader.feed(wire[start : start + step])
    assert messages == [Message(BINARY, b"".join(parts)), Message(TEXT, b'{"event":"eof"}')]


def test_control_frames_come_out_in_the_middle_of_a_fragmented_message() -> None:
    reader = FrameReader(max_size=1024)
    wire = (
        server_frame(TEXT, b"he", final=False)
        + server_frame(PING, b"p")
        + server_frame(0, b"llo", final=True)
    )
    assert reader.feed(wire) == [Message(PING, b"p"), Message(TEXT, b"hello")]


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (b"\xc2\x00", 1002),  # reserved bit: no extension was agreed
        (b"\x82\x81abcdX", 1002),  # a masked server frame
        (server_frame(0, b"x"), 1002),  # a continuation with nothing to continue
        (server_frame(TEXT, b"a", final=False) + server_frame(BINARY, b"b"), 1002),
        (server_frame(PING, b"p", final=False), 1002),
        (server_frame(PING, b"p" * 126), 1002),
        (server_frame(0x3, b""), 1002),  # a reserved opcode
        (server_frame(BINARY, b"x" * 2000), 1009),
        (server_frame(TEXT, b"x" * 900, final=False) + server_frame(0, b"y" * 900), 1009),
    ],
)
def test_protocol_violations_are_refused_with_a_close_code(wire: bytes, code: int) -> None:
    with pytest.raises(WebSocketError) as caught:
        FrameReader(max_size=1024).feed(wire)
    assert caught.value.code == code


def test_oversized_frame_is_refused_before_its_body_arrives() -> None:
    with pytest.raises(WebSocketError):
        FrameReader(max_size=1024).feed(struct.pack("!BBQ", 0x82, 127, 1 << 40))


def test_upgrade_answer_parsing() -> None:
    key = wscodec.handshake_key()
    head = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
        f"Sec-WebSocket-Accept: {wscodec.accept_for(key)}\r\n\r\n"
    ).encode()
    assert wscodec.parse_upgrade(head[:-1]) is None
    upgrade = wscodec.parse_upgrade(head + b"\x81\x00")
    assert upgrade is not None and upgrade.accepted(key) and upgrade.rest == b"\x81\x00"
    assert not upgrade.accepted(wscodec.handshake_key())
    refused = wscodec.parse_upgrade(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}")
    assert refused is not None and refused.status == 401 and not refused.accepted(key)
    assert refused.headers["content-length"] == "2" and refused.rest == b"{}"


@pytest.mark.parametrize("answer", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n"])
def test_an_answer_that_is_not_http_is_an_error(answer: bytes) -> None:
    with pytest.raises(WebSocketError):
        wscodec.parse_upgrade(answer)


def test_an_endless_head_is_an_error() -> None:
    with pytest.raises(WebSocketError):
        wscodec.parse_upgrade(b"HTTP/1.1 101 x\r\n" + b"X: y\r\n" * 20_000)


def test_upgrade_request_carries_the_headers() -> None:
    request = wscodec.upgrade_request(
        "gw:80", "/connect/a?kind=ssh", "k==", [("Authorization", "B")]
    )
    assert request.startswith(b"GET /connect/a?kind=ssh HTTP/1.1\r\nHost: gw:80\r\n")
    assert b"\r\nSec-WebSocket-Key: k==\r\n" in request and b"\r\nAuthorization: B\r\n" in request
    assert request.endswith(b"\r\n\r\n")


@given(st.integers(1000, 4999), st.text(max_size=200))
def test_close_payload_round_trip(code: int, reason: str) -> None:
    parsed_code, parsed_reason = wscodec.parse_close(wscodec.close_payload(code, reason))
    assert parsed_code == code
    assert reason.encode()[:123].decode(errors="replace") == parsed_reason
    assert wscodec.parse_close(b"") == (None, "")
