"""Label and field selectors, as the API server applies them to lists and watches.

Pure functions: parse the query parameter once, then match objects. The grammar is the
subset kubectl and client libraries send: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
`k notin (a,b)`, `k` and `!k` for labels; `path=v`, `path==v`, `path!=v` for fields.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Selector",
    "SelectorError",
    "field_value",
    "parse_field_selector",
    "parse_label_selector",
]


class SelectorError(ValueError):
    """A selector the API server would reject (400 Bad Request); the message says why."""


@dataclass(frozen=True)
class Selector:
    """A conjunction of requirements; the empty selector matches everything."""

    requirements: tuple[Callable[[Mapping[str, Any]], bool], ...] = ()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all(requirement(obj) for requirement in self.requirements)


_SET = re.compile(r"^\s*(!?)([A-Za-z0-9_./-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_EQUALITY = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)\s*$")


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses (`a in (x,y),b=z` is two requirements)."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part for part in parts if part.strip()]


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _label_requirement(text: str) -> Callable[[Mapping[str, Any]], bool]:
    equality = _EQUALITY.match(text)
    if equality:
        key, operator, value = equality.groups()
        if operator == "!=":
            return lambda obj: _labels(obj).get(key) != value
        return lambda obj: _labels(obj).get(key) == value
    found = _SET.match(text)
    if not found:
        raise SelectorError(f"unable to parse requirement: {text.strip()!r}")
    negated, key, operator, values = found.groups()
    if operator is None:
        if negated:
            return lambda obj: key not in _labels(obj)
        return lambda obj: key in _labels(obj)
    if negated:
        raise SelectorError(f"unable to parse requirement: {text.strip()!r}")
    wanted = frozenset(value.strip() for value in values.split(",") if value.strip())
    if operator == "in":
        return lambda obj: _labels(obj).get(key) in wanted
    return lambda obj: _labels(obj).get(key) not in wanted


def parse_label_selector(text: str) -> Selector:
    """The `labelSelector` query parameter as a `Selector`."""
    return Selector(tuple(_label_requirement(part) for part in _split(text)))


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The value at a dotted field path as a selector compares it (missing is empty)."""
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _field_requirement(text: str) -> Callable[[Mapping[str, Any]], bool]:
    found = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", text)
    if not found:
        raise SelectorError(f"invalid field selector: {text.strip()!r}")
    path, operator, value = found.groups()
    if operator == "!=":
        return lambda obj: field_value(obj, path) != value
    return lambda obj: field_value(obj, path) == value


def parse_field_selector(text: str) -> Selector:
    """The `fieldSelector` query parameter as a `Selector`."""
    return Selector(tuple(_field_requirement(part) for part in _split(text)))
