"""Tables, ratios and goal checks from a results document; no I/O.

The results document (also written as JSON) maps each section to per-path figures. Ratios
are always to `ssh -L` (the brief's `ssh -N -L`, default cipher) and to direct TCP, from the
same run; the app proxy's HTTP figures are to the app served directly and behind
configurable-http-proxy. A section that was not run is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench import operator_scale

__all__ = ["Goal", "goals", "ratios", "render"]

SSH = "ssh"
SSH_TTY = "ssh_tty"
DIRECT = "direct"
KUBERDE = ("ws", "wss")
CHP = "chp"
APP_PROXY = "kuberde"
HTTP_LOADS = {"small": "small GET (128 B)", "large": "10 MB download"}

Results = dict[str, Any]

_NAGLE_NOTE = (
    "ssh -N -L waits out Nagle + delayed ACK (~40 ms) on each new forward: OpenSSH sets\n"
    "TCP_NODELAY only for interactive sessions. The tty row is the same forwards from a\n"
    "terminal session (`ssh -tt -L ... sleep`).\n"
)


@dataclass(frozen=True)
class Goal:
    metric: str  # the table it belongs under
    name: str
    target: str
    measured: str
    met: bool | None  # None: not measurable in this run

    def as_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "goal": self.name,
            "target": self.target,
            "measured": self.measured,
            "met": self.met,
        }


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base <= 0:
        return None
    return value / base


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "—" if value is None else f"{value:,.{digits}f}{suffix}"


def _table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], *, text_columns: int = 1
) -> str:
    """A plain-text table: the first `text_columns` columns left-aligned, numbers right."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        aligned = (
            cell.ljust(width) if index < text_columns else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(aligned).rstrip()

    rule = "-" * len(line(headers))
    return "\n".join([title, rule, line(headers), rule, *(line(row) for row in rows), ""])


def _labels(results: Results) -> dict[str, str]:
    return {key: info["label"] for key, info in results.get("paths", {}).items()}


def _section_rows(
    results: Results,
    section: str,
    field: str,
    columns: Sequence[tuple[str, Callable[[dict[str, Any]], str]]],
) -> tuple[list[str], list[list[str]]]:
    """One row per path: its columns, then `field` as a ratio to ssh -L and to direct."""
    data: dict[str, dict[str, Any]] = results[section]
    ssh = data[SSH][field] if SSH in data else None
    base = data[DIRECT][field] if DIRECT in data else None
    rows = []
    for key, label in _labels(results).items():
        if key not in data:
            continue
        own = data[key][field]
        rows.append(
            [
                label,
                *(column(data[key]) for _, column in columns),
                _fmt(_ratio(own, ssh)),
                _fmt(_ratio(own, base)),
            ]
        )
    return ["path", *(name for name, _ in columns), "x ssh -L", "x direct"], rows


def ratios(results: Results) -> dict[str, dict[str, float | None]]:
    """KubeRDE's figures divided by ssh -L's and direct TCP's, per metric and transport."""
    pick = {
        "throughput_single": ("throughput", "single_mb_s"),
        "throughput_16": ("throughput", "multi_mb_s"),
        "cpu_s_per_gb": ("throughput", "cpu_s_per_gb"),
        "rtt_p50": ("rtt", "p50_us"),
        "rtt_p99": ("rtt", "p99_us"),
        "setup_p50": ("setup", "p50_ms"),
        "setup_p99": ("setup", "p99_ms"),
    }
    out: dict[str, dict[str, float | None]] = {}
    for metric, (section, field) in pick.items():
        data = results.get(section)
        if not data:
            continue
        for key in KUBERDE:
            if key not in data:
                continue
            own = data[key][field]
            out.setdefault(metric, {}).update(
                {
                    f"{key}/{base}": _ratio(own, data[base][field] if base in data else None)
                    for base in (SSH, SSH_TTY, DIRECT)
                }
            )
    out.update(_http_ratios(results.get("http")))
    rtt = results.get("rtt")
    if rtt and DIRECT in rtt and SSH in rtt:
        ssh_overhead = rtt[SSH]["p50_us"] - rtt[DIRECT]["p50_us"]
        for key in KUBERDE:
            if key in rtt:
                overhead = rtt[key]["p50_us"] - rtt[DIRECT]["p50_us"]
                out.setdefault("rtt_overhead", {})[f"{key}/ssh"] = _ratio(overhead, ssh_overhead)
    return out


