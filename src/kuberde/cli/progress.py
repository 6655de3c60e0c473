"""Wake progress on stderr: what a user sees while the gateway wakes a workspace."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

__all__ = ["WakeProgress"]


class WakeProgress:
    """Shows `waking demo… 2.1s` on stderr while the gateway wakes a workspace.

    On a terminal one line is overwritten; otherwise a line is printed every few seconds so
    logs stay short. Safe to share between connections to the same agent.
    """

    def __init__(
        self,
        agent: str,
        stream: TextIO,
        *,
        interactive: bool | None = None,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._agent = agent
        self._stream = stream
        self._interactive = stream.isatty() if interactive is None else interactive
        self._interval = interval
        self._clock = clock
        self._last_print: float | None = None
        #: When the wake began on our clock (the gateway reports elapsed time in whole steps).
        self._since: float | None = None
        self._line_open = False

    def __call__(self, event: Mapping[str, Any]) -> None:
        name = event.get("event")
        if name == "waking":
            self._waking(event.get("elapsed_s"))
        elif name == "connected" and self._since is not None:
            waited = self._clock() - self._since
            self._write(f"{self._agent} is up after {waited:.1f}s\n", overwrite=True)
            self._line_open = False
            self._since = None
            self._last_print = None

    def end_line(self) -> None:
        """Finish an overwritten progress line so the next message starts on its own."""
        if self._line_open:
            self._write("\n", overwrite=False)
            self._line_open = False

    def _waking(self, raw: object) -> None:
        elapsed = float(raw) if isinstance(raw, int | float) else 0.0
        if self._since is None:
            self._since = self._clock() - elapsed
        text = f"waking {self._agent}… {elapsed:.1f}s"
        if self._interactive:
            self._write(text, overwrite=True)
            self._line_open = True
            return
        now = self._clock()
        if self._last_print is None or now - self._last_print >= self._interval:
            self._last_print = now
            self._write(text + "\n", overwrite=False)

    def _write(self, text: str, *, overwrite: bool) -> None:
        if overwrite and self._interactive:
            text = "\r\x1b[K" + text
        self._stream.write(text)
        self._stream.flush()
