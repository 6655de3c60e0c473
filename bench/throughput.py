"""Upload throughput into the sink, one stream and many, and the CPU each path spends on it.

The client uses blocking sockets with 1 MiB sends (the kernel does the work, the GIL is
released), one thread per stream, so it is never the bottleneck of a path. A run ends when
the sink reports, after our half-close, that it received every byte. Repetitions are
interleaved across paths so slow drift on a shared machine hits every path alike.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.peers import BenchPath
from bench.stats import median
from bench.target import COUNT_SIZE

__all__ = [
    "CHUNK",
    "MeasurementError",
    "ThroughputResult",
    "connect",
    "finish_upload",
    "measure_throughput",
    "send_chunk",
]

CHUNK = 1024 * 1024
IO_TIMEOUT = 120.0
_PAYLOAD = memoryview(os.urandom(CHUNK))


class MeasurementError(RuntimeError):
    """A run whose bytes did not all arrive: its number would be meaningless."""


def raise_unless_all_finished(
    errors: Sequence[BaseException], finished: int, streams: int, what: str
) -> None:
    """A figure from streams that failed or ran out of time would be wrong, not slow."""
    if errors:
        raise MeasurementError(f"{len(errors)} of {streams} {what} failed: {errors[0]!r}")
    if finished < streams:
        raise MeasurementError(f"{streams - finished} {what} did not finish in time")


@dataclass
class ThroughputResult:
    single_mb_s: list[float] = field(default_factory=list)
    multi_mb_s: list[float] = field(default_factory=list)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    bytes_moved: int = 0

    def summary(self) -> dict[str, Any]:
        total_cpu = sum(self.cpu_seconds.values())
        gigabytes = self.bytes_moved / 1e9
        return {
            "single_mb_s": median(self.single_mb_s),
            "single_runs_mb_s": self.single_mb_s,
            "multi_mb_s": median(self.multi_mb_s),
            "multi_runs_mb_s": self.multi_mb_s,
            "cpu_s_per_gb": total_cpu / gigabytes if self.cpu_seconds and gigabytes else None,
            "cpu_s_per_gb_by_process": {
                role: seconds / gigabytes for role, seconds in self.cpu_seconds.items()
            },
            "bytes_moved": self.bytes_moved,
        }


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def send_chunk(sock: socket.socket, size: int) -> None:
    """Send `size` (at most CHUNK) bytes of the shared random payload."""
    sock.sendall(_PAYLOAD[:size])


def finish_upload(sock: socket.socket, total: int) -> None:
    """Half-close and check that the sink counted all `total` bytes."""
    sock.shutdown(socket.SHUT_WR)
    reply = _recv_exactly(sock, COUNT_SIZE)
    received = int.from_bytes(reply, "big") if len(reply) == COUNT_SIZE else -1
    if received != total:
        raise MeasurementError(f"sent {total} bytes, the sink reports {received}")


def _upload(sock: socket.socket, total: int) -> None:
    sent = 0
    while sent < total:
        size = min(CHUNK, total - sent)
        send_chunk(sock, size)
        sent += size
    finish_upload(sock, total)


def _streams(port: int, streams: int, per_stream: int) -> float:
    """Seconds for `streams` parallel uploads of `per_stream` bytes (connect excluded)."""
    sockets = [connect(port) for _ in range(streams)]
    start = threading.Barrier(streams + 1, timeout=IO_TIMEOUT)
    errors: list[BaseException] = []
    ended: list[float] = []

    def upload(sock: socket.socket) -> None:
        try:
            start.wait()
            _upload(sock, per_stream)
        except BaseException as exc:
            errors.append(exc)
        finally:
            ended.append(time.perf_counter())
            sock.close()

    threads = [threading.Thread(target=upload, args=(sock,), daemon=True) for sock in sockets]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join(IO_TIMEOUT)
    raise_unless_all_finished(errors, len(ended), streams, "streams")
    return max(ended) - began


def measure_throughput(
    paths: Sequence[BenchPath],
    *,
    single_bytes: int,
    streams: int,
    per_stream_bytes: int,
    repetitions: int,
) -> dict[str, ThroughputResult]:
    results = {path.key: ThroughputResult() for path in paths}
    for path in paths:  # warm-up: first connections pay for imports and handshakes
        _streams(path.ports.sink, 2, CHUNK)
    for _ in range(repetitions):
        for path in paths:
            result = results[path.key]
            with path.metered(result.cpu_seconds):
                seconds = _streams(path.ports.sink, 1, single_bytes)
                result.single_mb_s.append(single_bytes / seconds / 1e6)
                seconds = _streams(path.ports.sink, streams, per_stream_bytes)
                result.multi_mb_s.append(streams * per_stream_bytes / seconds / 1e6)
            result.bytes_moved += single_bytes + streams * per_stream_bytes
    return results
