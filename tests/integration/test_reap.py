"""`reap` stops a child whose output nobody reads any more, where `kill(); wait()` hangs."""

from __future__ import annotations

import asyncio
import sys

import pytest

from kuberde.testing.processes import reap

pytestmark = pytest.mark.timeout(60)

#: Writes more than a StreamReader holds before it pauses its pipe, then lingers.
CHATTY = (
    "import sys, time; sys.stdout.buffer.write(b'x' * (1 << 20)); sys.stdout.flush(); "
    "time.sleep(60)"
)


async def chatty_child() -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHATTY, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    await asyncio.wait_for(process.stdout.readexactly(1), 10)
    await asyncio.sleep(0.5)  # the rest fills the reader's buffer, and it pauses the pipe
    return process


async def test_a_killed_child_with_unread_output_is_reaped() -> None:
    process = await chatty_child()
    await reap(process)
    assert process.returncode == -9


async def test_the_bare_wait_it_replaces_hangs() -> None:
    """Why `reap` exists: on this Python the plain wait would outlast every step timeout."""
    process = await chatty_child()
    process.kill()
    if sys.version_info < (3, 12):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(process.wait(), 2)
    await reap(process)
    assert process.returncode == -9


async def test_an_exited_child_is_left_alone() -> None:
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    assert await asyncio.wait_for(process.wait(), 10) == 0
    await reap(process)
    assert process.returncode == 0
