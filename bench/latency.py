"""Round trip of one byte on an open connection, and the time to open a new one, on a quiet
path and while bulk uploads share it.

Round trip: 1-byte ping-pong against the echo server on one connection, after a warm-up.
Setup: connect, then wait for the first byte of the banner the target sends unprompted —
the whole path (for KubeRDE: WebSocket upgrade, credential check, stream open, the agent's
dial) must be up before that byte can arrive. Rounds alternate between paths.
Under load: the same two while `bulk_streams` connections upload into the sink as fast as
they can, through the same forwarder (for KubeRDE: the same two mux sessions), so a
keystroke or a new stream's first bytes compete with bulk data for each link (issue 11).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.peers import BenchPath
from bench.stats import median, percentile
from bench.target import BANNER
from bench.throughput import (
    CHUNK,
    MeasurementError,
    connect,
    finish_upload,
    raise_unless_all_finished,
    send_chunk,
)

__all__ = [
    "LoadedResult",
    "Sampled",
    "measure_round_trips",
    "measure_setups",
    "measure_under_load",
]

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


@dataclass
class Sampled:
    """One path's latency samples, and the CPU its processes spent on the operations."""

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    #: Operations the CPU was spent on: the samples and, for round trips, their warm-ups.
    operations: int = 0

    def summary(self, scale: float, unit: str) -> dict[str, Any]:
        """Percentiles in `unit` (seconds times `scale`), and CPU µs per operation by role."""
        return {
            f"p50_{unit}": percentile(self.seconds, 0.50) * scale,
            f"p99_{unit}": percentile(self.seconds, 0.99) * scale,
            "samples": len(self.seconds),
            "cpu_us_by_process": {
                role: seconds / self.operations * 1e6 for role, seconds in self.cpu_seconds.items()
            },
        }


def measure_round_trips(
    paths: Sequence[BenchPath], *, count: int, warmup: int, rounds: int
) -> dict[str, Sampled]:
    """Seconds per round trip; `count` samples per path and round."""
    results = {path.key: Sampled() for path in paths}
    for _ in range(rounds):
        for path in paths:
            result = results[path.key]
            with path.metered(result.cpu_seconds):
                result.seconds += _round_trips(path.ports.echo, count, warmup)
            result.operations += count + warmup
    return results


def measure_setups(
    paths: Sequence[BenchPath], *, count: int, warmup: int, rounds: int
) -> dict[str, Sampled]:
    """Seconds from connect to the banner's first byte; `count` per path and round. The
    CPU per setup includes the connection's teardown."""
    results = {path.key: Sampled() for path in paths}
    for path in paths:
        for _ in range(warmup):
            _setup(path.ports.banner)
    for _ in range(rounds):
        for path in paths:
            result = results[path.key]
            with path.metered(result.cpu_seconds):
                result.seconds += [_setup(path.ports.banner) for _ in range(count)]
            result.operations += count
    return results


@dataclass
class LoadedResult:
    """One path's latencies under bulk load, and how fast the bulk moved meanwhile."""

    round_trips: list[float] = field(default_factory=list)
    setups: list[float] = field(default_factory=list)
    bulk_mb_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "rtt_p50_us": percentile(self.round_trips, 0.50) * 1e6,
            "rtt_p99_us": percentile(self.round_trips, 0.99) * 1e6,
            "setup_p50_ms": percentile(self.setups, 0.50) * 1e3,
            "setup_p99_ms": percentile(self.setups, 0.99) * 1e3,
            "bulk_mb_s": median(self.bulk_mb_s),
            "samples": len(self.round_trips) + len(self.setups),
        }


@contextlib.contextmanager
def _bulk(port: int, streams: int) -> Iterator[list[float]]:
    """Upload into the sink on `streams` connections until the block ends; then check every
    byte arrived and append the aggregate MB/s to the yielded list."""
    stop = threading.Event()
    moved: list[int] = []
    errors: list[BaseException] = []

    def upload(sock: socket.socket) -> None:
        sent = 0
        try:
            while not stop.is_set():
                send_chunk(sock, CHUNK)
                sent += CHUNK
            finish_upload(sock, sent)
            moved.append(sent)
        except BaseException as exc:
            errors.append(exc)
        finally:
            sock.close()

    sockets = [connect(port) for _ in range(streams)]
    threads = [threading.Thread(target=upload, args=(sock,), daemon=True) for sock in sockets]
    rates: list[float] = []
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    try:
        yield rates
    finally:
        stop.set()
        for thread in threads:
            thread.join(IO_TIMEOUT)
    raise_unless_all_finished(errors, len(moved), streams, "bulk uploads")
    rates.append(sum(moved) / (time.perf_counter() - began) / 1e6)


def measure_under_load(
    paths: Sequence[BenchPath],
    *,
    bulk_streams: int,
    round_trips: int,
    setups: int,
    rounds: int,
    settle: float = 1.0,
) -> dict[str, LoadedResult]:
    """Round trips and setups on each path while `bulk_streams` uploads run on it; `settle`
    seconds of bulk first, so every queue on the way is full when sampling starts."""
    results = {path.key: LoadedResult() for path in paths}
    for _ in range(rounds):
        for path in paths:
            result = results[path.key]
            with _bulk(path.ports.sink, bulk_streams) as rates:
                time.sleep(settle)
                result.round_trips += _round_trips(path.ports.echo, round_trips, warmup=20)
                result.setups += [_setup(path.ports.banner) for _ in range(setups)]
            result.bulk_mb_s += rates
    return results
