"""The stream preamble tells the agent where to dial before any user byte arrives."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kuberde.mux.preamble import (
    MAX_PREAMBLE_SIZE,
    Preamble,
    PreambleError,
    PreambleReader,
    encode_preamble,
)

PREAMBLES = st.builds(
    Preamble,
    port=st.none() | st.integers(min_value=1, max_value=65535),
    kind=st.sampled_from(["ssh", "tcp", "port-forward", "http"]),
    user=st.text(max_size=60),
)


def framed(body: bytes) -> bytes:
    return struct.pack(">H", len(body)) + body


def framed_json(fields: Any) -> bytes:
    return framed(json.dumps(fields).encode())


def read_whole(data: bytes) -> tuple[Preamble, bytes]:
    result = PreambleReader().feed(data)
    assert result is not None
    return result


def test_wire_format_is_a_big_endian_length_then_utf8_json() -> None:
    wire = encode_preamble(Preamble(port=22, kind="ssh", user="alice"))
    (size,) = struct.unpack(">H", wire[:2])
    assert size == len(wire) - 2
    assert json.loads(wire[2:].decode()) == {"port": 22, "kind": "ssh", "user": "alice"}


def test_the_documented_example_decodes() -> None:
    body = b'{"port": 22, "kind": "ssh", "user": "alice"}'
    assert read_whole(framed(body)) == (Preamble(port=22, kind="ssh", user="alice"), b"")


def test_a_null_port_means_the_local_target() -> None:
    assert read_whole(framed_json({"port": None, "kind": "tcp", "user": "bob"}))[0].port is None


def test_missing_optional_fields_take_their_defaults() -> None:
    assert read_whole(framed_json({"port": 5432}))[0] == Preamble(port=5432, kind="tcp", user="")


def test_unknown_extra_fields_are_ignored() -> None:
    preamble, _ = read_whole(framed_json({"port": 80, "kind": "http", "user": "c", "x": [1]}))
    assert preamble == Preamble(port=80, kind="http", user="c")


@settings(max_examples=200, deadline=None)
@given(preamble=PREAMBLES, rest=st.binary(max_size=100))
def test_round_trip_returns_the_preamble_and_the_bytes_after_it(
    preamble: Preamble, rest: bytes
) -> None:
    assert read_whole(encode_preamble(preamble) + rest) == (preamble, rest)


@settings(max_examples=100, deadline=None)
@given(preamble=PREAMBLES, rest=st.binary(max_size=40))
def test_byte_by_byte_feeding_completes_exactly_at_the_last_preamble_byte(
    preamble: Preamble, rest: bytes
) -> None:
    wire = encode_preamble(preamble)
    reader = PreambleReader()
    for index in range(len(wire) - 1):
        assert reader.feed(wire[index : index + 1]) is None
    assert reader.feed(wire[-1:] + rest) == (preamble, rest)


@settings(max_examples=100, deadline=None)
@given(
    preamble=PREAMBLES,
    rest=st.binary(max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=10),
)
def test_arbitrary_chunking_yields_the_preamble_once_and_keeps_every_user_byte(
    preamble: Preamble, rest: bytes, cuts: list[int]
) -> None:
    wire = encode_preamble(preamble) + rest
    points = sorted({min(cut, len(wire)) for cut in cuts} | {len(wire)})
    reader = PreambleReader()
    result: tuple[Preamble, bytes] | None = None
    user_bytes = b""
    start = 0
    for point in points:
        chunk = wire[start:point]
        start = point
        if result is not None:
            user_bytes += chunk
            continue
        result = reader.feed(chunk)
        if result is not None:
            user_bytes = result[1]
    assert result is not None
    assert result[0] == preamble
    assert user_bytes == rest


@pytest.mark.parametrize("size", [0, 1, 2, 10])
def test_truncated_input_waits_for_more(size: int) -> None:
    wire = encode_preamble(Preamble(port=22, kind="ssh", user="alice"))
    assert PreambleReader().feed(wire[:size]) is None


def test_a_truncated_preamble_completes_when_the_rest_arrives() -> None:
    wire = encode_preamble(Preamble(port=8080, kind="http", user="d")) + b"GET /"
    reader = PreambleReader()
    assert reader.feed(wire[:1]) is None
    assert reader.feed(wire[1:9]) is None
    assert reader.feed(wire[9:]) == (Preamble(port=8080, kind="http", user="d"), b"GET /")


def test_a_body_of_exactly_the_maximum_size_is_accepted() -> None:
    template = {"port": 22, "kind": "ssh", "user": ""}
    padding = MAX_PREAMBLE_SIZE - len(json.dumps(template).encode())
    body = json.dumps({**template, "user": "u" * padding}).encode()
    assert len(body) == MAX_PREAMBLE_SIZE
    assert read_whole(framed(body))[0].user == "u" * padding


def test_an_oversize_length_is_refused_before_the_body_arrives() -> None:
    with pytest.raises(PreambleError, match="exceeds"):
        PreambleReader().feed(struct.pack(">H", MAX_PREAMBLE_SIZE + 1))


def test_the_largest_length_field_is_refused() -> None:
    with pytest.raises(PreambleError, match="exceeds"):
        PreambleReader().feed(b"\xff\xff")


def test_encoding_refuses_an_oversize_preamble() -> None:
    with pytest.raises(PreambleError, match="exceeds"):
        encode_preamble(Preamble(port=22, kind="ssh", user="x" * MAX_PREAMBLE_SIZE))


@pytest.mark.parametrize("body", [b"not json", b"{", b"\xff\xfe{}", b"", b"{'port': 22}"])
def test_non_json_is_refused(body: bytes) -> None:
    with pytest.raises(PreambleError, match="not UTF-8 JSON"):
        PreambleReader().feed(framed(body))


@pytest.mark.parametrize("body", [b'[22, "ssh"]', b"22", b'"ssh"', b"null", b"true"])
def test_json_that_is_not_an_object_is_refused(body: bytes) -> None:
    with pytest.raises(PreambleError, match="JSON object"):
        PreambleReader().feed(framed(body))


@pytest.mark.parametrize("port", [0, -1, 65536, 70000, "22", True, False, 22.0, [22], {}])
def test_a_bad_port_is_refused(port: object) -> None:
    with pytest.raises(PreambleError, match="not a TCP port"):
        PreambleReader().feed(framed_json({"port": port, "kind": "tcp", "user": "a"}))


@pytest.mark.parametrize("port", [1, 22, 65535])
def test_port_bounds_are_inclusive(port: int) -> None:
    assert read_whole(framed_json({"port": port, "kind": "tcp"}))[0].port == port


@pytest.mark.parametrize("kind", ["ftp", "SSH", "", None, 1])
def test_an_unknown_kind_is_refused(kind: object) -> None:
    with pytest.raises(PreambleError, match="kind"):
        PreambleReader().feed(framed_json({"port": 22, "kind": kind, "user": "a"}))


@pytest.mark.parametrize("user", [None, 7, ["alice"]])
def test_a_user_that_is_not_a_string_is_refused(user: object) -> None:
    with pytest.raises(PreambleError, match="user"):
        PreambleReader().feed(framed_json({"port": 22, "kind": "ssh", "user": user}))


def test_bytes_after_the_preamble_are_returned_untouched() -> None:
    user_bytes = b"SSH-2.0-OpenSSH_9.6\r\n" + bytes(range(256))
    wire = encode_preamble(Preamble(port=None, kind="ssh", user="e")) + user_bytes
    assert read_whole(wire) == (Preamble(port=None, kind="ssh", user="e"), user_bytes)
