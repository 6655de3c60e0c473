"""`python -m bench [--quick] [--only NAME[,NAME]]`: run the benchmarks, print the tables,
write the results to bench/results/latest.json.

Every path is started once and kept up while the path benchmarks run interleaved, so each
ratio compares numbers taken side by side. Every process the run starts is stopped when it
ends, on success, on error, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import apphttp, operator_scale, peers, report
from bench.httpapp import LARGE_PATH, SMALL_PATH
from bench.latency import measure_round_trips, measure_setups, measure_under_load
from bench.memory import measure_gateway_memory
from bench.procs import Processes
from bench.startup import measure_startup
from bench.throughput import measure_throughput
from bench.wake import measure_wake

BENCHMARKS = (
    "throughput",
    "rtt",
    "setup",
    "loaded",
    "startup",
    "memory",
    "wake",
    "http",
    "operator",
)
PATH_BENCHMARKS = frozenset({"throughput", "rtt", "setup", "loaded"})
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
MB = 1_000_000


@dataclass(frozen=True)
class LoadPlan:
    """Round trips and setups sampled while `bulk_streams` uploads share the path."""

    bulk_streams: int
    round_trips: int
    setups: int
    rounds: int


@dataclass(frozen=True)
class Plan:
    """How much of everything to do; `--quick` trades precision for time."""

    single_bytes: int
    streams: int
    per_stream_bytes: int
    throughput_repetitions: int
    round_trips: int
    rtt_rounds: int
    setups: int
    setup_rounds: int
    loaded: LoadPlan
    agents: int
    wake_rounds: int
    workload_starts: int
    startup_rounds: int
    http: apphttp.HttpPlan
    operator: operator_scale.Plan


FULL = Plan(
    single_bytes=256 * MB,
    streams=16,
    per_stream_bytes=32 * MB,
    throughput_repetitions=5,
    round_trips=2000,
    rtt_rounds=5,
    setups=50,
    setup_rounds=4,
    loaded=LoadPlan(bulk_streams=4, round_trips=500, setups=50, rounds=3),
    agents=1000,
    wake_rounds=5,
    workload_starts=5,
    startup_rounds=10,
    http=apphttp.HttpPlan(
        small=apphttp.Load(SMALL_PATH, requests=5000, clients=4, seconds=120.0),
        large=apphttp.Load(LARGE_PATH, requests=100, clients=4, seconds=120.0),
        rounds=3,
    ),
    operator=operator_scale.FULL,
)
QUICK = Plan(
    single_bytes=64 * MB,
    streams=16,
    per_stream_bytes=4 * MB,
    throughput_repetitions=3,
    round_trips=500,
    rtt_rounds=1,
    setups=50,
    setup_rounds=1,
    loaded=LoadPlan(bulk_streams=4, round_trips=200, setups=30, rounds=1),
    agents=1000,
    wake_rounds=2,
    workload_starts=3,
    startup_rounds=5,
    http=apphttp.HttpPlan(
        small=apphttp.Load(SMALL_PATH, requests=1000, clients=4, seconds=30.0),
        large=apphttp.Load(LARGE_PATH, requests=20, clients=4, seconds=30.0),
        rounds=1,
    ),
    operator=operator_scale.QUICK,
)


def _say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so every `finally` (and process cleanup) runs."""
    raise KeyboardInterrupt