def _http_ratios(http: dict[str, Any] | None) -> dict[str, dict[str, float | None]]:
    """The app proxy's requests per second and latencies over direct's and CHP's."""
    out: dict[str, dict[str, float | None]] = {}
    for load in HTTP_LOADS:
        data = (http or {}).get(load, {})
        if APP_PROXY not in data:
            continue
        for field in ("rps", "p50_ms", "p99_ms"):
            out[f"http_{load}_{field.removesuffix('_ms')}"] = {
                f"{APP_PROXY}/{base}": _ratio(
                    data[APP_PROXY][field], data[base][field] if base in data else None
                )
                for base in (DIRECT, CHP)
            }
    return out


def _http_tables(http: dict[str, Any]) -> list[Section]:
    clients = http.get("clients", {})
    tables = []
    for load, what in HTTP_LOADS.items():
        data = http.get(load, {})
        rate_base = {base: data[base]["rps"] for base in (DIRECT, CHP) if base in data}
        p50_base = {base: data[base]["p50_ms"] for base in (DIRECT, CHP) if base in data}
        rows = []
        for key, info in http.get("paths", {}).items():
            if key not in data:
                continue
            own = data[key]
            rows.append(
                [
                    info["label"],
                    _fmt(own["rps"], 1),
                    _fmt(own.get("mb_s"), 1) if "mb_s" in own else "",
                    _fmt(own["p50_ms"], 2),
                    _fmt(own["p99_ms"], 2),
                    *(_fmt(_ratio(own["rps"], rate_base.get(base))) for base in (DIRECT, CHP)),
                    *(_fmt(_ratio(own["p50_ms"], p50_base.get(base))) for base in (DIRECT, CHP)),
                ]
            )
        headers = ["path", "req/s", "MB/s", "p50 ms", "p99 ms"]
        headers += ["req/s x direct", "req/s x CHP", "p50 x direct", "p50 x CHP"]
        title = (
            f"HTTP {what} through the app proxy, {clients.get(load, '?')} keep-alive clients"
            " (req/s higher is better, latency lower)"
        )
        tables.append(("http", _table(title, headers, rows)))
    notes = [
        f"  {info['label']}: {info['note']}\n"
        for info in http.get("paths", {}).values()
        if info.get("note")
    ]
    text = tables[-1][1] + "".join(notes)
    return [*tables[:-1], ("http", text)]


def _rtt_overhead(results: Results, key: str) -> float | None:
    rtt = results.get("rtt", {})
    if key not in rtt or DIRECT not in rtt:
        return None
    overhead: float = rtt[key]["p50_us"] - rtt[DIRECT]["p50_us"]
    return overhead


def goals(results: Results) -> list[Goal]:
    """The issue's goals (measured, not test thresholds) against this run."""
    found: list[Goal] = []
    cut = ratios(results)
    for metric, name in (("single", "single-stream"), ("multi", "16-stream")):
        for key in KUBERDE:
            ratio = cut.get(f"throughput_{'16' if metric == 'multi' else 'single'}", {}).get(
                f"{key}/ssh"
            )
            if ratio is None:
                continue
            target = "≥ 1.00x ssh -L" if key == "ws" else "as close to ssh -L as possible"
            found.append(
                Goal(
                    metric,
                    f"{name} throughput over {key}",
                    target,
                    f"{ratio:.2f}x ssh -L",
                    ratio >= 1.0 if key == "ws" else None,
                )
            )
    for key in KUBERDE:
        ratio = cut.get("rtt_overhead", {}).get(f"{key}/ssh")
        overhead = _rtt_overhead(results, key)
        if overhead is None:
            continue
        found.append(
            Goal(
                "rtt",
                f"round-trip overhead over {key}",
                "≤ 3x ssh -L's overhead",
                f"{overhead:.0f} µs = {_fmt(ratio)}x ssh's",
                ratio <= 3.0 if ratio is not None else None,
            )
        )
    for key in KUBERDE:
        setup = results.get("setup", {}).get(key)
        if setup is not None:
            found.append(
                Goal(
                    "setup",
                    f"new-stream setup p50 over {key}",
                    "< 2 ms",
                    f"{setup['p50_ms']:.2f} ms",
                    setup["p50_ms"] < 2.0,
                )
            )
    for key, memory in results.get("memory", {}).items():
        found.append(
            Goal(
                "memory",
                f"gateway memory per idle agent over {key}",
                "< 100 KiB",
                f"{memory['kib_per_agent']:.1f} KiB",
                memory["kib_per_agent"] < 100.0,
            )
        )
    found += _startup_goals(results.get("startup"))
    found += _path_goals(results, cut)
    wake = results.get("wake")
    if wake is not None:
        found.append(
            Goal(
                "wake",
                "wake latency on top of the workload's start",
                "< 1 s",
                f"{wake['overhead_s']:.2f} s",
                wake["overhead_s"] < 1.0,
            )
        )
    return found


