"""`kuberde ls` rendering: why a workspace is up, every output format, and `-w`'s lines; and
the dashboard card's same words."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from kuberde.cli.base import suggestion
from kuberde.cli.workspaces import (
    Output,
    idle_status,
    pick_app,
    render,
    render_table,
    watch_lines,
)
from kuberde.gateway.web.actions_api import row_json
from kuberde.gateway.web.dashboard import card
from kuberde.gateway.web.workspaces import WorkspaceRow
from kuberde.resource import App

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _item(name: str = "demo", **changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "name": name,
        "phase": "Running",
        "online": True,
        "pod": "4242",
        "created_at": "2026-01-02T03:00:00+00:00",
        "ttl": "5m",
        "last_activity": "2026-01-02T03:01:00+00:00",
        "idle_deadline": "2026-01-02T03:06:00+00:00",
        "message": "",
        "connections": 0,
    }
    return item | changes


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({}, "2026-01-02T03:06:00Z"),
        ({"connections": 1, "idle_deadline": None}, "held by 1 connection"),
        ({"connections": 2, "idle_deadline": None}, "held by 2 connections"),
        (
            {
                "connections": 2,
                "idle_deadline": None,
                "extended_until": "2026-01-02T14:05:00+00:00",
            },
            "held by 2 connections; extended until 2026-01-02T14:05:00Z",
        ),
        (
            {
                "extended_until": "2026-01-02T14:05:00+00:00",
                "idle_deadline": "2026-01-02T14:05:00+00:00",
            },
            "2026-01-02T14:05:00Z",
        ),
        ({"ttl": None, "idle_deadline": None}, "never (no TTL)"),
        ({"phase": "ScaledDown", "idle_deadline": None}, "<none>"),
    ],
)
def test_idle_status(changes: dict[str, Any], status: str) -> None:
    assert idle_status(_item(**changes)) == status


def test_wide_table_says_what_holds_a_workspace_up() -> None:
    table = render_table([_item(connections=2, idle_deadline=None)], True, NOW)
    header, row = table.splitlines()
    assert header.split() == [
        "NAME", "STATUS", "ONLINE", "POD", "AGE", "TTL", "LAST-ACTIVITY", "IDLE-DEADLINE",
        "APPS", "MESSAGE",
    ]  # fmt: skip
    assert row.split()[:5] == ["demo", "Running", "true", "4242", "4m5s"]
    assert "held by 2 connections" in row


@pytest.mark.parametrize("output", [Output.JSON, Output.YAML])
def test_json_and_yaml_carry_the_same_reason(output: Output) -> None:
    text = render([_item(connections=2, idle_deadline=None)], output, NOW)
    [item] = json.loads(text) if output is Output.JSON else yaml.safe_load(text)
    assert (item["connections"], item["idle"]) == (2, "held by 2 connections")


def test_name_output() -> None:
    assert render([_item(), _item("dev")], Output.NAME, NOW) == "rdeagent/demo\nrdeagent/dev"


def test_watch_prints_everything_once_then_only_changed_rows() -> None:
    first = [_item(), _item("dev")]
    second = [_item(), _item("dev", phase="ScaledDown", online=False, pod=None)]
    lines = list(watch_lines(iter([first, first, second, second]), Output.TABLE, lambda: NOW))
    assert [line.split()[:4] for line in lines] == [
        ["NAME", "STATUS", "ONLINE", "POD"],
        ["demo", "Running", "true", "4242"],
        ["dev", "Running", "true", "4242"],
        ["dev", "ScaledDown", "false", "<none>"],
    ]


def test_watch_starts_with_a_header_even_when_there_is_nothing() -> None:
    lines = list(watch_lines(iter([[], [_item()]]), Output.WIDE, lambda: NOW))
    assert lines[0].split()[0] == "NAME" and lines[1].split()[0] == "demo"


def test_watch_as_json_is_one_document_per_change() -> None:
    lines = list(watch_lines(iter([[_item()], [_item(connections=1)]]), Output.JSON, lambda: NOW))
    assert [json.loads(line)["connections"] for line in lines] == [0, 1]


@pytest.mark.parametrize(
    ("typo", "hint"),
    [
        ("bogus", ""),
        ("lgs", "; did you mean 'ls' or 'logs'?"),
        ("stpo", "; did you mean 'stop'?"),
        ("port", "; did you mean 'port-forward'?"),
        ("x", ""),
    ],
)
def test_did_you_mean_only_for_a_near_miss(typo: str, hint: str) -> None:
    commands = ["ls", "logs", "stop", "ssh", "port-forward", "up", "wake", "delete"]
    assert suggestion(typo, commands) == hint


APPS = [
    {"name": "lab", "port": 8888, "path": "/lab", "url": "http://lab--alice.localhost:8080/lab"},
    {"name": "docs", "port": 9000, "path": "/", "url": "http://9000--lab--alice.localhost:8080/"},
]


def test_wide_table_lists_app_urls() -> None:
    _, row = render_table([_item(apps=APPS)], True, NOW).splitlines()
    assert "http://lab--alice.localhost:8080/lab,http://9000--lab--alice.localhost:8080/" in row
    _, bare = render_table([_item()], True, NOW).splitlines()
    assert "<none>" in bare


def test_pick_app() -> None:
    assert pick_app(_item(apps=APPS), None) == "http://lab--alice.localhost:8080/lab"
    assert pick_app(_item(apps=APPS), "docs") == "http://9000--lab--alice.localhost:8080/"
    with pytest.raises(ValueError, match=r"no app named 'nope' \(it has: lab, docs\)"):
        pick_app(_item(apps=APPS), "nope")
    with pytest.raises(ValueError, match="has no apps"):
        pick_app(_item(), None)


def _row(**changes: Any) -> WorkspaceRow:
    values: dict[str, Any] = {
        "name": "demo",
        "owner": "alice",
        "agent_id": "user-alice-demo",
        "phase": "Running",
        "online": True,
        "pod": "demo-7d4b9-x2x7q",
        "created_at": NOW,
        "ttl": "5m",
        "last_activity": NOW,
        "last_activity_source": "bytes",
        "idle_deadline": None,
        "open_connections": 2,
        "apps": (),
        "message": "",
        "extended_until": None,
    }
    return WorkspaceRow(**(values | changes))


def test_the_dashboard_shows_an_extension_while_connections_hold_it() -> None:
    def hold(row: WorkspaceRow) -> str:
        return str(card(row, scheme="http", apps_domain=None, port=None, now=NOW)["hold"])

    assert hold(_row()) == "held by 2 open connections"
    until = datetime(2026, 1, 2, 14, 5, tzinfo=UTC)
    assert hold(_row(extended_until=until)) == (
        "held by 2 open connections; extended until 2026-01-02 14:05:00 UTC"
    )
    assert hold(_row(open_connections=1)) == "held by 1 open connection"
    assert hold(_row(open_connections=0, idle_deadline=until)) == "scales down in 11h55s if unused"


def test_the_api_row_is_what_kuberde_ls_renders() -> None:
    """`GET /api/workspaces` in both runtimes: times as ISO strings, apps with their URLs
    (None where the gateway serves none), and a table `kuberde ls -o wide` can print."""
    web_app = App(name="web", port=8888, path="/lab")
    other = App(name="api", port=9000, path="/")
    row = _row(apps=(web_app, other), idle_deadline=NOW, created_at=None, pod=None)
    item = row_json(row, {"web": "http://demo--alice.localhost/lab"})
    assert item["created_at"] is None and item["pod"] is None
    assert item["last_activity"] == item["idle_deadline"] == NOW.isoformat()
    assert item["connections"] == 2 and item["extended_until"] is None
    assert item["apps"] == [
        {"name": "web", "port": 8888, "path": "/lab", "url": "http://demo--alice.localhost/lab"},
        {"name": "api", "port": 9000, "path": "/", "url": None},
    ]
    assert json.loads(json.dumps(item)) == item
    [_, cells] = [line.split() for line in render_table([item], wide=True, now=NOW).splitlines()]
    assert cells[:5] == ["demo", "Running", "true", "<none>", "<unknown>"]
    assert "http://demo--alice.localhost/lab" in cells
