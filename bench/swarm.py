"""Many idle agents in one process: real WebSocket sessions, each with a real mux session.

The gateway cannot tell these from `kuberde agent` processes (same credential, same
upgrade, a `kuberde.mux.Session(is_client=True)` on the socket), but a thousand of them cost
one process instead of a thousand, so the machine stays quiet while the gateway's memory
is measured.

    python -m bench.swarm URL TOKEN_FILE [--ca-file PEM]

reads one agent credential per line, connects them all, prints `connected N`, then idles
until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from pathlib import Path

import aiohttp

from kuberde import aio
from kuberde.mux import Session
from kuberde.wslink import WebSocketLink

__all__ = ["main"]

#: Upgrades in flight at once: enough to be quick, few enough not to trip accept backlogs.
CONCURRENCY = 32
CONNECT_TIMEOUT = 30.0


async def _agent(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    context: ssl.SSLContext | bool,
    gate: asyncio.Semaphore,
    sessions: list[Session],
) -> None:
    async with gate:
        ws = await http.ws_connect(
            url,
            headers={"Authorization": f"Bearer {token}"},
            compress=0,
            heartbeat=None,
            ssl=context,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
        )
    session = Session(WebSocketLink(ws), is_client=True, name=f"swarm-{len(sessions)}")
    sessions.append(session)
    await session.run()


async def _run(url: str, tokens: list[str], ca_file: str | None) -> int:
    context: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=ca_file) if ca_file is not None else True
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gate = asyncio.Semaphore(CONCURRENCY)
    sessions: list[Session] = []
    connector = aiohttp.TCPConnector(limit=0, ssl=context)
    timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        tasks = [
            asyncio.create_task(_agent(http, url, token, context, gate, sessions))
            for token in tokens
        ]
        while len(sessions) < len(tokens):
            failed = [task for task in tasks if task.done()]
            if failed:
                print(f"an agent session ended early: {failed[0].exception()!r}", flush=True)
                return 1
            await asyncio.sleep(0.05)
        print(f"connected {len(sessions)}", flush=True)
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.swarm")
    parser.add_argument("url", help="the gateway's agent endpoint, ws(s)://HOST:PORT/ws")
    parser.add_argument("token_file", type=Path, help="one agent credential per line")
    parser.add_argument("--ca-file", help="CA certificate for a wss:// gateway")
    args = parser.parse_args(argv)
    tokens = args.token_file.read_text().split()
    sys.exit(aio.run(_run(args.url, tokens, args.ca_file)))


if __name__ == "__main__":
    main()
