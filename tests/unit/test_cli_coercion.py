"""Values converted without pydantic (kuberde.cli.coercion) come out as Typer's own
conversion makes them, and bad ones are refused with a message naming the value."""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import typer
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer._adapters import build_adapter
from typer.core import TyperCommand
from typer.models import OptionInfo
from typer.testing import CliRunner

from kuberde.cli.base import Command
from kuberde.cli.coercion import leaf_type, parse_scalar

pytestmark = pytest.mark.unit

#: Characters numbers and booleans are written with, and ones that come close.
_ALPHABET = st.sampled_from(
    [*"0123456789+-_.eE xX\t\n", "inf", "nan", "infinity", "yes", "on", "t", "N",
     "\xa0", "\x1c", "\u2003", "\u200b", "\u0663", "a", "\u00e9"]
)  # fmt: skip
_TEXT = st.one_of(st.lists(_ALPHABET, max_size=8).map("".join), st.text(max_size=8))


def _typer(kind: type, text: str) -> tuple[bool, Any]:
    try:
        return True, build_adapter(kind, OptionInfo()).validate_python(text)
    except ValueError:
        return False, None


def _ours(kind: type, text: str) -> tuple[bool, Any]:
    try:
        return True, parse_scalar(kind, text)
    except ValueError:
        return False, None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return type(a) is type(b) and a == b


@settings(max_examples=500)
@given(kind=st.sampled_from([int, float, bool, str]), text=_TEXT)
@example(kind=int, text="1_0.00")
@example(kind=float, text="1_0e1_0")
@example(kind=float, text="-Infinity")
@example(kind=bool, text=" Yes ")
def test_scalars_convert_as_typer_does(kind: type, text: str) -> None:
    (ours_ok, ours), (typer_ok, theirs) = _ours(kind, text), _typer(kind, text)
    assert ours_ok == typer_ok, (ours, theirs)
    assert _same(ours, theirs)


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        (int, "abc", "'abc' is not an integer"),
        (int, "1.5", "'1.5' is not an integer"),
        (float, "1e", "'1e' is not a number"),
        (bool, "maybe", "'maybe' is not a boolean (true/false, yes/no, on/off, 1/0)"),
    ],
)
def test_a_bad_value_is_named_with_the_type_expected(kind: type, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)")):
        parse_scalar(kind, text)


class Color(StrEnum):
    RED = "red"
    DARK_BLUE = "dark-blue"


def _probe(cls: type[TyperCommand]) -> typer.Typer:
    """One command taking each kind of parameter we convert, printing what it was given."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.command(cls=cls)
    def probe(
        words: Annotated[list[str] | None, typer.Argument()] = None,
        number: int = 7,
        ratio: float = 2,
        flag: Annotated[bool, typer.Option("--flag/--no-flag")] = False,
        color: Color = Color.RED,
        shade: Annotated[Color | None, typer.Option(case_sensitive=False)] = None,
        mode: Literal["fast", "slow"] = "fast",
        where: Path = Path("/nonexistent/default"),
        files: Annotated[list[Path] | None, typer.Option("--file")] = None,
        counts: Annotated[list[int] | None, typer.Option("--count")] = None,
    ) -> None:
        typer.echo(repr([words, number, ratio, flag, color, shade, mode, where, files, counts]))

    return app


_OURS, _THEIRS = _probe(Command), _probe(TyperCommand)
_VALUE = st.one_of(_TEXT, st.sampled_from(["red", "DARK-BLUE", "slow", "/tmp", "", "-1"]))
_OPTION = st.sampled_from(
    ["--number", "--ratio", "--color", "--shade", "--mode", "--where", "--file", "--count"]
)


def _run(app: typer.Typer, args: list[str], env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, env=env)
    return result.exit_code, result.output if result.exit_code == 0 else ""


@settings(max_examples=150, deadline=None)
@given(
    options=st.lists(st.tuples(_OPTION, _VALUE), max_size=4),
    words=st.lists(st.sampled_from(["a", "b c", "0"]), max_size=2),
    flag=st.sampled_from([[], ["--flag"], ["--no-flag"]]),
)
def test_a_command_gets_the_values_typer_would_give_it(
    options: list[tuple[str, str]], words: list[str], flag: list[str]
) -> None:
    args = [*flag, *(f"{name}={value}" for name, value in options), "--", *words]
    assert _run(_OURS, args, {}) == _run(_THEIRS, args, {})


def test_bad_values_are_refused_naming_the_option() -> None:
    for args, message in [
        (["--number", "abc"], "Invalid value for '--number': 'abc' is not an integer"),
        (["--color", "green"], "Invalid value for '--color': 'green' is not one of 'red',"),
        (["--count", "1", "--count", "x"], "Invalid value for '--count': 'x' is not an integer"),
    ]:
        result = CliRunner().invoke(_OURS, args)
        assert result.exit_code == 2
        assert message in " ".join(result.output.split())


def test_types_and_settings_it_does_not_cover_stay_with_typer() -> None:
    assert leaf_type(list[int], OptionInfo()) is int
    assert leaf_type(Color, OptionInfo(case_sensitive=False)) is Color
    assert leaf_type(int, OptionInfo(min=1)) is None
    assert leaf_type(int, OptionInfo(parser=int)) is None
    assert leaf_type(Path, OptionInfo(path_type=str)) is None
    assert leaf_type(complex, OptionInfo()) is None