def _path_goals(results: Results, cut: dict[str, dict[str, float | None]]) -> list[Goal]:
    """Issue 15's goals for the multiplexed port-forward (one WebSocket, a stream each)."""
    found: list[Goal] = []
    for key, limit in (("ws", 0.5), ("wss", 1.0)):
        setup = results.get("setup", {}).get(key)
        if setup is not None:
            found.append(
                Goal(
                    "setup",
                    f"new-stream setup p50 over {key} (issue 15)",
                    f"< {limit:g} ms",
                    f"{setup['p50_ms']:.2f} ms",
                    setup["p50_ms"] < limit,
                )
            )
    tty = cut.get("setup_p50", {}).get("ws/ssh_tty")
    if tty is not None:
        found.append(
            Goal(
                "setup",
                "new forwarded connection over ws",
                "≤ 1x ssh -L tty",
                f"{tty:.2f}x",
                tty <= 1.0,
            )
        )
    for metric, field in (("single", "throughput_single"), ("multi", "throughput_16")):
        for key, floor in (("ws", 1.2), ("wss", 0.9)):
            ratio = cut.get(field, {}).get(f"{key}/ssh")
            if ratio is not None:
                found.append(
                    Goal(
                        metric,
                        f"{metric} throughput over {key} (issue 15)",
                        f"≥ {floor:g}x ssh -L",
                        f"{ratio:.2f}x",
                        ratio >= floor,
                    )
                )
    overhead = cut.get("rtt_overhead", {}).get("ws/ssh")
    if overhead is not None:
        found.append(
            Goal(
                "rtt",
                "round-trip overhead over ws (issue 15)",
                "≤ 2x ssh -L's",
                f"{overhead:.2f}x",
                overhead <= 2.0,
            )
        )
    return found


def _startup_goals(startup: dict[str, Any] | None) -> list[Goal]:
    """Issue 15: ssh through KubeRDE vs plain ssh, connect's first byte, CLI start-up."""
    if startup is None:
        return []
    ssh = startup["ssh"]
    ratio = _ratio(ssh["kuberde"]["p50_ms"], ssh["direct"]["p50_ms"])
    slowest = max(startup["cli"].items(), key=lambda item: item[1]["p50_ms"])
    first = startup["connect_first_byte"]["p50_ms"]
    return [
        Goal(
            "startup",
            "`ssh NAME.kuberde true` wall time",
            "≤ 1.3x plain ssh",
            f"{_fmt(ratio)}x plain ssh",
            ratio <= 1.3 if ratio is not None else None,
        ),
        Goal(
            "startup",
            "`kuberde connect` first byte from process start",
            "< 150 ms",
            f"{first:.0f} ms",
            first < 150.0,
        ),
        Goal(
            "startup",
            "slowest other `kuberde` command's start-up",
            "< 300 ms",
            f"{slowest[1]['p50_ms']:.0f} ms (`kuberde {slowest[0]}`)",
            slowest[1]["p50_ms"] < 300.0,
        ),
    ]


def _startup_table(results: Results) -> str:
    startup = results["startup"]
    direct = startup["ssh"]["direct"]["p50_ms"]
    labels = {
        "direct": "ssh -p PORT 127.0.0.1 true",
        "ssh_l": "ssh through ssh -L",
        "kuberde": "ssh NAME.kuberde true",
    }
    rows = [
        [labels[way], _fmt(v["p50_ms"], 1), _fmt(v["max_ms"], 1), _fmt(_ratio(v["p50_ms"], direct))]
        for way, v in startup["ssh"].items()
    ]
    first = startup["connect_first_byte"]
    rows.append(
        ["kuberde connect → first byte", _fmt(first["p50_ms"], 1), _fmt(first["max_ms"], 1), ""]
    )
    rows += [
        [f"kuberde {name}", _fmt(v["p50_ms"], 1), _fmt(v["max_ms"], 1), ""]
        for name, v in startup["cli"].items()
    ]
    start = _table(
        "Start-up: wall time from process start (lower is better; x = to plain ssh)",
        ["", "p50 ms", "max ms", "x ssh"],
        rows,
    )
    copy = startup["copy_mb_s"]
    copy_rows = [
        [
            labels[way].removesuffix(" true"),
            *(
                cell
                for direction in ("up", "down")
                for cell in (
                    _fmt(rates[direction], 0),
                    _fmt(_ratio(rates[direction], copy["direct"][direction])),
                )
            ),
        ]
        for way, rates in copy.items()
    ]
    return (
        start
        + "\n"
        + _table(
            "ssh bulk copy, 256 MiB: MB/s p50 (higher is better; x = to plain ssh)",
            ["", "up MB/s", "x ssh", "down MB/s", "x ssh"],
            copy_rows,
        )
    )


