"""How `kuberde connect` hands its error to the `kuberde ssh` that started ssh.

As ssh's ProxyCommand, `kuberde connect` can only print on ssh's stderr, and ssh follows
our message with its own about the connection we closed (`kex_exchange_identification:
Connection closed by remote host`). `kuberde ssh` therefore names a private, already
created file in `$KUBERDE_ERROR_FILE`. The ProxyCommand prints its error on stderr, on one
line, as always, and then writes the same line into that file: `kuberde ssh` passes ssh's
stderr on up to that line and nothing after it (`kuberde.cli.sshrun`). Plain `ssh
NAME.kuberde` has no such file: our line comes first, then ssh's.

Standard library only: this is on the ProxyCommand's fast path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TextIO

__all__ = ["ERROR_FILE_ENV", "report"]

ERROR_FILE_ENV = "KUBERDE_ERROR_FILE"


def report(message: str, stderr: TextIO, environ: Mapping[str, str] = os.environ) -> None:
    """`kuberde: MESSAGE` on `stderr`, then into the error file `kuberde ssh` named, if any.

    Stderr first: once the file holds the line, `kuberde ssh` passes nothing after it. The
    file is only ever appended to, never created or followed through a symlink, so a stray
    variable cannot make us write anywhere new.
    """
    line = f"kuberde: {message}\n"
    stderr.write(line)
    stderr.flush()
    path = environ.get(ERROR_FILE_ENV)
    if not path:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, line.encode(stderr.encoding or "utf-8", errors="backslashreplace"))
    except OSError:
        pass
    finally:
        os.close(fd)
