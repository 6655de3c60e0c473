"""The yamux codec must turn any cut of a valid byte stream back into the same frames."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kuberde.mux.frame import (
    HEADER_SIZE,
    MAX_FRAME_PAYLOAD,
    VERSION,
    Flag,
    Frame,
    FrameDecoder,
    FrameType,
    GoAwayCode,
    ProtocolError,
    encode_frame,
    encode_header,
)

U32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
STREAM_IDS = st.integers(min_value=1, max_value=0xFFFFFFFF)
FLAGS = st.integers(min_value=0, max_value=0xF).map(Flag)


def raw_header(version: int, type_: int, flags: int, stream_id: int, length: int) -> bytes:
    return struct.pack(">BBHII", version, type_, flags, stream_id, length)


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    kind = draw(st.sampled_from(FrameType))
    flags = draw(FLAGS)
    if kind is FrameType.DATA:
        payload = draw(st.binary(max_size=300))
        return Frame(kind, flags, draw(STREAM_IDS), len(payload), payload)
    if kind is FrameType.WINDOW_UPDATE:
        return Frame(kind, flags, draw(STREAM_IDS), draw(U32))
    return Frame(kind, flags, 0, draw(U32))


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    chunks: list[bytes] = []
    start = 0
    for point in [*points, len(data)]:
        chunks.append(data[start:point])
        start = point
    return chunks


def decode_all(chunks: list[bytes]) -> list[Frame]:
    decoder = FrameDecoder()
    decoded: list[Frame] = []
    for chunk in chunks:
        decoded.extend(decoder.feed(chunk))
    assert decoder.buffered == 0
    return decoded


# ---- encoding --------------------------------------------------------------------------


def test_header_layout_is_big_endian_yamux_v0() -> None:
    header = encode_header(FrameType.WINDOW_UPDATE, Flag.SYN | Flag.ACK, 0x01020304, 0x0A0B0C0D)
    assert len(header) == HEADER_SIZE
    assert header == bytes([VERSION, 1, 0, 3, 1, 2, 3, 4, 0x0A, 0x0B, 0x0C, 0x0D])


def test_encode_frame_appends_the_data_payload() -> None:
    frame = Frame(FrameType.DATA, Flag.FIN, 7, 3, b"abc")
    assert encode_frame(frame) == raw_header(0, 0, 4, 7, 3) + b"abc"


@pytest.mark.parametrize(("length", "payload"), [(4, b"abc"), (2, b"abc"), (1, b"")])
def test_encode_frame_refuses_a_data_length_that_is_not_the_payload_size(
    length: int, payload: bytes
) -> None:
    with pytest.raises(ValueError, match="length"):
        encode_frame(Frame(FrameType.DATA, Flag.NONE, 1, length, payload))


@pytest.mark.parametrize(
    "frame",
    [
        Frame(FrameType.WINDOW_UPDATE, Flag.NONE, 1, 5, b"x"),
        Frame(FrameType.PING, Flag.SYN, 0, 1, b"junk"),
        Frame(FrameType.GO_AWAY, Flag.NONE, 0, GoAwayCode.NORMAL, b"bye"),
    ],
)
def test_encode_frame_refuses_a_payload_on_a_frame_type_without_one(frame: Frame) -> None:
    """Only DATA frames carry a payload; anything else would desynchronise the peer."""
    with pytest.raises(ValueError):
        encode_frame(frame)


# ---- round trip ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    sequence=st.lists(frames(), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=8000), max_size=30),
)
def test_any_frame_sequence_cut_anywhere_decodes_to_the_same_frames(
    sequence: list[Frame], cuts: list[int]
) -> None:
    wire = b"".join(encode_frame(frame) for frame in sequence)
    assert decode_all(split_at(wire, cuts)) == sequence


@settings(max_examples=50, deadline=None)
@given(sequence=st.lists(frames(), min_size=1, max_size=8))
def test_byte_by_byte_feeding_decodes_every_frame(sequence: list[Frame]) -> None:
    wire = b"".join(encode_frame(frame) for frame in sequence)
    assert decode_all([wire[i : i + 1] for i in range(len(wire))]) == sequence


def test_one_chunk_may_hold_many_frames() -> None:
    sequence = [
        Frame(FrameType.DATA, Flag.SYN, 1, 5, b"hello"),
        Frame(FrameType.WINDOW_UPDATE, Flag.ACK, 1, 1024),
        Frame(FrameType.PING, Flag.SYN, 0, 42),
        Frame(FrameType.DATA, Flag.FIN, 1, 0),
        Frame(FrameType.GO_AWAY, Flag.NONE, 0, GoAwayCode.PROTOCOL_ERROR),
    ]
    decoder = FrameDecoder()
    assert decoder.feed(b"".join(encode_frame(frame) for frame in sequence)) == sequence
    assert decoder.buffered == 0


def test_a_data_payload_spanning_many_chunks_is_reassembled() -> None:
    payload = bytes(range(256)) * 40
    following = Frame(FrameType.PING, Flag.ACK, 0, 9)
    wire = encode_frame(Frame(FrameType.DATA, Flag.NONE, 3, len(payload), payload))
    wire += encode_frame(following)
    decoder = FrameDecoder()
    assert decoder.feed(wire[:5]) == []
    assert decoder.feed(wire[5:HEADER_SIZE]) == []
    decoded: list[Frame] = []
    for start in range(HEADER_SIZE, len(wire), 97):
        decoded.extend(decoder.feed(wire[start : start + 97]))
    assert decoded == [Frame(FrameType.DATA, Flag.NONE, 3, len(payload), payload), following]
    assert decoder.buffered == 0


def test_a_partial_header_is_kept_until_the_rest_arrives() -> None:
    decoder = FrameDecoder()
    wire = encode_frame(Frame(FrameType.WINDOW_UPDATE, Flag.NONE, 5, 77))
    assert decoder.feed(wire[:11]) == []
    assert decoder.buffered == 11
    assert decoder.feed(wire[11:]) == [Frame(FrameType.WINDOW_UPDATE, Flag.NONE, 5, 77)]
    assert decoder.buffered == 0


@pytest.mark.parametrize("flags", [Flag.FIN, Flag.SYN, Flag.RST, Flag.SYN | Flag.FIN])
def test_zero_length_data_frames_are_delivered_without_waiting(flags: Flag) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(raw_header(0, 0, flags, 9, 0)) == [Frame(FrameType.DATA, flags, 9, 0)]
    assert decoder.buffered == 0


def test_empty_input_yields_nothing() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    assert decoder.buffered == 0


def test_a_data_frame_of_the_largest_allowed_size_is_accepted() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(raw_header(0, 0, 0, 1, MAX_FRAME_PAYLOAD)) == []
    payload = b"\x5a" * MAX_FRAME_PAYLOAD
    [frame] = decoder.feed(payload)
    assert frame.length == MAX_FRAME_PAYLOAD
    assert frame.payload == payload


def test_window_update_ping_and_go_away_lengths_are_not_payload_sizes() -> None:
    """Their length field is a delta, an opaque value or a code: no payload follows."""
    decoder = FrameDecoder()
    wire = raw_header(0, 1, 0, 1, 0xFFFFFFFF) + raw_header(0, 2, 1, 0, 0xFFFFFFFF)
    wire += raw_header(0, 3, 0, 0, 0xFFFFFFFF)
    assert [frame.length for frame in decoder.feed(wire)] == [0xFFFFFFFF] * 3
    assert decoder.buffered == 0


# ---- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (raw_header(1, 0, 0, 1, 0), "version"),
        (raw_header(0xFF, 2, 1, 0, 0), "version"),
        (raw_header(0, 4, 0, 1, 0), "unknown frame type"),
        (raw_header(0, 0xFF, 0, 1, 0), "unknown frame type"),
        (raw_header(0, 0, 0x10, 1, 0), "unknown flags"),
        (raw_header(0, 1, 0x8000, 1, 0), "unknown flags"),
        (raw_header(0, 2, 1, 1, 0), "PING frame on stream 1"),
        (raw_header(0, 3, 0, 7, 0), "GO_AWAY frame on stream 7"),
        (raw_header(0, 0, 0, 0, 0), "DATA frame on stream 0"),
        (raw_header(0, 1, 0, 0, 10), "WINDOW_UPDATE frame on stream 0"),
        (raw_header(0, 0, 0, 1, MAX_FRAME_PAYLOAD + 1), "exceeds"),
        (raw_header(0, 0, 0, 1, 0xFFFFFFFF), "exceeds"),
    ],
)
def test_invalid_headers_raise_protocol_error(header: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        FrameDecoder().feed(header)


@pytest.mark.parametrize("cut", [0, 3, 12, 13, 20])
def test_an_invalid_header_after_valid_frames_is_detected_wherever_it_is_cut(cut: int) -> None:
    wire = encode_frame(Frame(FrameType.DATA, Flag.SYN, 1, 4, b"ping"))
    wire += raw_header(0, 9, 0, 1, 0)
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match="unknown frame type 9"):
        decoder.feed(wire[:cut])
        decoder.feed(wire[cut:])
