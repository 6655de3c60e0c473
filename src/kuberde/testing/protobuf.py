"""Kubernetes' protobuf encoding, read into the JSON a client would have sent instead.

kubectl's typed clients (`kubectl create secret`, `kubectl auth can-i`) send protobuf, and on
415 Unsupported Media Type they fail rather than retry with JSON (checked with kubectl 1.32).
A real API server reads protobuf for every built-in kind; this reads it for the kinds those
commands send. The body is Kubernetes' envelope (`k8s\\0`, then `runtime.Unknown` with the
apiVersion, kind and the object's own message); the messages' field numbers are those of
Kubernetes' `generated.proto` files.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from typing import Any, Union

__all__ = ["MAGIC", "ProtobufError", "decode"]

MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    """A body that is not a protobuf object this server reads."""


# A field is a scalar kind, a message schema, ("map", value kind) or ("repeated", kind).
Kind = Union[str, "Schema", tuple[str, Any]]
Schema = Mapping[int, tuple[str, Kind]]

OBJECT_META: Schema = {
    1: ("name", "string"),
    2: ("generateName", "string"),
    3: ("namespace", "string"),
    11: ("labels", ("map", "string")),
    12: ("annotations", ("map", "string")),
    14: ("finalizers", ("repeated", "string")),
}
RESOURCE_ATTRIBUTES: Schema = {
    1: ("namespace", "string"),
    2: ("verb", "string"),
    3: ("group", "string"),
    4: ("version", "string"),
    5: ("resource", "string"),
    6: ("subresource", "string"),
    7: ("name", "string"),
}
NON_RESOURCE_ATTRIBUTES: Schema = {1: ("path", "string"), 2: ("verb", "string")}
_REVIEW_SPEC: Schema = {
    1: ("resourceAttributes", RESOURCE_ATTRIBUTES),
    2: ("nonResourceAttributes", NON_RESOURCE_ATTRIBUTES),
    3: ("user", "string"),
    4: ("groups", ("repeated", "string")),
    6: ("uid", "string"),
}
#: (apiVersion, kind) -> the object's schema.
SCHEMAS: Mapping[tuple[str, str], Schema] = {
    ("v1", "Secret"): {
        1: ("metadata", OBJECT_META),
        2: ("data", ("map", "bytes")),
        3: ("type", "string"),
        4: ("stringData", ("map", "string")),
        5: ("immutable", "bool"),
    },
    ("v1", "ConfigMap"): {
        1: ("metadata", OBJECT_META),
        2: ("data", ("map", "string")),
        3: ("binaryData", ("map", "bytes")),
        4: ("immutable", "bool"),
    },
    ("v1", "Namespace"): {1: ("metadata", OBJECT_META)},
    ("v1", "ServiceAccount"): {1: ("metadata", OBJECT_META)},
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): {
        1: ("metadata", OBJECT_META),
        2: ("spec", _REVIEW_SPEC),
    },
    ("authorization.k8s.io/v1", "SubjectAccessReview"): {
        1: ("metadata", OBJECT_META),
        2: ("spec", _REVIEW_SPEC),
    },
}
_TYPE_META: Schema = {1: ("apiVersion", "string"), 2: ("kind", "string")}
_UNKNOWN: Schema = {1: ("typeMeta", _TYPE_META), 2: ("raw", "bytes")}


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ProtobufError("a truncated varint")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        shift += 7
        if not byte & 0x80:
            return value, at


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) pairs: an int for varints, bytes for length-delimited fields."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
            yield number, value
        elif wire == 2:
            length, at = _varint(data, at)
            if at + length > len(data):
                raise ProtobufError("a truncated field")
            yield number, data[at : at + length]
            at += length
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")


def _scalar(kind: str, value: int | bytes) -> Any:
    if kind == "bool":
        return bool(value)
    if not isinstance(value, bytes):
        raise ProtobufError(f"a {kind} field that is not length-delimited")
    if kind == "bytes":
        return base64.b64encode(value).decode()
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise ProtobufError("a string that is not UTF-8") from None


def _value(kind: Kind, value: int | bytes) -> Any:
    if isinstance(kind, str):
        return _scalar(kind, value)
    if isinstance(kind, tuple):
        raise ProtobufError("a nested collection")
    if not isinstance(value, bytes):
        raise ProtobufError("a message that is not length-delimited")
    return _message(kind, value)


def _message(schema: Schema, data: bytes) -> dict[str, Any]:
    """The message as JSON would carry it: empty fields left out, as `omitempty` does."""
    result: dict[str, Any] = {}
    for number, value in _fields(data):
        if number not in schema:
            continue
        name, kind = schema[number]
        if isinstance(kind, tuple) and kind[0] == "map":
            if not isinstance(value, bytes):
                raise ProtobufError("a map entry that is not length-delimited")
            entry = _message({1: ("key", "string"), 2: ("value", kind[1])}, value)
            result.setdefault(name, {})[entry.get("key", "")] = entry.get("value", "")
        elif isinstance(kind, tuple):
            result.setdefault(name, []).append(_value(kind[1], value))
        else:
            result[name] = _value(kind, value)
    return {key: value for key, value in result.items() if value not in ("", {}, False)}


def decode(body: bytes) -> dict[str, Any]:
    """The object a protobuf body carries, as JSON (`ProtobufError` if it is none we read)."""
    if not body.startswith(MAGIC):
        raise ProtobufError("not a Kubernetes protobuf body (no k8s\\0 prefix)")
    unknown = _message(_UNKNOWN, body[len(MAGIC) :])
    type_meta = unknown.get("typeMeta") or {}
    key = (str(type_meta.get("apiVersion", "")), str(type_meta.get("kind", "")))
    schema = SCHEMAS.get(key)
    if schema is None:
        raise ProtobufError(f"this server reads no protobuf for {key[1] or '?'} ({key[0] or '?'})")
    raw = base64.b64decode(unknown.get("raw", ""))
    return {"apiVersion": key[0], "kind": key[1], **_message(schema, raw)}
