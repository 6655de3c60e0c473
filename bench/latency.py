"""Round trip of one byte on an open connection, and the time to open a new one.

Round trip: 1-byte ping-pong against the echo server on one connection, after a warm-up.
Setup: connect, then wait for the first byte of the banner the target sends unprompted —
the whole path (for KubeRDE: WebSocket upgrade, credential check, stream open, the agent's
dial) must be up before that byte can arrive. Rounds alternate between paths.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

from bench.peers import BenchPath
from bench.target import BANNER
from bench.throughput import MeasurementError, connect

__all__ = ["measure_round_trips", "measure_setups"]

IO_TIMEOUT = 30.0


def _round_trips(port: int, count: int, warmup: int) -> list[float]:
    with connect(port) as sock:
        sock.settimeout(IO_TIMEOUT)
        samples: list[float] = []
        for index in range(warmup + count):
            started = time.perf_counter()
            sock.sendall(b"x")
            if sock.recv(1) != b"x":
                raise MeasurementError("the echo server answered something else")
            if index >= warmup:
                samples.append(time.perf_counter() - started)
        return samples


def _setup(port: int) -> float:
    started = time.perf_counter()
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    try:
        first = sock.recv(len(BANNER))
        elapsed = time.perf_counter() - started
        banner = first
        while len(banner) < len(BANNER) and first:
            first = sock.recv(len(BANNER) - len(banner))
            banner += first
        if banner != BANNER:
            raise MeasurementError(f"expected the banner, got {banner[:40]!r}")
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)
    finally:
        sock.close()
    return elapsed


def measure_round_trips(
    paths: Sequence[BenchPath], *, count: int, warmup: int, rounds: int
) -> dict[str, list[float]]:
    """Seconds per round trip; `count` samples per path and round."""
    samples: dict[str, list[float]] = {path.key: [] for path in paths}
    for _ in range(rounds):
        for path in paths:
            samples[path.key] += _round_trips(path.ports.echo, count, warmup)
    return samples


def measure_setups(
    paths: Sequence[BenchPath], *, count: int, warmup: int, rounds: int
) -> dict[str, list[float]]:
    """Seconds from connect to the banner's first byte; `count` per path and round."""
    samples: dict[str, list[float]] = {path.key: [] for path in paths}
    for path in paths:
        for _ in range(warmup):
            _setup(path.ports.banner)
    for _ in range(rounds):
        for path in paths:
            samples[path.key] += [_setup(path.ports.banner) for _ in range(count)]
    return samples
