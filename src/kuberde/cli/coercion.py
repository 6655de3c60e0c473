"""Option and argument values converted without pydantic.

Typer 0.29 converts every value (defaults included) through a pydantic TypeAdapter, and
importing pydantic and building adapters costs ~100 ms of each command's start-up. The types
our commands declare — str, int, float, bool, Path, Enum, Literal, and lists of those — are
converted here with the same results; any other type, option setting (`min`, `parser`, ...)
or value keeps Typer's own conversion.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from typer._click import Context, Parameter
from typer._click.exceptions import BadParameter
from typer._coercion import RuntimeParam, build_runtime_param
from typer._param_types import coerce_cli_choice, coerce_cli_path
from typer.core import TyperArgument, TyperOption
from typer.models import ParameterInfo

__all__ = ["installed", "leaf_type", "parse_scalar"]

#: What pydantic-core trims around numbers: Unicode's White_Space (str.strip() also trims
#: the ASCII separators \x1c-\x1f, which pydantic does not).
_SPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_INT = re.compile(r"([+-]?[0-9]+(?:_[0-9]+)*)(?:\.0+)?", re.ASCII)
_DIGITS = "[0-9]+(?:_[0-9]+)*"
_FLOAT = re.compile(
    rf"[+-]?(?:(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][+-]?{_DIGITS})?"
    r"|inf|infinity|nan)",
    re.ASCII | re.IGNORECASE,
)
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
_SCALARS: tuple[type, ...] = (str, int, float, bool)
P = TypeVar("P", bound=Parameter)


class _Unhandled(Exception):
    """A value this module does not convert (Typer's own conversion takes it)."""


def parse_scalar(kind: type, text: str) -> Any:
    """`text` as a `kind` (str, int, float or bool) as Typer would read it; ValueError
    naming the value and the type expected when it is none."""
    if kind is str:
        return text
    if kind is bool:
        word = text.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE or not word:
            return False
        raise ValueError(f"{text!r} is not a boolean (true/false, yes/no, on/off, 1/0)")
    number = text.strip(_SPACE)
    if kind is int:
        match = _INT.fullmatch(number)
        if match is None:
            raise ValueError(f"{text!r} is not an integer")
        return int(match.group(1))
    if _FLOAT.fullmatch(number) is None:
        raise ValueError(f"{text!r} is not a number")
    return float(number)


def leaf_type(annotation: Any, info: ParameterInfo) -> Any | None:
    """The type each value of a parameter is converted to (`int` for `list[int]`), or None
    when Typer's conversion must stay: a type or a setting this module does not cover."""
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation)
    if (
        info.parser is not None
        or info.path_type is not None
        or (info.min, info.max) != (None, None)
    ):
        return None
    if isinstance(annotation, type) and issubclass(annotation, (Enum, Path)):
        return annotation
    if get_origin(annotation) is Literal or annotation in _SCALARS:
        return annotation
    return None


@dataclass(frozen=True)
class _PlainRuntimeParam(RuntimeParam):
    """Typer's runtime conversion of one parameter, with `leaf` converted here."""

    leaf: Any
    many: bool

    def _coerce_value(self, value: Any, param: Any, ctx: Context) -> Any:
        try:
            if self.many:
                items = value if isinstance(value, list | tuple) else [value]
                return [self._one(item, param, ctx) for item in items]
            return self._one(value, param, ctx)
        except _Unhandled:
            return build_runtime_param(param.type_descriptor)._coerce_value(value, param, ctx)

    def _one(self, value: Any, param: Any, ctx: Context) -> Any:
        leaf = self.leaf
        if get_origin(leaf) is Literal or issubclass(leaf, Enum):
            choices = get_args(leaf) if get_origin(leaf) is Literal else tuple(leaf)
            return self._checked(
                lambda: coerce_cli_choice(
                    value,
                    choices=choices,
                    case_sensitive=self.parameter_info.case_sensitive,
                    ctx=ctx,
                ),
                param,
                ctx,
            )
        if issubclass(leaf, Path):
            path = leaf(value) if isinstance(value, str) else value
            if not isinstance(path, leaf):
                raise _Unhandled
            return coerce_cli_path(path, self.parameter_info, path_type=leaf, param=param, ctx=ctx)
        if isinstance(value, str):
            return self._checked(lambda: parse_scalar(leaf, value), param, ctx)
        if type(value) is leaf:
            return value
        if leaf is float and type(value) is int:
            return float(value)
        raise _Unhandled

    @staticmethod
    def _checked(convert: Callable[[], Any], param: Any, ctx: Context) -> Any:
        try:
            return convert()
        except ValueError as exc:
            raise BadParameter(str(exc), ctx=ctx, param=param) from None


def installed(params: list[P]) -> list[P]:
    """`params`, each whose type this module covers now converted here, not by pydantic
    (Typer builds a parameter's conversion on first use, only when none is set)."""
    for param in params:
        if not isinstance(param, TyperOption | TyperArgument) or param._runtime_param is not None:
            continue
        descriptor = param.type_descriptor
        leaf = leaf_type(descriptor.annotation, descriptor.parameter_info)
        if leaf is not None:
            param._runtime_param = _PlainRuntimeParam(
                parameter_info=descriptor.parameter_info,
                annotation=descriptor.annotation,
                leaf=leaf,
                many=descriptor.is_list,
            )
    return params
