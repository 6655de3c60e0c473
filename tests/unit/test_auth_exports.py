"""`kuberde.auth` exports its submodules' names lazily: the imports that type-check them
name every exported name, each resolves to the submodule's own object, and a light
submodule comes without PyJWT or `cryptography`."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys

import pytest

import kuberde.auth


def _typed_imports() -> dict[str, str]:
    """name → submodule of every `from kuberde.auth.X import N as N` under TYPE_CHECKING."""
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(inspect.getsource(kuberde.auth))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kuberde.auth."):
            for alias in node.names:
                assert alias.asname == alias.name, f"{alias.name} is not re-exported"
                found[alias.name] = (node.module or "").removeprefix("kuberde.auth.")
    return found


def test_the_typed_imports_name_every_export() -> None:
    exported = {
        name
        for submodule in kuberde.auth.SUBMODULES
        for name in importlib.import_module(f"kuberde.auth.{submodule}").__all__
    }
    assert set(_typed_imports()) == exported


@pytest.mark.parametrize(("name", "submodule"), sorted(_typed_imports().items()))
def test_each_export_is_the_submodules_object(name: str, submodule: str) -> None:
    home = importlib.import_module(f"kuberde.auth.{submodule}")
    assert getattr(kuberde.auth, name) is getattr(home, name)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        kuberde.auth.Nope  # noqa: B018


@pytest.mark.timeout(60)
def test_token_lifetimes_come_without_pyjwt() -> None:
    probe = (
        "import sys; from kuberde.auth import DEFAULT_USER_TTL; "
        "print(sorted(m for m in ('jwt', 'cryptography') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
