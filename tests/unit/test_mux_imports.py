"""`kuberde.mux` (codec and session) imports without aiohttp: checked in a fresh interpreter,
where an import hook refuses aiohttp outright."""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import sys

class NoAiohttp:
    def find_spec(self, name, path=None, target=None):
        if name == "aiohttp" or name.startswith("aiohttp."):
            raise ImportError(f"{name} must not be imported")
        return None

sys.meta_path.insert(0, NoAiohttp())
import kuberde.mux
from kuberde.mux import FrameDecoder, Session, encode_preamble
print("ok", "aiohttp" in sys.modules)
"""


@pytest.mark.timeout(60)
def test_mux_imports_without_aiohttp() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok False"
