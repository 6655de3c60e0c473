"""The Deployment controller's ReplicaSets and revisions, as pure functions of the objects.

A Deployment owns one ReplicaSet per pod template, named `{deployment}-{pod-template-hash}`.
Each carries a revision (`deployment.kubernetes.io/revision`): a new template gets the next
number, and a template that comes back (`kubectl rollout undo`, or `set image` to an earlier
image) takes the next number again, its old ones kept in `revision-history`. This is what
`kubectl rollout history` lists and what `kubectl rollout undo` rolls back to.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "CHANGE_CAUSE",
    "HASH_LABEL",
    "HISTORY",
    "REVISION",
    "next_revision",
    "owned_by",
    "promotion",
    "replica_set",
    "revision",
]

REVISION = "deployment.kubernetes.io/revision"
HISTORY = "deployment.kubernetes.io/revision-history"
CHANGE_CAUSE = "kubernetes.io/change-cause"
HASH_LABEL = "pod-template-hash"


def revision(obj: Mapping[str, Any]) -> int:
    """The object's revision annotation (0 when it has none, or a malformed one)."""
    value = str(((obj.get("metadata") or {}).get("annotations") or {}).get(REVISION) or "0")
    return int(value) if value.isdigit() else 0


def owned_by(
    deployment: Mapping[str, Any], replica_sets: Iterable[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The ReplicaSets whose controller is `deployment` (by uid, as the controller checks)."""
    uid = deployment["metadata"].get("uid")
    return [
        rs
        for rs in replica_sets
        if any(
            ref.get("controller") and ref.get("uid") == uid
            for ref in rs["metadata"].get("ownerReferences") or []
        )
    ]


def replica_set(
    deployment: Mapping[str, Any], template_hash: str, number: int, replicas: int
) -> dict[str, Any]:
    """A new ReplicaSet for the Deployment's current template, at revision `number`."""
    metadata = deployment["metadata"]
    template = copy.deepcopy(dict(deployment["spec"]["template"]))
    labels = {**(template.get("metadata") or {}).get("labels", {}), HASH_LABEL: template_hash}
    template["metadata"] = {**(template.get("metadata") or {}), "labels": labels}
    selector = copy.deepcopy(dict(deployment["spec"].get("selector") or {}))
    selector["matchLabels"] = {**selector.get("matchLabels", {}), HASH_LABEL: template_hash}
    annotations = {
        REVISION: str(number),
        "deployment.kubernetes.io/desired-replicas": str(replicas),
    }
    cause = (metadata.get("annotations") or {}).get(CHANGE_CAUSE)
    if cause:
        annotations[CHANGE_CAUSE] = cause
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{metadata['name']}-{template_hash}",
            "namespace": metadata.get("namespace"),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": metadata["name"],
                    "uid": metadata.get("uid", ""),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {"replicas": replicas, "selector": selector, "template": template},
    }


def next_revision(replica_sets: Iterable[Mapping[str, Any]]) -> int:
    return max((revision(rs) for rs in replica_sets), default=0) + 1


def promotion(
    current: Mapping[str, Any], others: Iterable[Mapping[str, Any]]
) -> dict[str, Any] | None:
    """The annotations that make `current` the latest revision again, or None if it is.

    Its old number goes to `revision-history`, as the Deployment controller keeps it.
    """
    others = list(others)
    mine = revision(current)
    if others and mine <= max(revision(rs) for rs in others):
        annotations = (current.get("metadata") or {}).get("annotations") or {}
        history = [item for item in str(annotations.get(HISTORY) or "").split(",") if item]
        history.append(str(mine))
        return {REVISION: str(next_revision(others)), HISTORY: ",".join(history)}
    return None
