"""`kubectl exec` as the kubelet serves it: a process, its streams over a channel WebSocket.

kubectl (1.30 and later) speaks `v5.channel.k8s.io` (or `v4`) for exec: every binary message
starts with its channel, 0 stdin, 1 stdout, 2 stderr, 3 the final Status (with the exit code),
4 terminal resizes; in v5 the client closes stdin with `255, 0`. The command runs as a real
process with the pod's environment and working directory; with a TTY asked for, stderr goes
to stdout, as it does through a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web

from kuberde.testing.processes import reap

__all__ = ["PROTOCOLS", "exec_status", "serve_exec"]

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
_CHUNK = 32 * 1024


def exec_status(returncode: int | None, failure: str = "") -> dict[str, Any]:
    """The Status kubectl reads from the error channel: Success, or the exit code."""
    if failure:
        return {"metadata": {}, "status": "Failure", "message": failure, "reason": "InternalError"}
    if returncode == 0:
        return {"metadata": {}, "status": "Success"}
    code = returncode if returncode is not None and returncode > 0 else 128 - (returncode or 0)
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit status {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


async def _pump(
    ws: aiohttp.web.WebSocketResponse, channel: int, stream: asyncio.StreamReader
) -> None:
    while chunk := await stream.read(_CHUNK):
        await ws.send_bytes(bytes([channel]) + chunk)


async def _feed(ws: aiohttp.web.WebSocketResponse, stdin: asyncio.StreamWriter | None) -> None:
    """The client's stdin into the process, until it closes stdin or goes away."""
    async for message in ws:
        if message.type != aiohttp.WSMsgType.BINARY or not message.data:
            continue
        channel, data = message.data[0], message.data[1:]
        if channel == STDIN and stdin is not None and data:
            stdin.write(data)
            with contextlib.suppress(ConnectionError):
                await stdin.drain()
        elif channel == CLOSE and data[:1] == bytes([STDIN]) and stdin is not None:
            stdin.close()
            stdin = None
    if stdin is not None:
        stdin.close()


async def serve_exec(
    raw_request: aiohttp.web.BaseRequest,
    command: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
) -> aiohttp.web.StreamResponse:
    """Run `command` and stream it over the WebSocket the request upgrades to."""
    query = raw_request.query
    wants_stdin = query.get("stdin") in ("true", "1")
    tty = query.get("tty") in ("true", "1")
    ws = aiohttp.web.WebSocketResponse(protocols=PROTOCOLS)
    await ws.prepare(raw_request)
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            env=dict(env),
            cwd=cwd,
            stdin=asyncio.subprocess.PIPE if wants_stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if tty else asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        failure = f"exec: {command[0] if command else ''}: {exc.strerror or exc}"
        await ws.send_bytes(bytes([ERROR]) + json.dumps(exec_status(None, failure)).encode())
        await ws.close()
        return ws
    assert process.stdout is not None
    outputs = [_pump(ws, STDOUT, process.stdout)]
    if process.stderr is not None:
        outputs.append(_pump(ws, STDERR, process.stderr))
    feeding = asyncio.create_task(_feed(ws, process.stdin))
    output: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*outputs))
    try:
        # Feeding ends only when the client goes away: then the process goes too.
        await asyncio.wait([output, feeding], return_when=asyncio.FIRST_COMPLETED)
        if output.done():
            output.result()
            status = exec_status(await process.wait())
            await ws.send_bytes(bytes([ERROR]) + json.dumps(status).encode())
    finally:
        output.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await output
        await reap(process)
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeding
        await ws.close()
    return ws