def _raise_fd_limit() -> None:
    """A thousand agents need a thousand sockets in the gateway; children inherit this."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _ssh_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10)
        return done.stderr.strip()
    return "unknown"


def _meta(quick: bool, selected: list[str]) -> dict[str, Any]:
    from kuberde import __version__

    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "benchmarks": selected,
        "cpus": os.cpu_count(),
        "load_before": " ".join(f"{value:.2f}" for value in os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "kuberde": __version__,
        "openssh": _ssh_version(),
    }


def _run_paths(procs: Processes, work: Path, plan: Plan, selected: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    _say("starting the target, sshd + ssh -L (twice), and KubeRDE over ws:// and wss://")
    _, ports = peers.start_target(procs)
    paths = [peers.direct(ports)]
    openssh = peers.find_openssh()
    if openssh is None:
        _say("OpenSSH (ssh and sshd) not found: no ssh -L figures or ratios in this run")
    else:
        paths.append(peers.start_ssh(procs, work, ports, openssh))
        paths.append(peers.start_ssh(procs, work, ports, openssh, tty=True))
    paths.append(peers.start_kuberde(procs, work, ports, tls=False))
    paths.append(peers.start_kuberde(procs, work, ports, tls=True))
    results["paths"] = {path.key: {"label": path.label, "note": path.note} for path in paths}
    if "throughput" in selected:
        _say("throughput and CPU per GB")
        measured = measure_throughput(
            paths,
            single_bytes=plan.single_bytes,
            streams=plan.streams,
            per_stream_bytes=plan.per_stream_bytes,
            repetitions=plan.throughput_repetitions,
        )
        results["throughput"] = {key: value.summary() for key, value in measured.items()}
    if "rtt" in selected:
        _say("round trips")
        samples = measure_round_trips(
            paths, count=plan.round_trips, warmup=200, rounds=plan.rtt_rounds
        )
        results["rtt"] = {key: value.summary(1e6, "us") for key, value in samples.items()}
    if "setup" in selected:
        _say("new-stream setup")
        samples = measure_setups(paths, count=plan.setups, warmup=10, rounds=plan.setup_rounds)
        results["setup"] = {key: value.summary(1e3, "ms") for key, value in samples.items()}
    if "loaded" in selected:
        load = plan.loaded
        _say(f"round trips and new-stream setup beside {load.bulk_streams} bulk uploads")
        loaded = measure_under_load(
            paths,
            bulk_streams=load.bulk_streams,
            round_trips=load.round_trips,
            setups=load.setups,
            rounds=load.rounds,
        )
        results["loaded"] = {key: value.summary() for key, value in loaded.items()}
        results["loaded_bulk_streams"] = load.bulk_streams
    return results


def _run(work: Path, plan: Plan, selected: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with Processes(work) as procs:
        if PATH_BENCHMARKS.intersection(selected):
            results.update(_run_paths(procs, work, plan, selected))
            procs.stop_all()
        if "startup" in selected:
            _say(f"start-up: CLI, connect's first byte, ssh logins ({plan.startup_rounds} rounds)")
            results["startup"] = measure_startup(procs, work, rounds=plan.startup_rounds).summary()
            procs.stop_all()
        if "memory" in selected:
            results["memory"] = {}
            for tls in (False, True):
                key = "wss" if tls else "ws"
                _say(f"gateway memory with {plan.agents} idle agents over {key}://")
                memory = measure_gateway_memory(procs, work, tls=tls, agents=plan.agents)
                results["memory"][key] = memory.summary()
        if "wake" in selected:
            _say(f"wake latency ({plan.wake_rounds} rounds)")
            wake = measure_wake(
                procs, work, rounds=plan.wake_rounds, workload_starts=plan.workload_starts
            )
            results["wake"] = wake.summary()
            procs.stop_all()
        if "http" in selected:
            _say("HTTP through the app proxy, direct and behind configurable-http-proxy")
            results["http"] = apphttp.measure_http(procs, work, plan.http)
            procs.stop_all()
        if "operator" in selected:
            _say(f"operator at scale ({plan.operator.agents} RDEAgents on the KMock emulator)")
            operator_work = work / "operator"
            operator_work.mkdir()
            results["operator"] = asyncio.run(
                operator_scale.measure(procs, operator_work, plan.operator)
            )
    return results


def _selection(values: list[str]) -> list[str]:
    chosen = {name.strip() for value in values for name in value.split(",") if name.strip()}
    unknown = chosen - set(BENCHMARKS)
    if unknown:
        names = ", ".join(sorted(unknown))
        raise SystemExit(f"unknown benchmark(s) {names}; choose from {', '.join(BENCHMARKS)}")
    return [name for name in BENCHMARKS if name in chosen] or list(BENCHMARKS)


@contextlib.contextmanager
def _work_dir(keep: bool) -> Iterator[Path]:
    """A private scratch directory, removed afterwards unless asked or something failed."""
    work = Path(tempfile.mkdtemp(prefix="kuberde-bench-"))
    failed = False
    try:
        yield work
    except BaseException:
        failed = True
        raise
    finally:
        if keep or failed:
            _say(f"logs and state kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (a few minutes)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these benchmarks (repeatable or comma-separated): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--keep", action="store_true", help="keep logs and state directories")
    args = parser.parse_args(argv)
    selected = _selection(args.only)
    plan = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _interrupt)
    _raise_fd_limit()
    began = time.monotonic()
    results: dict[str, Any] = {"meta": _meta(args.quick, selected)}
    try:
        with _work_dir(args.keep) as work:
            results.update(_run(work, plan, selected))
    except KeyboardInterrupt:
        _say("interrupted; every process was stopped")
        return 130
    except Exception:
        traceback.print_exc()
        _say("failed; every process was stopped")
        return 1
    results["meta"]["duration_s"] = round(time.monotonic() - began, 1)
    results["meta"]["load_after"] = " ".join(f"{value:.2f}" for value in os.getloadavg())
    results["ratios"] = report.ratios(results)
    results["goals"] = [goal.as_json() for goal in report.goals(results)]
    print(report.render(results))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    _say(f"results written to {args.output} ({results['meta']['duration_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
