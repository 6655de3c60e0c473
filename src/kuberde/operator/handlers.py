"""Kopf's part: watch RDEAgents and their Deployments, and turn every event into a kick of
the lifecycle engine (`kuberde.engine`), which reconciles that agent once per burst of events.

Only watch-level handlers are used (`@kopf.index`, `@kopf.on.event`): they store nothing on
the objects. Kopf's change-detection handlers would write progress and diff-base annotations
and finalizers, i.e. writes in a steady state; the reconcile itself lives in `Reconciler`.
The handlers are coroutines, so Kopf runs them on the event loop beside the engine they kick
(a plain function would run in a worker thread).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from kuberde.operator.builder import LABEL_MANAGED_BY, LABEL_RDEAGENT, MANAGED_BY
from kuberde.operator.store import AgentStore, claimed_id, name_of, uid_of
from kuberde.resource import GROUP

__all__ = ["build_registry", "kopf_settings"]

log = logging.getLogger(__name__)

Login = Callable[[], Awaitable[kopf.ConnectionInfo]]
Kick = Callable[[str], None]


def kopf_settings(*, watch_inactivity_timeout: float, api_timeout: float) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # Our own Events say what happened; Kopf's per-handler ones would be writes per event.
    settings.posting.enabled = False
    # The namespace and the CRD are fixed; no cluster-wide namespace or CRD watches.
    settings.scanning.disabled = True
    # Leadership is a Lease of ours; Kopf's peering would be a second, independent election.
    settings.peering.standalone = True
    settings.watching.inactivity_timeout = watch_inactivity_timeout
    settings.watching.connect_timeout = api_timeout
    settings.networking.request_timeout = api_timeout
    settings.networking.connect_timeout = api_timeout
    return settings


def build_registry(*, store: AgentStore, kick: Kick, login: Login) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def authenticate(**_: Any) -> kopf.ConnectionInfo:
        return await login()

    @kopf.index(GROUP, "v1", "rdeagents", id="rdeagents", registry=registry)
    async def remember(body: kopf.Body, **_: Any) -> None:
        store.put(body)

    @kopf.on.event(GROUP, "v1", "rdeagents", id="rdeagent-events", registry=registry)
    async def agent_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        name = name_of(body)
        if type != "DELETED":
            kick(name)
            return
        agent = claimed_id(body)
        store.discard(name, uid_of(body))
        log.info(
            "RDEAgent %s deleted: its Deployment and Secret go with it (owner references)",
            name,
        )
        kick(name)
        if agent is not None:
            for other in store.claiming(agent):
                kick(name_of(other))

    @kopf.on.event(
        "apps",
        "v1",
        "deployments",
        id="deployment-events",
        labels={LABEL_MANAGED_BY: MANAGED_BY},
        registry=registry,
    )
    async def deployment_event(body: kopf.Body, **_: Any) -> None:
        owner = (body.get("metadata", {}).get("labels") or {}).get(LABEL_RDEAGENT)
        if owner:
            kick(str(owner))

    return registry
