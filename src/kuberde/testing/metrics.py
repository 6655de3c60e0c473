"""Pod metrics (`metrics.k8s.io`, what `kubectl top pod` reads) from the processes' real /proc.

A metrics-server reports each container's CPU as cores averaged over a window and its memory
in use. Here a container is a real process: its CPU is the process's CPU time over its
lifetime (the window), its memory its resident set. Containers without a process (workload
images the fixture does not run) use nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["NONE", "PODS", "Usage", "pod_metrics", "process_usage", "read_usage"]

PODS = "metrics.k8s.io/v1beta1/pods"


@dataclass(frozen=True)
class Usage:
    """CPU in nanocores (averaged over `window` seconds) and memory in bytes."""

    cpu_nanocores: int
    memory_bytes: int
    window: float


NONE = Usage(0, 0, 0.0)


def process_usage(
    stat: str, statm: str, *, uptime: float, ticks_per_second: int, page_size: int
) -> Usage:
    """A process's usage from `/proc/PID/stat`, `/proc/PID/statm` and the system's uptime."""
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14 and 15 (utime, stime) and 22 (starttime), counted from field 3 here.
    cpu_seconds = (int(fields[11]) + int(fields[12])) / ticks_per_second
    age = max(uptime - int(fields[19]) / ticks_per_second, 1e-3)
    resident = int(statm.split()[1]) * page_size
    return Usage(round(cpu_seconds / age * 1e9), resident, age)


def read_usage(pid: int) -> Usage:
    """The usage of a running process; nothing for one that is gone."""
    proc = Path("/proc")
    try:
        stat = (proc / str(pid) / "stat").read_text()
        statm = (proc / str(pid) / "statm").read_text()
        uptime = float((proc / "uptime").read_text().split()[0])
    except (OSError, ValueError):
        return NONE
    return process_usage(
        stat,
        statm,
        uptime=uptime,
        ticks_per_second=os.sysconf("SC_CLK_TCK"),
        page_size=os.sysconf("SC_PAGE_SIZE"),
    )


def pod_metrics(pod: Mapping[str, Any], usage: Mapping[str, Usage]) -> dict[str, Any]:
    """A PodMetrics object, in the units a metrics-server writes (`n` cores, `Ki` bytes)."""
    metadata = pod["metadata"]
    window = max((item.window for item in usage.values()), default=0.0)
    return {
        "kind": "PodMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata.get("namespace"),
            "labels": dict(metadata.get("labels") or {}),
            "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "window": f"{max(round(window), 1)}s",
        "containers": [
            {
                "name": name,
                "usage": {
                    "cpu": f"{item.cpu_nanocores}n",
                    "memory": f"{item.memory_bytes // 1024}Ki",
                },
            }
            for name, item in usage.items()
        ],
    }
