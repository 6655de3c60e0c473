"""Decisions about a workspace's home PVC: whose it is, what to patch, what deletion means.

Pure: the reconciler reads the live PVC and applies what these functions say. A PVC is
mounted only for the owner and RDEAgent name it records, so a PVC left behind by a deleted
RDEAgent is never handed to a newcomer whose agent ID happens to be the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kuberde.operator.ownership import Refusal, recorded_owner
from kuberde.resource import KIND, RDEAgent

__all__ = ["DeletionNotice", "deletion_notice", "foreign_volume", "owner_references_patch"]


def foreign_volume(agent: RDEAgent, live: Mapping[str, Any] | None) -> Refusal | None:
    """Why `live` (the PVC named for the agent's ID) must not be mounted for `agent`, if so."""
    if live is None:
        return None
    name = (live.get("metadata") or {}).get("name")
    recorded = recorded_owner(live)
    if recorded == (agent.spec.owner, agent.metadata.name):
        return None
    if recorded is None:
        unlabelled = (
            f"PersistentVolumeClaim {name} records no owner (labels kuberde.io/owner and "
            "kuberde.io/rdeagent), so it is not mounted; label it for this RDEAgent to use it"
        )
        return Refusal(unlabelled, unlabelled)
    owner, other = recorded
    return Refusal(
        shown=(
            f"PersistentVolumeClaim {name} belongs to another workspace, so it is not "
            "mounted; choose another name"
        ),
        detail=(
            f"PersistentVolumeClaim {name} belongs to owner {owner!r} (RDEAgent {other!r}), "
            "so it is not mounted; rename this RDEAgent, or delete that claim if it is no "
            "longer wanted"
        ),
    )


def _ours(reference: Mapping[str, Any]) -> bool:
    return bool(reference.get("kind") == KIND)


def owner_references_patch(
    desired: Mapping[str, Any], live: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The merge patch that makes the live PVC's RDEAgent owner references ours, or None.

    Only RDEAgent references are compared (anyone else's are kept), so a PVC that already
    matches, which is every PVC in a steady state, costs no write.
    """
    wanted = list((desired.get("metadata") or {}).get("ownerReferences") or [])
    present = list((live.get("metadata") or {}).get("ownerReferences") or [])
    if [ref.get("uid") for ref in present if _ours(ref)] == [ref.get("uid") for ref in wanted]:
        return None
    kept = [ref for ref in present if not _ours(ref)]
    return {"metadata": {"ownerReferences": kept + wanted}}


@dataclass(frozen=True, slots=True)
class DeletionNotice:
    reason: str
    message: str


def deletion_notice(agent: RDEAgent, namespace: str, claim: str) -> DeletionNotice:
    """What happens to the home PVC `claim` of a deleted RDEAgent, for its Event and the log."""
    if agent.spec.storage.reclaim_policy == "Delete":
        return DeletionNotice(
            "VolumeDeleted",
            f"PersistentVolumeClaim {claim} is deleted with RDEAgent {agent.metadata.name} "
            "(reclaimPolicy Delete)",
        )
    return DeletionNotice(
        "VolumeRetained",
        f"PersistentVolumeClaim {claim} is kept (reclaimPolicy Retain): an RDEAgent "
        f"{agent.metadata.name!r} of owner {agent.spec.owner!r} mounts it again; "
        f"`kubectl delete pvc -n {namespace} {claim}` deletes it",
    )