def _number(field: str, digits: int) -> Callable[[dict[str, Any]], str]:
    return lambda data: _fmt(data.get(field), digits)


def _runs(field: str) -> Callable[[dict[str, Any]], str]:
    return lambda data: " ".join(f"{value:.0f}" for value in data[field])


def _share(role: str) -> Callable[[dict[str, Any]], str]:
    return lambda data: _fmt(data["cpu_s_per_gb_by_process"].get(role))


Section = tuple[str, str]  # (metric, table text)


def _throughput_tables(results: Results) -> list[Section]:
    tables = []
    for metric, title in (
        ("single", "Single-stream upload throughput, MB/s (10^6 B/s; higher is better)"),
        ("multi", "16-stream upload throughput, MB/s (aggregate; higher is better)"),
    ):
        field = f"{metric}_mb_s"
        runs = field.replace("_mb_s", "_runs_mb_s")
        headers, rows = _section_rows(
            results,
            "throughput",
            field,
            [("MB/s", _number(field, 0)), ("runs", _runs(runs))],
        )
        tables.append((metric, _table(title, headers, rows)))
    data = results["throughput"]
    roles = sorted({role for d in data.values() for role in d["cpu_s_per_gb_by_process"]})
    headers, rows = _section_rows(
        results,
        "throughput",
        "cpu_s_per_gb",
        [("CPU s/GB", _number("cpu_s_per_gb", 2)), *((role, _share(role)) for role in roles)],
    )
    title = "CPU seconds per GB moved, summed over the path's processes (lower is better)"
    tables.append(("cpu", _table(title, headers[:-1], [row[:-1] for row in rows])))
    return tables


def _latency_tables(results: Results) -> list[Section]:
    tables = []
    if "rtt" in results:
        cut = ratios(results).get("rtt_overhead", {})
        headers, rows = _section_rows(
            results,
            "rtt",
            "p50_us",
            [("p50 µs", _number("p50_us", 0)), ("p99 µs", _number("p99_us", 0))],
        )
        keys = [key for key in _labels(results) if key in results["rtt"]]
        headers += ["overhead µs", "overhead x ssh's"]
        for key, row in zip(keys, rows, strict=True):
            row += [
                _fmt(_rtt_overhead(results, key), 0),
                _fmt(cut.get(f"{key}/ssh")) if key in KUBERDE else "",
            ]
        title = "1-byte round trip on an open connection (lower is better; overhead = p50 - direct)"
        tables.append(("rtt", _table(title, headers, rows)))
    if "setup" in results:
        headers, rows = _section_rows(
            results,
            "setup",
            "p50_ms",
            [("p50 ms", _number("p50_ms", 3)), ("p99 ms", _number("p99_ms", 3))],
        )
        tty = results["setup"].get(SSH_TTY, {}).get("p50_ms")
        keys = [key for key in _labels(results) if key in results["setup"]]
        headers.append("x ssh tty")
        for key, row in zip(keys, rows, strict=True):
            row.append(_fmt(_ratio(results["setup"][key]["p50_ms"], tty)))
        title = "New stream: connect → first byte of the server's banner (lower is better)"
        note = _NAGLE_NOTE if tty is not None else ""
        tables.append(("setup", _table(title, headers, rows) + note))
    if "rtt" in results or "setup" in results:
        tables.append(("latency_cpu", _latency_cpu_table(results)))
    if "loaded" in results:
        headers, rows = _section_rows(
            results,
            "loaded",
            "setup_p50_ms",
            [
                ("rtt p50 µs", _number("rtt_p50_us", 0)),
                ("rtt p99 µs", _number("rtt_p99_us", 0)),
                ("setup p50 ms", _number("setup_p50_ms", 2)),
                ("setup p99 ms", _number("setup_p99_ms", 2)),
                ("bulk MB/s", _number("bulk_mb_s", 0)),
            ],
        )
        title = (
            f"Under load: round trip and new-stream setup beside "
            f"{results.get('loaded_bulk_streams', '?')} bulk uploads on the same path "
            "(lower is better)"
        )
        tables.append(("loaded", _table(title, headers, rows)))
    return tables


