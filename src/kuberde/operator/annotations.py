"""Annotations that carry lifecycle state on the RDEAgent itself.

State lives on the resource, not in the operator's memory, so a scale-down survives operator
restarts and fail-overs, and the gateway can ask for a wake without talking to the operator.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kuberde.naming import (
    EXTEND_ANNOTATION,
    SCALED_DOWN_ANNOTATION,
    STOP_ANNOTATION,
    WAKE_ANNOTATION,
)

__all__ = [
    "EXTEND_ANNOTATION",
    "SCALED_DOWN_ANNOTATION",
    "STOP_ANNOTATION",
    "WAKE_ANNOTATION",
    "annotations_of",
    "parse_time",
    "timestamp_of",
]


def annotations_of(body: Mapping[str, Any]) -> Mapping[str, str]:
    return (body.get("metadata") or {}).get("annotations") or {}


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 timestamp as Kubernetes writes them; naive means UTC; junk means None."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def timestamp_of(body: Mapping[str, Any], annotation: str) -> datetime | None:
    return parse_time(annotations_of(body).get(annotation))
