"""HTTP through the app proxy, next to the same app served directly and behind
configurable-http-proxy (CHP, the proxy JupyterHub uses), all up at once in one run.

The app (`bench.httpapp`) is the workload of a `kuberde up` workspace that lists it in
`spec.apps`. A client reaches it the way a non-browser client of the app proxy does: the
gateway's address with the app's host name (`httpbench--OWNER.localhost`) and `Authorization:
Bearer` with the user token `kuberde up` configured (never a token in the URL). The
workspace's copy of the app listens inside the workspace's network namespace, out of the
host's reach; a second copy of the same app on the host is reached directly and through CHP
(`--default-target`, no auth: CHP leaves authentication to JupyterHub), so the app's own
cost cancels out of the ratios.

Each load is a few keep-alive clients sharing a bounded number of requests (and a time
limit): requests per second over the load, latency per request until its body is read.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench import ROOT
from bench.httpapp import LARGE_PATH, LARGE_SIZE, SMALL_PATH
from bench.procs import Processes, StartError, free_port, wait_for, wait_for_port
from bench.stack import BENCH_PYTHON, KUBERDE, clean_env, get_json, workspace_document
from bench.stats import median, percentile
from kuberde.cli import config
from kuberde.gateway.apphost import app_host
from kuberde.local.demo import current_user

__all__ = ["HttpPlan", "Load", "measure_http"]

WORKSPACE = "httpbench"
APP = "web"
START_TIMEOUT = 60.0
REQUEST_TIMEOUT = 60.0
CHP_DIR = ROOT / "bench" / "chp"
CHP_BIN = CHP_DIR / "node_modules" / ".bin" / "configurable-http-proxy"


@dataclass(frozen=True)
class Load:
    """A bounded load: `requests` in all, shared by `clients`, over at most `seconds`."""

    path: str
    requests: int
    clients: int
    seconds: float


@dataclass(frozen=True)
class HttpPlan:
    small: Load
    large: Load
    rounds: int


@dataclass(frozen=True)
class HttpPath:
    key: str
    label: str
    base_url: str
    headers: dict[str, str] = field(default_factory=dict)
    note: str = ""


@dataclass
class _Figures:
    latencies: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    size: int = 0

    def summary(self) -> dict[str, Any]:
        rate = median(self.rates)
        summary: dict[str, Any] = {
            "rps": rate,
            "rounds_rps": self.rates,
            "p50_ms": percentile(self.latencies, 0.50) * 1e3,
            "p99_ms": percentile(self.latencies, 0.99) * 1e3,
            "requests": len(self.latencies),
        }
        if self.size >= 1_000_000:
            summary["mb_s"] = rate * self.size / 1e6
        return summary


def _say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


async def _load(path: HttpPath, load: Load) -> tuple[list[float], float, int]:
    """Per-request latencies, requests per second and the body size of one load."""
    url = path.base_url + load.path
    latencies: list[float] = []
    remaining = load.requests
    size = 0
    deadline = time.perf_counter() + load.seconds
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=load.clients, force_close=False)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal remaining, size
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            began = time.perf_counter()
            async with session.get(url, headers=path.headers) as reply:
                body = await reply.read()
                if reply.status != 200:
                    what = f"{path.label}: {reply.status} for {load.path}"
                    raise StartError(f"{what}: {body[:200]!r}")
            latencies.append(time.perf_counter() - began)
            size = len(body)

    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        began = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(load.clients)))
        elapsed = time.perf_counter() - began
    return latencies, len(latencies) / elapsed, size


def _run_loads(paths: list[HttpPath], plan: HttpPlan) -> dict[str, Any]:
    """Every load on every path, interleaved round by round, after a warm-up each."""
    figures: dict[str, dict[str, _Figures]] = {
        name: {path.key: _Figures() for path in paths} for name in ("small", "large")
    }
    for path in paths:
        asyncio.run(_load(path, Load(SMALL_PATH, 50, plan.small.clients, START_TIMEOUT)))
        asyncio.run(_load(path, Load(LARGE_PATH, 2, 1, START_TIMEOUT)))
    for _ in range(plan.rounds):
        for path in paths:
            for name, load in (("small", plan.small), ("large", plan.large)):
                latencies, rate, size = asyncio.run(_load(path, load))
                own = figures[name][path.key]
                own.latencies += latencies
                own.rates.append(rate)
                own.size = size
    if figures["large"][paths[0].key].size != LARGE_SIZE:
        raise StartError(f"the download was {figures['large'][paths[0].key].size} bytes")
    return {
        name: {key: value.summary() for key, value in by_path.items()}
        for name, by_path in figures.items()
    }


def _start_kuberde(procs: Processes, work: Path, port: int) -> HttpPath:
    """`kuberde up` with the app as its workspace's workload; returns once it serves."""
    cli_config = work / "http-cli-config.json"
    env = clean_env(work, {"KUBERDE_CONFIG": str(cli_config)})
    document = work / "httpbench.yaml"
    document.write_text(
        yaml.safe_dump(
            workspace_document(
                WORKSPACE,
                port,
                _app_command(port),
                apps=[{"name": APP, "port": port}],
            )
        )
    )
    argv = [*KUBERDE, "up", "-f", str(document), "--state-dir", str(work / "http-state")]
    up = procs.start("kuberde-up-http", [*argv, "--listen", "127.0.0.1:0"], env=env)
    url = up.wait_for_log(r"KubeRDE is up: gateway (\S+)", START_TIMEOUT).group(1)
    token = config.load(cli_config).token
    wait_for(
        lambda: bool(get_json(f"{url}/api/workspaces/{WORKSPACE}", None, token)["online"]),
        START_TIMEOUT,
        "the app's workspace to be online",
        watch=[up],
    )
    gateway_port = url.rsplit(":", 1)[1]
    host = f"{app_host(WORKSPACE, current_user(), None, 'localhost')}:{gateway_port}"
    return HttpPath(
        "kuberde",
        "KubeRDE app proxy",
        url,
        {"Host": host, "Authorization": f"Bearer {token}"},
        note=f"Host {host}, Authorization: Bearer (user token), no TLS",
    )


