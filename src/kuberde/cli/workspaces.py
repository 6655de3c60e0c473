"""`kuberde ls / apply / delete / wake / stop / logs`: manage workspaces through the gateway API.

Rendering (`render_table`, `idle_status`, `changed_rows`) is pure; the commands are thin.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from kuberde.cli.base import Gateway, NameArgument, gateway_command
from kuberde.policy import format_duration

__all__ = ["Output", "idle_status", "register", "render_table", "watch_lines"]

WATCH_INTERVAL = 1.0


class Output(StrEnum):
    TABLE = ""
    WIDE = "wide"
    JSON = "json"
    YAML = "yaml"
    NAME = "name"


def _age(created: str, now: datetime) -> str:
    return format_duration(now - datetime.fromisoformat(created)) if created else "<unknown>"


def _when(value: str | None) -> str:
    if not value:
        return "<none>"
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def idle_status(item: dict[str, Any]) -> str:
    """Why a workspace is up, or when it will be scaled down."""
    connections = int(item.get("connections") or 0)
    if connections:
        held = f"held by {connections} connection{'s' if connections != 1 else ''}"
        until = item.get("extended_until")
        return f"{held}; extended until {_when(until)}" if until else held
    if item.get("idle_deadline"):
        return _when(item["idle_deadline"])
    if not item.get("ttl"):
        return "never (no TTL)"
    return "<none>"


def _cells(item: dict[str, Any], wide: bool, now: datetime) -> list[str]:
    row = [
        item["name"],
        item["phase"] or "Pending",
        "true" if item["online"] else "false",
        item["pod"] or "<none>",
        _age(item["created_at"], now),
    ]
    if wide:
        urls = [app["url"] for app in item.get("apps") or [] if app.get("url")]
        row += [
            item["ttl"] or "0",
            _when(item["last_activity"]),
            idle_status(item),
            ",".join(urls) or "<none>",
            item["message"] or "",
        ]
    return row


def _header(wide: bool) -> list[str]:
    header = ["NAME", "STATUS", "ONLINE", "POD", "AGE"]
    wide_columns = ["TTL", "LAST-ACTIVITY", "IDLE-DEADLINE", "APPS", "MESSAGE"]
    return [*header, *wide_columns] if wide else header


def _align(rows: Sequence[Sequence[str]], widths: Sequence[int]) -> list[str]:
    return [
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def render_table(workspaces: Sequence[dict[str, Any]], wide: bool, now: datetime) -> str:
    """The columns of `kubectl get rdeagent [-o wide]`; wide's IDLE-DEADLINE says why a
    workspace is up when open connections hold it."""
    rows = [_header(wide), *(_cells(item, wide, now) for item in workspaces)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(_align(rows, widths))


def _enriched(item: dict[str, Any]) -> dict[str, Any]:
    return {**item, "idle": idle_status(item)}


def render(workspaces: Sequence[dict[str, Any]], output: Output, now: datetime) -> str:
    if output is Output.JSON:
        return json.dumps([_enriched(item) for item in workspaces], indent=2)
    if output is Output.YAML:
        import yaml

        return yaml.safe_dump([_enriched(item) for item in workspaces], sort_keys=False).rstrip()
    if output is Output.NAME:
        return "\n".join(f"rdeagent/{item['name']}" for item in workspaces)
    return render_table(workspaces, output is Output.WIDE, now)


def watch_lines(
    snapshots: Iterator[list[dict[str, Any]]], output: Output, clock: Callable[[], datetime]
) -> Iterator[str]:
    """Like `kubectl get -w`: everything once, then a line (or document) per changed row."""
    seen: dict[str, dict[str, Any]] = {}
    widths: list[int] | None = None
    wide = output is Output.WIDE
    for snapshot in snapshots:
        changed = [item for item in snapshot if seen.get(item["name"]) != item]
        seen = {item["name"]: item for item in snapshot}
        if output in (Output.TABLE, Output.WIDE):
            rows = [_cells(item, wide, clock()) for item in changed]
            if widths is None:
                header = _header(wide)
                widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
                rows = [header, *rows]
            widths = [max([w, *(len(r[i]) for r in rows)]) for i, w in enumerate(widths)]
            yield from _align(rows, widths)
        elif output is Output.JSON:
            yield from (json.dumps(_enriched(item)) for item in changed)
        elif changed:
            yield render(changed, output, clock())


def _snapshots(settings: Any, interval: float) -> Iterator[list[dict[str, Any]]]:
    from kuberde.cli.api import call

    while True:
        yield call(settings, "GET", "/api/workspaces")["workspaces"]
        time.sleep(interval)


def ls(
    gateway: Gateway,
    output: Annotated[
        Output, typer.Option("-o", "--output", metavar="wide|json|yaml|name", help="Format.")
    ] = Output.TABLE,
    watch: Annotated[
        bool, typer.Option("-w", "--watch", help="After listing, print each change as it happens.")
    ] = False,
) -> None:
    """List workspaces: NAME STATUS ONLINE POD AGE; wide adds TTL, LAST-ACTIVITY,
    IDLE-DEADLINE (or what holds the workspace up) and MESSAGE.

    Locally (`kuberde up`) POD is the process ID of the workspace's workload; against a
    `kuberde server --kubernetes` gateway it is the running pod's name.

    Examples:

    \b
      kuberde ls
      kuberde ls -o wide -w
      kuberde ls -o json
    """
    settings = gateway.settings()
    if watch:
        try:
            for line in watch_lines(
                _snapshots(settings, WATCH_INTERVAL), output, lambda: datetime.now(UTC)
            ):
                typer.echo(line)
        except KeyboardInterrupt:
            raise typer.Exit(0) from None
        return
    from kuberde.cli.api import call

    workspaces = call(settings, "GET", "/api/workspaces")["workspaces"]
    if not workspaces and output in (Output.TABLE, Output.WIDE):
        typer.echo("No workspaces.", err=True)
        return
    text = render(workspaces, output, datetime.now(UTC))
    if text:
        typer.echo(text)


def apply(
    gateway: Gateway,
    files: Annotated[
        list[Path],
        typer.Option("-f", "--filename", metavar="FILE", help="RDEAgent YAML file; - for stdin."),
    ],
) -> None:
    """Create or update workspaces from RDEAgent documents.

    Examples:

    \b
      kuberde apply -f dev.yaml
      kubectl get rdeagent -o yaml | kuberde apply -f -
    """
    from kuberde.cli.api import call

    settings = gateway.settings()
    failed = False
    for path in files:
        try:
            text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        except OSError as exc:
            typer.echo(f"kuberde: cannot read {path}: {exc.strerror}", err=True)
            failed = True
            continue
        result = call(settings, "POST", "/api/workspaces", body=text, params={"source": str(path)})
        for item in result["applied"]:
            typer.echo(f"rdeagent/{item['name']} {'created' if item['created'] else 'configured'}")
        for error in result["errors"]:
            typer.echo(f"kuberde: {error}", err=True)
            failed = True
    if failed:
        raise typer.Exit(1)


def _simple(verb: str, method: str, suffix: str, done: str, summary: str) -> Any:
    def command(gateway: Gateway, name: NameArgument) -> None:
        from kuberde.cli.api import call

        call(gateway.settings(), method, f"/api/workspaces/{name}{suffix}")
        typer.echo(f"rdeagent/{name} {done}")

    command.__name__ = verb
    command.__doc__ = f"{summary}\n\nExamples:\n\n\b\n  kuberde {verb} demo\n"
    return command


def logs(
    gateway: Gateway,
    name: NameArgument,
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep printing new output.")
    ] = False,
    tail: Annotated[int, typer.Option(metavar="LINES", help="Lines of history to show.")] = 200,
    agent: Annotated[
        bool, typer.Option("--agent", help="The agent's log, not the workload's.")
    ] = False,
) -> None:
    """Print a workspace's workload output (stdout and stderr).

    Examples:

    \b
      kuberde logs demo
      kuberde logs demo -f --tail 20
      kuberde logs demo --agent
    """
    from kuberde.cli.api import call

    params = {"tail": str(tail), "follow": "1" if follow else "0"}
    if agent:
        params["container"] = "agent"
    try:
        call(
            gateway.settings(),
            "GET",
            f"/api/workspaces/{name}/logs",
            params=params,
            stream_to=sys.stdout.buffer,
        )
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def extend(
    gateway: Gateway,
    name: NameArgument,
    duration: Annotated[
        str | None,
        typer.Argument(help="How long from now (30m, 2h, 1d); default: another TTL."),
    ] = None,
) -> None:
    """Keep a workspace up: for another TTL from now, or for DURATION.

    Examples:

    \b
      kuberde extend demo
      kuberde extend demo 2h
    """
    from kuberde.cli.api import call

    params = {"duration": duration} if duration else None
    reply = call(gateway.settings(), "POST", f"/api/workspaces/{name}/extend", params=params)
    typer.echo(f"rdeagent/{name} extended until {_when(reply['until'])}")


def pick_app(item: dict[str, Any], app: str | None) -> str:
    """The URL of `app` (default: the first) of a workspace row; ValueError says what exists."""
    apps = [entry for entry in item.get("apps") or [] if entry.get("url")]
    if not apps:
        raise ValueError(f"{item['name']} has no apps (spec.apps) reachable through this gateway")
    if app is None:
        return str(apps[0]["url"])
    for entry in apps:
        if entry["name"] == app:
            return str(entry["url"])
    names = ", ".join(entry["name"] for entry in apps)
    raise ValueError(f"{item['name']} has no app named {app!r} (it has: {names})")


def open_app(
    gateway: Gateway,
    name: NameArgument,
    app: Annotated[str | None, typer.Argument(help="App name; default: the first.")] = None,
) -> None:
    """Open a workspace's web app in the browser (the URL is printed where none can open).

    Examples:

    \b
      kuberde open jupyter-notebook
      kuberde open code-server vscode
    """
    import webbrowser

    from kuberde.cli.api import call

    item = call(gateway.settings(), "GET", f"/api/workspaces/{name}")
    try:
        url = pick_app(item, app)
    except ValueError as exc:
        typer.echo(f"kuberde: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(url)
    # Without a display webbrowser would start a console browser (lynx) in this terminal.
    graphical = sys.platform == "darwin" or any(
        os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY")
    )
    if not (sys.stdout.isatty() and graphical and webbrowser.open(url)):
        typer.echo("no browser was opened: open the URL above", err=True)


def register(app: typer.Typer) -> None:
    gateway_command(app)(ls)
    gateway_command(app)(extend)
    gateway_command(app, "open")(open_app)
    gateway_command(app)(apply)
    for verb, method, suffix, done, summary in [
        (
            "delete",
            "DELETE",
            "",
            "deleted",
            "Delete a workspace (its processes stop; its logs are kept).",
        ),
        ("wake", "POST", "/wake", "waking", "Start a scaled-down workspace without connecting."),
        (
            "stop",
            "POST",
            "/stop",
            "scaled down",
            "Scale a workspace to zero now; connecting wakes it again.",
        ),
    ]:
        gateway_command(app, verb)(_simple(verb, method, suffix, done, summary))
    gateway_command(app)(logs)
