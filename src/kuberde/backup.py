"""What `kuberde backup` writes and what `kuberde restore` may do with it: pure decisions.

A backup holds the RDEAgents as a user wrote them plus the annotations that carry lifecycle
state (a scaled-down workspace stays scaled down after a restore), and none of what the API
server owns (status, uid, resourceVersion, creationTimestamp, managedFields...). It lists
them oldest first, so a restore re-creates them in their original order.

A restore creates only what is missing, and never an RDEAgent whose home volume (the PVC
named for its agent ID) records another owner or RDEAgent: that volume is someone else's
work, whatever the ID says.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kuberde.operator.builder import pvc_name
from kuberde.operator.ownership import claimant_of, recorded_owner
from kuberde.resource import RDEAgent

__all__ = [
    "SERVER_FIELDS",
    "Step",
    "backup_list",
    "clean",
    "plan_restore",
]

#: Metadata the API server sets; a restored object gets its own.
SERVER_FIELDS = (
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "ownerReferences",
    "finalizers",
)
#: kubectl's copy of the last applied document repeats what the backup already holds.
_DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def clean(document: Mapping[str, Any]) -> dict[str, Any]:
    """The document without status and server-owned metadata (a deep copy)."""
    result = {key: copy.deepcopy(value) for key, value in document.items() if key != "status"}
    metadata = dict(result.get("metadata") or {})
    for key in SERVER_FIELDS:
        metadata.pop(key, None)
    annotations = {
        key: value
        for key, value in (metadata.get("annotations") or {}).items()
        if key not in _DROPPED_ANNOTATIONS
    }
    if annotations:
        metadata["annotations"] = annotations
    else:
        metadata.pop("annotations", None)
    result["metadata"] = metadata
    return result


def _age(document: Mapping[str, Any]) -> tuple[bool, str, str, str]:
    claimant = claimant_of(document)
    created = claimant.created.isoformat() if claimant.created is not None else ""
    return (claimant.created is None, created, claimant.namespace, claimant.name)


def backup_list(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A `v1 List` of the cleaned RDEAgents, oldest first (then namespace/name)."""
    ordered = sorted(items, key=_age)
    return {"apiVersion": "v1", "kind": "List", "items": [clean(item) for item in ordered]}


@dataclass(frozen=True, slots=True)
class Step:
    """What a restore does with one RDEAgent of the backup; `body` is what it would create."""

    name: str
    action: Literal["create", "keep", "refuse"]
    reason: str = ""
    body: dict[str, Any] | None = None


def plan_restore(
    agents: Iterable[RDEAgent],
    *,
    namespace: str,
    existing: Mapping[str, Mapping[str, Any]],
    claims: Mapping[str, Mapping[str, Any]],
) -> list[Step]:
    """One step per agent, in order. `existing` are the RDEAgents in `namespace` by name,
    `claims` the PVCs there by name."""
    steps: list[Step] = []
    for agent in agents:
        name, owner = agent.metadata.name, agent.spec.owner
        if agent.metadata.namespace not in (None, namespace):
            reason = f"it is in namespace {agent.metadata.namespace!r}, not {namespace!r}"
            steps.append(Step(name, "refuse", reason))
            continue
        present = existing.get(name)
        if present is not None:
            present_owner = (present.get("spec") or {}).get("owner")
            if present_owner == owner:
                steps.append(Step(name, "keep", f"RDEAgent {name} exists; left as it is"))
            else:
                reason = f"RDEAgent {name} exists with owner {present_owner!r}, not {owner!r}"
                steps.append(Step(name, "refuse", reason))
            continue
        claim = pvc_name(agent.agent_id)
        recorded = recorded_owner(claims.get(claim))
        if agent.spec.home_mount_path is not None and claim in claims and recorded != (owner, name):
            whose = (
                f"owner {recorded[0]!r} (RDEAgent {recorded[1]!r})"
                if recorded is not None
                else "no recorded owner"
            )
            reason = (
                f"its volume PersistentVolumeClaim {claim} belongs to {whose}, not to owner "
                f"{owner!r}"
            )
            steps.append(Step(name, "refuse", reason))
            continue
        body = clean(agent.to_document())
        body["metadata"]["namespace"] = namespace
        steps.append(Step(name, "create", body=body))
    return steps
