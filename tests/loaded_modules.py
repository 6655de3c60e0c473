"""Runs `kuberde ARGS...` as its console script does and tells which packages it loaded:
start-up tests assert on what a command imports, not on how long it takes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping

_RUN_AND_LIST = (
    "import sys\n"
    "from kuberde.cli.entry import main\n"
    "sys.argv[0] = 'kuberde'\n"
    "try:\n"
    "    main()\n"
    "finally:\n"
    "    print('loaded:', *sorted({m.split('.')[0] for m in sys.modules}), file=sys.stderr)\n"
)


def run_listing_packages(
    args: list[str], env: Mapping[str, str], timeout: float
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """The finished run (stdin empty) and the top-level packages loaded by its end."""
    done = subprocess.run(
        [sys.executable, "-c", _RUN_AND_LIST, *args],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done, set(done.stderr.rsplit("loaded:", 1)[-1].split())
