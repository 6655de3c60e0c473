"""Kubernetes Events on RDEAgents, so `kubectl describe` and `get events` say what happened.

Events are only written on transitions (a scale-down, a wake, a newly invalid spec), never
per reconcile, so a steady state writes none. A failed Event is logged and dropped: it must
never fail the action it describes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Literal

from kuberde.clock import Clock, utc_now
from kuberde.kube import ApiError, KubeApi, Paths
from kuberde.policy import format_timestamp
from kuberde.resource import API_VERSION, KIND

__all__ = ["COMPONENT", "EventRecorder", "EventType"]

log = logging.getLogger(__name__)

COMPONENT = "kuberde-operator"
EventType = Literal["Normal", "Warning"]
_MAX_MESSAGE = 1024


class EventRecorder:
    def __init__(
        self,
        api: KubeApi,
        paths: Paths,
        *,
        instance: str,
        clock: Clock = utc_now,
    ) -> None:
        self._api = api
        self._paths = paths
        self._instance = instance
        self._clock = clock

    async def record(
        self, agent: Mapping[str, Any], kind: EventType, reason: str, message: str
    ) -> None:
        metadata = agent.get("metadata") or {}
        name = str(metadata.get("name"))
        now = format_timestamp(self._clock())
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                # Unique like kubectl's: the object's name and a nanosecond stamp in hex.
                "name": f"{name}.{time.time_ns():x}",
                "namespace": self._paths.namespace,
            },
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": name,
                "namespace": self._paths.namespace,
                "uid": metadata.get("uid"),
            },
            "type": kind,
            "reason": reason,
            "message": message[:_MAX_MESSAGE],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._api.create(self._paths.events, event)
        except ApiError as exc:
            log.warning("could not record event %s on RDEAgent %s: %s", reason, name, exc)
