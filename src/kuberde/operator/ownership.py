"""Which RDEAgent may use an agent ID that several claim: one pure, order-independent choice.

IDs collide (`alice`/`smith-dev` and `alice-smith`/`dev` are both `user-alice-smith-dev`), and
the Deployment and the home PVC are named by ID. Whoever wins gets them, so the choice must
not depend on the order RDEAgents are applied, listed or reconciled in, and a restore from a
backup (new uids, new creation times) must pick the same one as before. The objects record
the owner and RDEAgent name they were made for (labels), and those records survive a restore.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kuberde.operator.annotations import parse_time
from kuberde.operator.builder import LABEL_OWNER, LABEL_RDEAGENT

__all__ = [
    "Claimant",
    "Recorded",
    "Refusal",
    "choose_holder",
    "claimant_of",
    "id_taken",
    "recorded_owner",
]

#: (owner, RDEAgent name) as recorded on a Deployment or PVC.
Recorded = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Claimant:
    """One RDEAgent that asks for an agent ID, reduced to what decides who gets it."""

    namespace: str
    name: str
    owner: str
    created: datetime | None = None

    @property
    def identity(self) -> Recorded:
        return (self.owner, self.name)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an RDEAgent may not have what its ID names, said twice (issue 11: a user learns
    nothing about workspaces they may not see).

    `shown` goes into the RDEAgent's status, which the gateway shows the workspace's owner:
    it names no other workspace or owner. `detail` goes into the operator's log and the
    Warning Event, the cluster admin's view, with whom it collides.
    """

    shown: str
    detail: str


def id_taken(agent_id: str, holder: Claimant) -> Refusal:
    """The refusal of an RDEAgent whose agent ID `holder` holds."""
    return Refusal(
        shown=f"agent ID {agent_id} is already taken by another workspace; choose another name",
        detail=(
            f"agent ID {agent_id} is already used by RDEAgent {holder.name!r} "
            f"(owner {holder.owner!r}); rename this one or its owner"
        ),
    )


def claimant_of(body: Mapping[str, Any]) -> Claimant:
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    return Claimant(
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        owner=str(spec.get("owner") or ""),
        created=parse_time(metadata.get("creationTimestamp")),
    )


def recorded_owner(obj: Mapping[str, Any] | None) -> Recorded | None:
    """The (owner, name) an object of ours was made for, or None if it records none."""
    if obj is None:
        return None
    labels = (obj.get("metadata") or {}).get("labels") or {}
    owner, name = labels.get(LABEL_OWNER), labels.get(LABEL_RDEAGENT)
    if not isinstance(owner, str) or not isinstance(name, str) or not owner or not name:
        return None
    return (owner, name)


def _seniority(claimant: Claimant) -> tuple[bool, datetime | str, str, str, str]:
    """Older first (no time: last), then namespace/name; owner only to make it total."""
    created: datetime | str = claimant.created if claimant.created is not None else ""
    return (claimant.created is None, created, claimant.namespace, claimant.name, claimant.owner)


def choose_holder(claimants: Iterable[Claimant], records: Sequence[Recorded | None]) -> Claimant:
    """The claimant that holds the ID.

    `records` are the owners recorded on the existing objects, most decisive first (the
    Deployment, then the PVC). The first record that names a claimant gives it the ID: it
    already owns what the ID names. Otherwise the oldest creationTimestamp wins, then
    namespace/name (timestamps have one-second resolution, so ties are common).
    """
    pool = sorted(set(claimants), key=_seniority)
    if not pool:
        raise ValueError("choose_holder needs at least one claimant")
    for record in records:
        for claimant in pool:
            if record is not None and claimant.identity == record:
                return claimant
    return pool[0]