def _latency_cpu_table(results: Results) -> str:
    """Where an operation's time goes: CPU µs per round trip and per new stream, by process."""
    sections = [name for name in ("rtt", "setup") if name in results]
    spent = {
        (key, name): results[name][key].get("cpu_us_by_process", {})
        for name in sections
        for key in _labels(results)
        if key in results[name]
    }
    roles = sorted({role for by_role in spent.values() for role in by_role})
    kinds = {"rtt": "round trip", "setup": "new stream"}
    rows = [
        [
            label,
            kinds[name],
            _fmt(sum(by_role.values()), 0),
            *(_fmt(by_role.get(role), 0) for role in roles),
        ]
        for key, label in _labels(results).items()
        for name in sections
        if (by_role := spent.get((key, name)))
    ]
    title = (
        "CPU µs per round trip and per new stream (incl. its teardown), by process "
        "(lower is better)"
    )
    return _table(title, ["path", "operation", "total", *roles], rows, text_columns=2)


def _memory_table(results: Results) -> str:
    rows = [
        [
            f"KubeRDE {key}",
            f"{m['agents']:,}",
            _fmt(m["baseline_rss_kib"] / 1024, 1),
            _fmt(m["loaded_rss_kib"] / 1024, 1),
            _fmt(m["kib_per_agent"], 1),
            _fmt(m["connect_seconds"], 1),
        ]
        for key, m in results["memory"].items()
    ]
    return _table(
        "Gateway memory per idle connected agent (RSS; lower is better)",
        ["gateway", "agents", "before MiB", "after MiB", "KiB/agent", "connect s"],
        rows,
    )


def _wake_table(results: Results) -> str:
    wake = results["wake"]
    rows = [
        [
            "wake (first byte → echo)",
            _fmt(wake["wake_s"], 3),
            " ".join(f"{v:.3f}" for v in wake["wake_rounds_s"]),
        ],
        [
            "workload start (standalone)",
            _fmt(wake["workload_start_s"], 3),
            " ".join(f"{v:.3f}" for v in wake["workload_start_runs_s"]),
        ],
        ["overhead (wake - workload start)", _fmt(wake["overhead_s"], 3), ""],
    ]
    return _table("Wake latency under `kuberde up` (median seconds)", ["", "s", "runs"], rows)


def _goal_table(found: Sequence[Goal]) -> str:
    verdict = {True: "met", False: "MISSED", None: "—"}
    rows = [[goal.name, goal.target, goal.measured, verdict[goal.met]] for goal in found]
    return _table(
        "Goals (issues 5, 2 and 15)", ["goal", "target", "measured", ""], rows, text_columns=4
    )


def render(results: Results) -> str:
    """Every table the run has data for, then the goals."""
    parts = []
    meta = results.get("meta", {})
    if meta:
        header = (
            f"KubeRDE benchmark — {meta.get('started_at', '')}, {meta.get('cpus')} CPUs, "
            f"load average {meta.get('load_before', '')} before and "
            f"{meta.get('load_after', '')} after, {'quick' if meta.get('quick') else 'full'} run"
            "\nRatios are to `ssh -N -L` (default cipher) and to direct TCP (HTTP: to the app\n"
            "served directly and behind configurable-http-proxy), from this run.\n"
        )
        notes = [
            f"  {info['label']}: {info['note']}\n"
            for info in results.get("paths", {}).values()
            if info.get("note")
        ]
        parts.append(header + "".join(notes))
    sections = _throughput_tables(results) if "throughput" in results else []
    sections += _latency_tables(results)
    if "memory" in results:
        sections.append(("memory", _memory_table(results)))
    if "startup" in results:
        sections.append(("startup", _startup_table(results)))
    if "wake" in results:
        sections.append(("wake", _wake_table(results)))
    if "http" in results:
        sections += _http_tables(results["http"])
    if "operator" in results:
        sections.append(("operator", operator_scale.render(results["operator"])))
    found = goals(results)
    verdict = {True: "met", False: "MISSED", None: "no pass/fail"}
    for metric, text in sections:
        notes = [
            f"goal: {goal.name} {goal.target}; measured {goal.measured} ({verdict[goal.met]})\n"
            for goal in found
            if goal.metric == metric
        ]
        parts.append(text + "".join(notes))
    if found:
        parts.append(_goal_table(found))
    return "\n".join(part for part in parts if part)
