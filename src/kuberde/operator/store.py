"""The latest known body of every RDEAgent in the namespace, fed by Kopf's watch stream.

The periodic loops iterate this instead of listing the API every cycle. Kopf fills it from
an index handler, which it guarantees to run over the complete initial listing before any
other handler: so no reconcile starts while the store is still missing agents (which would
hide an agent-ID collision at start-up).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from kuberde import naming

__all__ = ["AgentStore", "claimed_id", "name_of", "uid_of"]


def name_of(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("name") or "")


def uid_of(body: Mapping[str, Any]) -> str | None:
    uid = (body.get("metadata") or {}).get("uid")
    return str(uid) if uid else None


def claimed_id(body: Mapping[str, Any]) -> str | None:
    """The agent ID the body asks for, or None if its owner or name cannot form one."""
    spec = body.get("spec")
    owner = spec.get("owner") if isinstance(spec, Mapping) else None
    try:
        return naming.agent_id(str(owner), name_of(body))
    except naming.InvalidName:
        return None


class AgentStore:
    def __init__(self) -> None:
        self._bodies: dict[str, dict[str, Any]] = {}
        self._by_id: dict[str, set[str]] = {}

    def put(self, body: Mapping[str, Any]) -> None:
        """Keep a private deep copy: callers' (and Kopf's) dicts may change later."""
        name = name_of(body)
        if not name:
            return
        self._unindex(name)
        self._bodies[name] = copy.deepcopy(dict(body))
        agent = claimed_id(body)
        if agent is not None:
            self._by_id.setdefault(agent, set()).add(name)

    def discard(self, name: str, uid: str | None = None) -> None:
        """Forget `name`; with `uid`, only if it is still that object (not a re-creation)."""
        body = self._bodies.get(name)
        if body is not None and (uid is None or uid_of(body) in (None, uid)):
            self._unindex(name)
            del self._bodies[name]

    def _unindex(self, name: str) -> None:
        old = self._bodies.get(name)
        agent = claimed_id(old) if old is not None else None
        if agent is not None:
            names = self._by_id.get(agent, set())
            names.discard(name)
            if not names:
                self._by_id.pop(agent, None)

    def get(self, name: str) -> dict[str, Any] | None:
        return self._bodies.get(name)

    def claiming(self, agent: str) -> list[dict[str, Any]]:
        """Every RDEAgent whose owner and name form the agent ID `agent`."""
        return [self._bodies[name] for name in sorted(self._by_id.get(agent, ()))]

    def bodies(self) -> list[dict[str, Any]]:
        return list(self._bodies.values())

    def __len__(self) -> int:
        return len(self._bodies)
