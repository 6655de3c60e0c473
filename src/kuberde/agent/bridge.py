"""Serve one stream the gateway opened: read its preamble, dial the local port, pipe bytes
(`kuberde.mux.tcpbridge`, on Protocol callbacks)."""

from __future__ import annotations

import asyncio
import logging

from kuberde.agent.config import AgentConfig
from kuberde.mux import PreambleError, Stream, StreamReset, read_preamble
from kuberde.mux.tcpbridge import TcpBridge

__all__ = ["CONNECT_TIMEOUT", "PREAMBLE_TIMEOUT", "TcpBridge", "serve_stream"]

log = logging.getLogger(__name__)

PREAMBLE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0


async def serve_stream(
    stream: Stream,
    config: AgentConfig,
    *,
    preamble_timeout: float = PREAMBLE_TIMEOUT,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> None:
    """Run one stream to completion; every refusal resets the stream with a reason."""
    try:
        async with asyncio.timeout(preamble_timeout):
            preamble, rest = await read_preamble(stream)
    except TimeoutError:
        stream.reset("no preamble")
        return
    except PreambleError as exc:
        stream.reset(f"bad preamble: {exc}")
        return
    except StreamReset:
        return
    target = config.target_for(preamble.port)
    if target is None:
        log.info("stream %d: refused port %s for %s", stream.id, preamble.port, preamble.user)
        stream.reset(f"port {preamble.port} is not allowed for this agent")
        return
    host, port = target
    try:
        bridge = await _dial(stream, host, port, rest, connect_timeout, config.connect_patience)
    except ConnectionRefusedError:
        stream.reset(f"connection refused by {host}:{port} in the workspace")
        return
    except TimeoutError:
        stream.reset(f"timed out connecting to {host}:{port} in the workspace")
        return
    except OSError as exc:
        stream.reset(f"cannot connect to {host}:{port} in the workspace: {exc.strerror or exc}")
        return
    log.debug("stream %d: %s from %s -> %s:%d", stream.id, preamble.kind, preamble.user, host, port)
    try:
        await bridge.finished
    except asyncio.CancelledError:
        bridge.abort()
        raise


async def _dial(
    stream: Stream, host: str, port: int, rest: bytes, dial_timeout: float, patience: float
) -> TcpBridge:
    """Connect to the local target, retrying refusals for `patience` seconds.

    Right after a wake the agent is often online before the workload listens (Jupyter and
    code-server take seconds); the waiting user should get through, not a refusal.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    delay = 0.05
    while True:
        try:
            async with asyncio.timeout(dial_timeout):
                _, bridge = await loop.create_connection(
                    lambda: TcpBridge(
                        stream, f"connection to {host}:{port} in the workspace", rest
                    ),
                    host,
                    port,
                )
            return bridge
        except ConnectionRefusedError:
            if stream.error is not None or loop.time() + delay > deadline:
                raise
            log.debug(
                "stream %d: %s:%d refuses; trying again in %.2fs", stream.id, host, port, delay
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
