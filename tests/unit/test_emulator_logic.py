"""The pure pieces of the emulated API server: selectors, Table printing, strategic merge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import kmock
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kuberde.testing import printing
from kuberde.testing.patching import merge_patch_between, strategic_merge
from kuberde.testing.selectors import SelectorError, parse_field_selector, parse_label_selector
from kuberde.testing.watching import Expired, WatchHistory

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def pod(labels: dict[str, str], phase: str = "Running") -> dict[str, Any]:
    return {"metadata": {"name": "p", "labels": labels}, "status": {"phase": phase}}


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("", {}, True),
        ("app=frp-agent", {"app": "frp-agent"}, True),
        ("app=frp-agent", {"app": "frp-server"}, False),
        ("app==frp-agent", {"app": "frp-agent"}, True),
        ("app!=frp-agent", {"app": "frp-server"}, True),
        ("app!=frp-agent", {}, True),
        ("app=frp-agent,instance=user-a-b", {"app": "frp-agent", "instance": "user-a-b"}, True),
        ("app=frp-agent,instance=user-a-b", {"app": "frp-agent", "instance": "user-a-c"}, False),
        ("app in (frp-agent, frp-server)", {"app": "frp-server"}, True),
        ("app notin (frp-agent,frp-server)", {"app": "frp-server"}, False),
        ("app in (a,b),tier=x", {"app": "b", "tier": "x"}, True),
        ("app", {"app": ""}, True),
        ("!app", {"app": ""}, False),
        ("!app", {}, True),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], matches: bool) -> None:
    assert parse_label_selector(selector).matches(pod(labels)) is matches


@pytest.mark.parametrize("selector", ["app=(x", "a b c", "!app in (x)"])
def test_a_malformed_label_selector_is_an_error(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_label_selector(selector)


def test_field_selectors() -> None:
    event = {"metadata": {"name": "e"}, "involvedObject": {"name": "ssh-server", "uid": "u1"}}
    selector = parse_field_selector("involvedObject.name=ssh-server,involvedObject.uid=u1")
    assert selector.matches(event)
    assert not parse_field_selector("involvedObject.uid!=u1").matches(event)
    assert parse_field_selector("metadata.name==e").matches(event)
    assert parse_field_selector("status.phase=").matches(event), "a missing field is empty"
    with pytest.raises(SelectorError):
        parse_field_selector("metadata.name")


@given(st.dictionaries(st.sampled_from("abc"), st.sampled_from(["x", "y"]), max_size=3))
def test_equality_and_inequality_partition_every_object(labels: dict[str, str]) -> None:
    equal = parse_label_selector("a=x").matches(pod(labels))
    assert parse_label_selector("a!=x").matches(pod(labels)) is not equal


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-5, "<invalid>"),
        (-1, "0s"),
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (150, "2m30s"),
        (600, "10m"),
        (3 * 3600 + 60, "3h1m"),
        (8 * 3600, "8h"),
        (50 * 3600, "2d2h"),
        (10 * 86400, "10d"),
        (3 * 365 * 86400, "3y"),
        (10 * 365 * 86400, "10y"),
    ],
)
def test_ages_as_kubectl_shows_them(seconds: int, shown: str) -> None:
    assert printing.human_duration(seconds) == shown


def test_crd_columns_print_the_wide_ones_with_priority() -> None:
    columns = printing.crd_columns(
        [
            {"name": "Status", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Online", "type": "boolean", "jsonPath": ".status.online"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            {"name": "TTL", "type": "string", "jsonPath": ".spec.ttl", "priority": 1},
        ]
    )
    created = (NOW - timedelta(minutes=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
    agent = {
        "metadata": {"name": "ssh-server", "creationTimestamp": created},
        "spec": {"ttl": "5m"},
        "status": {"phase": "Running", "online": True},
    }
    result = printing.table([agent], columns, now=NOW, resource_version="7")
    assert [(c["name"], c["priority"]) for c in result["columnDefinitions"]] == [
        ("Name", 0),
        ("Status", 0),
        ("Online", 0),
        ("Age", 0),
        ("TTL", 1),
    ]
    [row] = result["rows"]
    assert row["cells"] == ["ssh-server", "Running", True, "6m", "5m"]
    assert row["object"]["kind"] == "PartialObjectMetadata"
    missing = printing.table([{"metadata": {"name": "x"}}], columns, now=NOW, resource_version="")
    assert missing["rows"][0]["cells"][1:3] == [None, None], "missing fields are empty cells"


def test_built_in_columns() -> None:
    pod_object = {
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "agent"}, {"name": "workload"}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"name": "agent", "ready": True, "restartCount": 2},
                {"name": "workload", "ready": False, "restartCount": 1,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
            ],
        },
    }  # fmt: skip
    cells = printing.table(
        [pod_object], printing.BUILT_IN["Pod"], now=NOW, resource_version="", include_object="None"
    )["rows"][0]
    assert cells["cells"][:4] == ["p", "1/2", "CrashLoopBackOff", 3]
    assert "object" not in cells
    deployment = {
        "metadata": {"name": "d"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "x"}}},
        "status": {"readyReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
    }
    row = printing.table(
        [deployment], printing.BUILT_IN["Deployment"], now=NOW, resource_version=""
    )["rows"][0]
    assert row["cells"][:4] == ["d", "1/1", 1, 1]
    assert printing.jsonpath_value({"a": [{"b": 1}]}, ".a[0].b") == 1
    assert printing.jsonpath_value({"a": []}, ".a[3].b") is None


def test_set_image_keeps_the_rest_of_the_container() -> None:
    live = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "operator", "image": "v1", "command": ["kuberde", "operator"]},
                        {"name": "sidecar", "image": "s"},
                    ]
                }
            }
        }
    }
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "$setElementOrder/containers": [{"name": "operator"}, {"name": "sidecar"}],
                    "containers": [{"name": "operator", "image": "v2"}],
                }
            }
        }
    }
    merged = strategic_merge(live, patch)
    containers = merged["spec"]["template"]["spec"]["containers"]
    assert containers == [
        {"name": "operator", "image": "v2", "command": ["kuberde", "operator"]},
        {"name": "sidecar", "image": "s"},
    ]
    assert "$setElementOrder/containers" not in merged["spec"]["template"]["spec"]
    delete = {"containers": [{"name": "sidecar", "$patch": "delete"}]}
    removed = strategic_merge(merged, {"spec": {"template": {"spec": delete}}})
    assert [c["name"] for c in removed["spec"]["template"]["spec"]["containers"]] == ["operator"]
    assert strategic_merge({"a": {"b": 1}}, {"a": {"$patch": "replace", "c": 2}}) == {"a": {"c": 2}}
    assert strategic_merge({"a": 1, "b": 2}, {"a": None}) == {"b": 2}
    assert strategic_merge({"args": ["x"]}, {"args": ["y"]}) == {"args": ["y"]}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3)
    ),
    max_leaves=10,
)
documents = st.dictionaries(st.text(max_size=2), json_values, max_size=4)


def _merge(old: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch, as KMock applies one."""
    result = dict(old)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = value
    return result


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    return value


