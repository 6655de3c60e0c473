"""Private files written atomically: the one writer of every 0600 file we keep.

Readers see the old content or the new, never a torn write: the data goes to a temporary
file (0600 from its creation, in the same directory) that is then renamed over the target,
or hard-linked to it when an existing file must win (`exclusive`). Missing parents are
created 0700; existing directories keep their mode (`$KUBERDE_CONFIG` may point into a
shared one). Blocking: call it from a thread when on the event loop and `durable` is set.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["create_private", "write_private"]


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private(path: Path) -> None:
    """Create `path` 0600 (empty) unless it exists, e.g. before SQLite opens it: SQLite gives
    its WAL files the same mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))


def write_private(
    path: Path, content: bytes | str, *, durable: bool = True, exclusive: bool = False
) -> bool:
    """Replace `path` with `content` (str is written as UTF-8), mode 0600.

    `durable` fsyncs the file and its directory, so the new content survives a crash.
    `exclusive` never overwrites: it returns False, writing nothing, if `path` exists (two
    processes creating the same file keep exactly one of the two). Otherwise returns True.
    """
    import tempfile  # here: `kuberde connect` imports this module but rarely writes

    data = content.encode() if isinstance(content, str) else content
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        if exclusive:
            try:
                os.link(temporary, path)
            except FileExistsError:
                return False
        else:
            os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    if durable:
        _sync_directory(path.parent)
    return True
