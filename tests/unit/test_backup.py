"""What a backup keeps and drops, and what a restore may create."""

from __future__ import annotations

from typing import Any

from kuberde.backup import backup_list, clean, plan_restore
from kuberde.resource import RDEAgent, parse_agent


def served(name: str, owner: str, created: str, **metadata: Any) -> dict[str, Any]:
    """An RDEAgent as `kubectl get -o yaml` shows it."""
    return {
        "apiVersion": "kuberde.io/v1",
        "kind": "RDEAgent",
        "metadata": {
            "name": name,
            "namespace": "kuberde",
            "uid": f"uid-{name}",
            "resourceVersion": "42",
            "generation": 3,
            "creationTimestamp": created,
            "managedFields": [{"manager": "kubectl"}],
            **metadata,
        },
        "spec": {"owner": owner, "workload": {"image": "x"}},
        "status": {"phase": "ScaledDown", "lastActivity": created},
    }


def test_backup_drops_server_fields_keeps_lifecycle_and_orders_by_age() -> None:
    annotations = {
        "kuberde.io/scaled-down-at": "2026-01-01T10:00:00Z",
        "kubectl.kubernetes.io/last-applied-configuration": "{...}",
    }
    items = [
        served("smith-dev", "alice", "2026-01-02T00:00:00Z", annotations=annotations),
        served("dev", "alice-smith", "2026-01-03T00:00:00Z", labels={"team": "a"}),
        served("b", "bob", "2026-01-01T00:00:00Z"),
        served("a", "bob", "2026-01-01T00:00:00Z"),
    ]
    document = backup_list(items)
    assert (document["apiVersion"], document["kind"]) == ("v1", "List")
    assert [item["metadata"]["name"] for item in document["items"]] == [
        "a",
        "b",
        "smith-dev",
        "dev",
    ]
    smith = document["items"][2]
    assert smith == {
        "apiVersion": "kuberde.io/v1",
        "kind": "RDEAgent",
        "metadata": {
            "name": "smith-dev",
            "namespace": "kuberde",
            "annotations": {"kuberde.io/scaled-down-at": "2026-01-01T10:00:00Z"},
        },
        "spec": {"owner": "alice", "workload": {"image": "x"}},
    }
    assert document["items"][3]["metadata"]["labels"] == {"team": "a"}
    assert items[0]["metadata"]["uid"] == "uid-smith-dev", "the input is left alone"


def test_clean_without_annotations_or_metadata() -> None:
    assert clean({"kind": "RDEAgent", "status": {}}) == {"kind": "RDEAgent", "metadata": {}}
    only_kubectl = {
        "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x"}}
    }
    assert clean(only_kubectl) == {"metadata": {}}


def agent(name: str, owner: str, **spec: Any) -> RDEAgent:
    body = served(name, owner, "2026-01-01T00:00:00Z")
    body["spec"].update(spec)
    return parse_agent(body)


def claim(owner: str, name: str) -> dict[str, Any]:
    return {"metadata": {"labels": {"kuberde.io/owner": owner, "kuberde.io/rdeagent": name}}}


def test_restore_creates_the_missing_keeps_the_present_refuses_foreign_volumes() -> None:
    steps = plan_restore(
        [
            agent("smith-dev", "alice"),
            agent("dev", "alice-smith"),
            agent("lab", "bob"),
            agent("taken", "carol"),
            agent("mine", "dave"),
            agent("scratch", "alice-smith", storage={"ephemeral": True}),
            agent("unlabelled", "erin"),
        ],
        namespace="kuberde",
        existing={"lab": {"spec": {"owner": "bob"}}, "taken": {"spec": {"owner": "mallory"}}},
        claims={
            "user-alice-smith-dev-home": claim("alice", "smith-dev"),
            "user-dave-mine-home": claim("dave", "mine"),
            "user-alice-smith-scratch-home": claim("alice", "smith-scratch"),
            "user-erin-unlabelled-home": {"metadata": {}},
        },
    )
    by_name = {step.name: step for step in steps}
    assert [step.name for step in steps] == [
        "smith-dev",
        "dev",
        "lab",
        "taken",
        "mine",
        "scratch",
        "unlabelled",
    ]
    assert by_name["smith-dev"].action == "create"
    assert by_name["dev"].action == "refuse"
    assert by_name["dev"].reason == (
        "its volume PersistentVolumeClaim user-alice-smith-dev-home belongs to owner 'alice' "
        "(RDEAgent 'smith-dev'), not to owner 'alice-smith'"
    )
    assert (by_name["lab"].action, by_name["lab"].body) == ("keep", None)
    assert by_name["taken"].action == "refuse"
    assert "exists with owner 'mallory'" in by_name["taken"].reason
    assert by_name["mine"].action == "create", "its own volume is re-adopted"
    assert by_name["scratch"].action == "create", "an ephemeral workspace mounts nothing"
    assert by_name["unlabelled"].action == "refuse"
    assert "no recorded owner" in by_name["unlabelled"].reason
    body = by_name["smith-dev"].body
    assert body is not None
    assert body["metadata"] == {"name": "smith-dev", "namespace": "kuberde"}
    assert "status" not in body


def test_restore_refuses_another_namespace() -> None:
    (step,) = plan_restore([agent("dev", "bob")], namespace="prod", existing={}, claims={})
    assert (step.action, step.reason) == ("refuse", "it is in namespace 'kuberde', not 'prod'")