@given(documents, documents)
def test_the_merge_patch_between_two_documents_turns_one_into_the_other(
    old: dict[str, Any], new: dict[str, Any]
) -> None:
    new = _without_nulls(new)
    assert _merge(old, merge_patch_between(old, new)) == new


def _change(version: int) -> dict[str, Any]:
    return {"type": "MODIFIED", "object": {"metadata": {"resourceVersion": str(version)}}}


@given(st.integers(min_value=1, max_value=30), st.integers(min_value=0, max_value=40))
def test_a_watch_history_gives_exactly_the_changes_after_a_version(size: int, asked: int) -> None:
    history = WatchHistory(size)
    versions = list(range(1, 31))
    for version in versions:
        history.record(kmock.resource("v1/pods"), _change(version), version)
    kept = versions[-size:]
    if size < len(versions) and asked < kept[0] - 1:
        with pytest.raises(Expired):
            history.since(asked)
        return
    assert [change.version for change in history.since(asked)] == [v for v in kept if v > asked]


def test_a_watch_history_refuses_a_version_out_of_order() -> None:
    history = WatchHistory()
    history.record(kmock.resource("v1/pods"), _change(5), 5)
    with pytest.raises(ValueError, match="not after 5"):
        history.record(kmock.resource("v1/pods"), _change(5), 5)
    assert history.latest == 5 and history.since(0)[0].version == 5
