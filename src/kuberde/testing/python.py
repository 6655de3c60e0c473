"""A Python that other accounts can run, for tests and benchmarks of a root `kuberde up`.

A root `kuberde up` runs workloads as the owner's own account, which may not reach this
interpreter (a pyenv under /root, say). Workloads of tests and benchmarks then use the
system's Python of the same minor version, with our import path passed explicitly in their
`env` (a workload inherits nothing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import kuberde

__all__ = ["IMPORT_PATH", "SHARED_PYTHON", "WORKLOAD_PYTHON", "runnable_by_anyone", "workload_env"]


def runnable_by_anyone(path: str) -> bool:
    """Whether every account may run `path`: it and each directory above it allow others."""
    target = Path(os.path.realpath(path))
    return all(os.stat(part).st_mode & 0o001 for part in [target, *target.parents])


def _same_version(path: str) -> bool:
    """Whether `path` is a Python of our minor version (so our compiled dependencies load)."""
    result = subprocess.run(
        [path, "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout.strip() == str(sys.version_info[:2])


_SYSTEM = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
_OURS = runnable_by_anyone(sys.executable)
#: Ours, or else the system's: enough for workloads that need only the standard library.
WORKLOAD_PYTHON = sys.executable if _OURS else _SYSTEM or sys.executable
#: Ours, or else the system's of our version (None if there is none): runs our packages,
#: with `IMPORT_PATH` as PYTHONPATH.
SHARED_PYTHON: str | None = (
    sys.executable if _OURS else _SYSTEM if _SYSTEM and _same_version(_SYSTEM) else None
)
#: Our source and every import directory of ours, for PYTHONPATH.
IMPORT_PATH = os.pathsep.join(
    [str(Path(kuberde.__file__).parent.parent), *(path for path in sys.path if path)]
)


def workload_env() -> dict[str, str]:
    """What a workload run by `SHARED_PYTHON` needs to import our packages."""
    return {} if sys.executable == SHARED_PYTHON else {"PYTHONPATH": IMPORT_PATH}
