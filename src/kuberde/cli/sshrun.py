"""`kuberde ssh`'s OpenSSH child: after a KubeRDE error, ours is the only message.

When the ProxyCommand (`kuberde connect`) fails — a wake that times out, a workspace
deleted meanwhile, the gateway going away, a refusal from `/connect` — ssh adds its own
lines about the closed connection. So ssh runs as our child with its stderr on a pipe that
we pass through byte for byte, and with `$KUBERDE_ERROR_FILE` naming a private file
(`kuberde.cli.errorfile`). The ProxyCommand writes its error there before it exits, and so
before ssh can notice the closed connection: once the file holds a message, nothing more
ssh writes is passed on, and the message is printed once when ssh is done; the exit code
is then 1, as `kuberde connect`'s. Otherwise the exit code is ssh's own.

ssh's LogLevel stays as the user has it: a changed host key, "Permission denied" and
remote stderr all still reach the user.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

from kuberde.cli.errorfile import ERROR_FILE_ENV

__all__ = ["run_ssh"]

CONNECTION_ERROR = 1
_READ_SIZE = 64 * 1024
_TAIL = 8 * 1024


def run_ssh(argv: Sequence[str], env: Mapping[str, str], stderr_fd: int = 2) -> int:
    """Run `argv` (ssh) to the end with its stderr relayed to `stderr_fd`; the exit code.

    Raises OSError (FileNotFoundError when there is no ssh) if it cannot be started.
    """
    with tempfile.TemporaryDirectory(prefix="kuberde-ssh-") as directory:
        error_file = Path(directory) / "error"
        error_file.touch(mode=0o600)
        child = subprocess.Popen(
            list(argv), env={**env, ERROR_FILE_ENV: str(error_file)}, stderr=subprocess.PIPE
        )
        with _signals_go_to(child):
            assert child.stderr is not None
            with child.stderr:
                relay = _Relay(error_file, stderr_fd)
                _pump(child, child.stderr.fileno(), relay)
            code = child.wait()
    if relay.message is None:
        return code if code >= 0 else 128 - code
    if not relay.delivered:
        # Its stderr did not come through ssh's: say it here, on a line of its own.
        _write_all(stderr_fd, (b"" if relay.ended_line else b"\n") + relay.message)
    return CONNECTION_ERROR


@contextlib.contextmanager
def _signals_go_to(child: subprocess.Popen[bytes]) -> Iterator[None]:
    """While ssh runs: Ctrl-C is ssh's to handle (the terminal sends it to both of us), and
    a SIGTERM or SIGHUP sent to us is passed on, so ssh never outlives its relay."""

    def forward(signum: int, frame: FrameType | None) -> None:
        child.send_signal(signum)

    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
        signal.SIGHUP: signal.signal(signal.SIGHUP, forward),
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _Relay:
    """Passes ssh's stderr on, up to the end of the ProxyCommand's error line once the
    error file holds it, and nothing after that line.

    The ProxyCommand writes the line on stderr before it writes the file, so a chunk read
    while the file is still empty holds nothing that follows the line.
    """

    def __init__(self, error_file: Path, out: int) -> None:
        self._error_file = error_file
        self._out = out
        self._tail = b""  # the end of what was passed, where the line may already be
        self.message: bytes | None = None
        self.delivered = False
        self.ended_line = True

    def feed(self, chunk: bytes) -> None:
        if self.message is not None:
            return
        self.message = self._error_file.read_bytes() or None
        if self.message is None:
            self._pass(chunk)
            return
        window = self._tail + chunk
        at = window.find(self.message)
        if at >= 0:
            self._pass(chunk[: max(0, at + len(self.message) - len(self._tail))])
            self.delivered = True

    def _pass(self, data: bytes) -> None:
        if data:
            _write_all(self._out, data)
            self.ended_line = data.endswith(b"\n")
            self._tail = (self._tail + data)[-_TAIL:]


def _pump(child: subprocess.Popen[bytes], pipe: int, relay: _Relay) -> None:
    """Feed ssh's stderr to the relay until ssh exits (what it wrote before is still read)
    or the pipe ends."""
    with contextlib.ExitStack() as stack:
        selector = stack.enter_context(selectors.DefaultSelector())
        selector.register(pipe, selectors.EVENT_READ)
        # A ProxyCommand of a ControlPersist master may hold the pipe long after ssh is gone.
        if hasattr(os, "pidfd_open"):
            pidfd = os.pidfd_open(child.pid)
            stack.callback(os.close, pidfd)
            selector.register(pidfd, selectors.EVENT_READ)
        exited = False
        while True:
            if not exited:
                exited = any(key.fd != pipe for key, _ in selector.select())
                if exited:
                    os.set_blocking(pipe, False)
            try:
                chunk = os.read(pipe, _READ_SIZE)
            except BlockingIOError:
                return
            if not chunk:
                return
            relay.feed(chunk)


def _write_all(fd: int, data: bytes) -> None:
    """Write everything; a closed stderr is nobody's problem but its reader's."""
    view = memoryview(data)
    with contextlib.suppress(OSError):
        while view:
            view = view[os.write(fd, view) :]
