"""Home PVC decisions: whose it is, owner references for the reclaimPolicy, deletion notices."""

from __future__ import annotations

from typing import Any

import pytest

from kuberde.operator.builder import build_pvc
from kuberde.operator.storage import deletion_notice, foreign_volume, owner_references_patch
from kuberde.resource import RDEAgent, parse_agent

UID = "0b6f5d2e-1111-4c4c-9e9e-123456789abc"


def agent(owner: str = "alice", name: str = "smith-dev", **storage: Any) -> RDEAgent:
    return parse_agent(
        {
            "apiVersion": "kuberde.io/v1",
            "kind": "RDEAgent",
            "metadata": {"name": name, "namespace": "kuberde", "uid": UID},
            "spec": {"owner": owner, "workload": {"image": "x"}, "storage": storage},
        }
    )


def claim(labels: dict[str, str], refs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "user-alice-smith-dev-home", "labels": labels}
    if refs is not None:
        metadata["ownerReferences"] = refs
    return {"metadata": metadata}


ALICE = {"kuberde.io/owner": "alice", "kuberde.io/rdeagent": "smith-dev"}


def test_own_or_missing_volume_is_mounted() -> None:
    assert foreign_volume(agent(), None) is None
    assert foreign_volume(agent(), claim(ALICE)) is None


@pytest.mark.parametrize(
    ("labels", "detail", "shown"),
    [
        (ALICE, "belongs to owner 'alice' (RDEAgent 'smith-dev')", "belongs to another workspace"),
        (
            {"kuberde.io/owner": "alice-smith", "kuberde.io/rdeagent": "x"},
            "owner 'alice-smith'",
            "choose another name",
        ),
        ({}, "records no owner", "records no owner"),
        ({"kuberde.io/owner": "alice-smith"}, "records no owner", "records no owner"),
    ],
)
def test_a_volume_recorded_for_anyone_else_is_foreign(
    labels: dict[str, str], detail: str, shown: str
) -> None:
    refusal = foreign_volume(agent("alice-smith", "dev"), claim(labels))
    assert refusal is not None
    for message in (refusal.shown, refusal.detail):
        assert message.startswith("PersistentVolumeClaim user-alice-smith-dev-home ")
        assert "not mounted" in message
    assert detail in refusal.detail
    assert shown in refusal.shown


def test_the_owner_is_not_told_whose_volume_it_is() -> None:
    """Issue 11: the status (`shown`) names no other owner or RDEAgent; the admin's view does."""
    recorded = {"kuberde.io/owner": "mallory", "kuberde.io/rdeagent": "secret-project"}
    refusal = foreign_volume(agent("alice-smith", "dev"), claim(recorded))
    assert refusal is not None
    assert "mallory" not in refusal.shown and "secret-project" not in refusal.shown
    assert "mallory" in refusal.detail and "secret-project" in refusal.detail


def test_owner_references_follow_the_reclaim_policy() -> None:
    retain = build_pvc(agent(), namespace="kuberde")
    delete = build_pvc(agent(reclaimPolicy="Delete"), namespace="kuberde")
    assert retain is not None and delete is not None
    ours = delete["metadata"]["ownerReferences"]
    other = {"apiVersion": "v1", "kind": "ConfigMap", "name": "keep", "uid": "u2"}
    assert owner_references_patch(retain, claim(ALICE)) is None
    assert owner_references_patch(delete, claim(ALICE, ours)) is None
    assert owner_references_patch(delete, claim(ALICE)) == {"metadata": {"ownerReferences": ours}}
    assert owner_references_patch(retain, claim(ALICE, [*ours, other])) == {
        "metadata": {"ownerReferences": [other]}
    }
    stale = [{**ours[0], "uid": "old"}]
    assert owner_references_patch(delete, claim(ALICE, [other, *stale])) == {
        "metadata": {"ownerReferences": [other, *ours]}
    }
    assert owner_references_patch(retain, claim(ALICE, [other])) is None


def test_deletion_notice_names_the_claim_and_what_happens() -> None:
    kept = deletion_notice(agent(), "kuberde", "user-alice-smith-dev-home")
    assert kept.reason == "VolumeRetained"
    assert "PersistentVolumeClaim user-alice-smith-dev-home is kept" in kept.message
    assert "kubectl delete pvc -n kuberde user-alice-smith-dev-home" in kept.message
    gone = deletion_notice(agent(reclaimPolicy="Delete"), "kuberde", "user-alice-smith-dev-home")
    assert gone.reason == "VolumeDeleted"
    assert "is deleted with RDEAgent smith-dev" in gone.message
