"""`kuberde ls / apply / delete / wake / stop / logs`: manage workspaces through the gateway API."""

from __future__ import annotations

import json
import ssl as ssl_module
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import typer

from kuberde import aio
from kuberde.cli.config import ClientSettings, ConfigError, normalize_server, resolve
from kuberde.cli.login import Credentials, RefreshError, unauthorized_message
from kuberde.policy import format_duration
from kuberde.tls import client_ssl_context

__all__ = ["register"]

_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)

ServerOption = Annotated[
    str | None, typer.Option("--server", envvar="KUBERDE_SERVER", help="Gateway URL")
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="KUBERDE_TOKEN", help="User token", show_default=False),
]


class ApiError(Exception):
    pass


class _Unauthorized(ApiError):
    """HTTP 401: the token may be renewed and the request tried once more."""


def _settings(server: str | None, token: str | None) -> ClientSettings:
    try:
        return resolve(server, token)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


async def _request(
    settings: ClientSettings,
    method: str,
    path: str,
    *,
    body: str | None = None,
    params: dict[str, str] | None = None,
    stream_to: Any = None,
) -> Any:
    url = normalize_server(settings.server) + path
    ssl: ssl_module.SSLContext | bool = (
        client_ssl_context(settings.ca_file) if url.startswith("https") else True
    )
    headers = {"Authorization": f"Bearer {settings.token}"}
    timeout = aiohttp.ClientTimeout(connect=10) if stream_to is not None else _TIMEOUT
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.request(method, url, data=body, params=params, headers=headers, ssl=ssl) as reply,
        ):
            if stream_to is not None and reply.status == 200:
                async for chunk in reply.content.iter_any():
                    stream_to.write(chunk)
                    stream_to.flush()
                return None
            try:
                payload = await reply.json(content_type=None)
            except (json.JSONDecodeError, aiohttp.ContentTypeError):
                payload = {"error": (await reply.text())[:200]}
            if reply.status >= 400 and not (reply.status == 422 and "applied" in payload):
                message = str(payload.get("error") or reply.reason or reply.status)
                if reply.status == 401:
                    message += " — run `kuberde up` (or `kuberde login`) for a fresh token"
                    raise _Unauthorized(message)
                raise ApiError(message)
            return payload
    except aiohttp.ClientConnectionError as exc:
        raise ApiError(f"cannot reach the gateway at {settings.server}: {exc}") from None


async def _authorized(settings: ClientSettings, method: str, path: str, **kwargs: Any) -> Any:
    """`_request` with the stored login renewed before expiry, and once more after a 401."""
    credentials = Credentials(settings)
    current = await credentials.fresh()
    try:
        return await _request(current, method, path, **kwargs)
    except _Unauthorized:
        try:
            renewed = await credentials.renew(current)
        except RefreshError as failure:
            raise ApiError(unauthorized_message(failure)) from None
        if renewed is None:
            raise
    return await _request(renewed, method, path, **kwargs)


def _call(settings: ClientSettings, method: str, path: str, **kwargs: Any) -> Any:
    try:
        return aio.run(_authorized(settings, method, path, **kwargs))
    except ApiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _age(created: str, now: datetime) -> str:
    return format_duration(now - datetime.fromisoformat(created)) if created else "<unknown>"


def _when(value: str | None) -> str:
    if not value:
        return "<none>"
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_table(workspaces: Sequence[dict[str, Any]], wide: bool, now: datetime) -> str:
    """The columns of `kubectl get rdeagent [-o wide]`, plus IDLE-DEADLINE locally."""
    header = ["NAME", "STATUS", "ONLINE", "POD", "AGE"]
    if wide:
        header += ["TTL", "LAST-ACTIVITY", "IDLE-DEADLINE", "MESSAGE"]
    rows = [header]
    for item in workspaces:
        row = [
            item["name"],
            item["phase"] or "Pending",
            "true" if item["online"] else "false",
            item["pod"] or "<none>",
            _age(item["created_at"], now),
        ]
        if wide:
            row += [
                item["ttl"] or "0",
                _when(item["last_activity"]),
                _when(item["idle_deadline"]),
                item["message"] or "",
            ]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def ls(
    output: Annotated[str, typer.Option("-o", "--output", help="wide or json")] = "",
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """List workspaces: NAME STATUS ONLINE POD AGE (wide adds TTL, activity and messages)."""
    if output not in ("", "wide", "json"):
        raise typer.BadParameter("must be wide or json", param_hint="-o")
    payload = _call(_settings(server, token), "GET", "/api/workspaces")
    workspaces = payload["workspaces"]
    if output == "json":
        typer.echo(json.dumps(workspaces, indent=2))
    elif not workspaces:
        typer.echo("No workspaces.", err=True)
    else:
        typer.echo(render_table(workspaces, output == "wide", datetime.now(UTC)))


def apply(
    files: Annotated[list[Path], typer.Option("-f", "--filename", help="RDEAgent YAML file")],
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Create or update workspaces from RDEAgent documents."""
    settings = _settings(server, token)
    failed = False
    for path in files:
        try:
            text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        except OSError as exc:
            typer.echo(f"error: cannot read {path}: {exc.strerror}", err=True)
            failed = True
            continue
        result = _call(settings, "POST", "/api/workspaces", body=text, params={"source": str(path)})
        for item in result["applied"]:
            typer.echo(f"rdeagent/{item['name']} {'created' if item['created'] else 'configured'}")
        for error in result["errors"]:
            typer.echo(f"error: {error}", err=True)
            failed = True
    if failed:
        raise typer.Exit(1)


def _simple(verb: str, method: str, suffix: str, done: str) -> Any:
    def command(
        name: Annotated[str, typer.Argument(help="Workspace name")],
        server: ServerOption = None,
        token: TokenOption = None,
    ) -> None:
        _call(_settings(server, token), method, f"/api/workspaces/{name}{suffix}")
        typer.echo(f"rdeagent/{name} {done}")

    command.__name__ = verb
    return command


def logs(
    name: Annotated[str, typer.Argument(help="Workspace name")],
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep printing new output")
    ] = False,
    tail: Annotated[int, typer.Option(help="Lines of history to show")] = 200,
    agent: Annotated[
        bool, typer.Option("--agent", help="The agent's log, not the workload's")
    ] = False,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Print a workspace's workload output (stdout and stderr)."""
    params = {"tail": str(tail), "follow": "1" if follow else "0"}
    if agent:
        params["container"] = "agent"
    try:
        _call(
            _settings(server, token),
            "GET",
            f"/api/workspaces/{name}/logs",
            params=params,
            stream_to=sys.stdout.buffer,
        )
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def register(app: typer.Typer) -> None:
    app.command()(ls)
    app.command()(apply)
    app.command(help="Delete a workspace (its processes stop; its logs are kept).")(
        _simple("delete", "DELETE", "", "deleted")
    )
    app.command(help="Start a scaled-down workspace without connecting to it.")(
        _simple("wake", "POST", "/wake", "waking")
    )
    app.command(help="Scale a workspace to zero now; connecting wakes it again.")(
        _simple("stop", "POST", "/stop", "scaled down")
    )
    app.command()(logs)
