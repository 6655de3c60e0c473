"""Stopping a test's child processes without hanging on their pipes."""

from __future__ import annotations

import asyncio
import contextlib

#: How long a killed process may take to go, with its pipes.
REAP_TIMEOUT = 10.0


async def reap(process: asyncio.subprocess.Process) -> None:
    """Kills `process` if it still runs and waits until it and its pipes are gone.

    On Python 3.11 `Process.wait()` also waits for the pipes to close, and a pipe nobody
    reads any more (a full StreamReader pauses its transport) never reports its end: a
    bare `kill(); await wait()` after a cancelled `communicate()` hangs past every test
    timeout and hides the step that failed. Draining the output lets the wait finish.
    """
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    async with asyncio.timeout(REAP_TIMEOUT):
        await process.communicate()