def _chp_installed() -> bool:
    """configurable-http-proxy from bench/chp's lock file (npm ci), if node and npm exist."""
    if CHP_BIN.exists():
        return True
    if shutil.which("node") is None or shutil.which("npm") is None:
        return False
    _say("installing configurable-http-proxy from npm into bench/chp/node_modules")
    done = subprocess.run(
        ["npm", "ci", "--prefix", str(CHP_DIR), "--no-audit", "--no-fund", "--loglevel=error"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        _say(f"npm ci failed: {done.stderr.strip()[-500:]}")
    return CHP_BIN.exists()


def _start_chp(procs: Processes, work: Path, port: int) -> HttpPath | None:
    if not _chp_installed():
        _say("configurable-http-proxy unavailable (no node/npm): no CHP figures or ratios")
        return None
    listen, api = free_port(), free_port()
    argv = [
        str(CHP_BIN),
        "--ip",
        "127.0.0.1",
        "--port",
        str(listen),
        "--api-ip",
        "127.0.0.1",
        "--api-port",
        str(api),
        "--default-target",
        f"http://127.0.0.1:{port}",
        "--log-level",
        "warn",
    ]
    env = clean_env(work, {"CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(16)})
    child = procs.start("chp", argv, env=env)
    wait_for_port(listen, START_TIMEOUT, "configurable-http-proxy to listen")
    child.check_running()
    installed = CHP_DIR / "node_modules" / "configurable-http-proxy" / "package.json"
    version = json.loads(installed.read_text())["version"]
    return HttpPath(
        "chp",
        "configurable-http-proxy",
        f"http://127.0.0.1:{listen}",
        note=f"CHP {version} on Node.js, --default-target, no auth (JupyterHub's hub does it)",
    )


def _app_command(port: int, python: str = BENCH_PYTHON) -> list[str]:
    return [python, "-m", "bench.httpapp", "--port", str(port)]


def _start_direct(procs: Processes, port: int) -> HttpPath:
    """The host's copy of the app, the direct path and CHP's target."""
    child = procs.start("httpapp-direct", _app_command(port, sys.executable), cwd=ROOT)
    wait_for_port(port, START_TIMEOUT, "the app to listen on the host")
    child.check_running()
    return HttpPath("direct", "direct", f"http://127.0.0.1:{port}")


def _answers(path: HttpPath) -> bool:
    """Whether the app answers through `path` yet (the workload may start after its agent)."""
    request = urllib.request.Request(path.base_url + SMALL_PATH, headers=path.headers)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def measure_http(procs: Processes, work: Path, plan: HttpPlan) -> dict[str, Any]:
    port = free_port()
    paths = [_start_direct(procs, port)]
    kuberde = _start_kuberde(procs, work, free_port())
    chp = _start_chp(procs, work, port)
    paths += [kuberde] if chp is None else [chp, kuberde]
    for path in paths:
        what = f"the app to answer through {path.label}"
        wait_for(functools.partial(_answers, path), START_TIMEOUT, what)
    _say(
        f"HTTP: {plan.small.requests} small GETs and {plan.large.requests} 10 MB downloads"
        f" per path and round, {plan.rounds} round(s)"
    )
    results = _run_loads(paths, plan)
    results["paths"] = {path.key: {"label": path.label, "note": path.note} for path in paths}
    results["clients"] = {"small": plan.small.clients, "large": plan.large.clients}
    return results
