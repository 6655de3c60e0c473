"""Server-side printing: objects as the `meta.k8s.io/v1` Table that `kubectl get` asks for.

Pure functions. Custom resources get the columns of their CRD's `additionalPrinterColumns`
(priority 1 columns are the ones `-o wide` adds); the built-in kinds the runbook lists get
the columns a real API server prints for them; anything else gets NAME and AGE, as a CRD
without printer columns does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kuberde.clock import parse_timestamp

__all__ = [
    "AGE",
    "BUILT_IN",
    "DEFAULT",
    "NAME",
    "Column",
    "crd_columns",
    "human_duration",
    "jsonpath_value",
    "table",
]

Cell = str | int | bool | None


@dataclass(frozen=True)
class Column:
    """One column: its definition and how a cell is computed from an object."""

    name: str
    type: str
    cell: Callable[[Mapping[str, Any], datetime], Cell]
    priority: int = 0
    format: str = ""

    @property
    def definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "format": self.format,
            "description": "",
            "priority": self.priority,
        }


def human_duration(seconds: float) -> str:
    """A duration as `kubectl` shows ages (Kubernetes' `duration.HumanDuration`)."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        rest = whole % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = whole // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        rest = (hours // 24) % 365
        years = hours // 24 // 365
        return f"{years}y{rest}d" if rest else f"{years}y"
    return f"{hours // 24 // 365}y"


def _age(value: object, now: datetime) -> str:
    when = parse_timestamp(value)
    return "<unknown>" if when is None else human_duration((now - when).total_seconds())


_STEP = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]")


def jsonpath_value(obj: Any, path: str) -> Any:
    """The value at a simple JSON path (`.status.phase`, `.spec.containers[0].image`)."""
    value = obj
    for key, index in _STEP.findall(path.strip().strip("{}")):
        if key:
            value = value.get(key) if isinstance(value, Mapping) else None
        else:
            value = (
                value[int(index)] if isinstance(value, list) and int(index) < len(value) else None
            )
        if value is None:
            return None
    return value


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _name(obj: Mapping[str, Any], _: datetime) -> Cell:
    return str(_metadata(obj).get("name", ""))


def _created(obj: Mapping[str, Any], now: datetime) -> Cell:
    return _age(_metadata(obj).get("creationTimestamp"), now)


NAME = Column("Name", "string", _name, format="name")
AGE = Column("Age", "string", _created)
#: What a CRD without printer columns, or a kind without its own printer, shows.
DEFAULT = [NAME, AGE]


def _crd_cell(path: str, kind: str) -> Callable[[Mapping[str, Any], datetime], Cell]:
    def cell(obj: Mapping[str, Any], now: datetime) -> Cell:
        value = jsonpath_value(obj, path)
        if value is None:
            return None
        if kind == "date":
            return _age(value, now)
        if isinstance(value, bool | int | str):
            return value
        return str(value)

    return cell


def crd_columns(printer_columns: Sequence[Mapping[str, Any]]) -> list[Column]:
    """NAME, then the CRD's `additionalPrinterColumns`."""
    return [NAME] + [
        Column(
            str(column["name"]),
            "string" if column.get("type") == "date" else str(column.get("type", "string")),
            _crd_cell(str(column["jsonPath"]), str(column.get("type", "string"))),
            priority=int(column.get("priority", 0)),
        )
        for column in printer_columns
    ]


def _pod_ready(pod: Mapping[str, Any], _: datetime) -> Cell:
    containers = (pod.get("spec") or {}).get("containers") or []
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return f"{sum(1 for status in statuses if status.get('ready'))}/{len(containers)}"


def _pod_status(pod: Mapping[str, Any], _: datetime) -> Cell:
    metadata = _metadata(pod)
    if metadata.get("deletionTimestamp"):
        return "Terminating"
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return str(waiting["reason"])
    return str(status.get("reason") or status.get("phase") or "Unknown")


def _pod_restarts(pod: Mapping[str, Any], _: datetime) -> Cell:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return sum(int(status.get("restartCount") or 0) for status in statuses)


def _field(path: str, default: Cell = "<none>") -> Callable[[Mapping[str, Any], datetime], Cell]:
    def cell(obj: Mapping[str, Any], _: datetime) -> Cell:
        value = jsonpath_value(obj, path)
        return default if value is None else value if isinstance(value, int | str) else str(value)

    return cell


def _deployment_ready(deployment: Mapping[str, Any], _: datetime) -> Cell:
    status = deployment.get("status") or {}
    wanted = (deployment.get("spec") or {}).get("replicas", 1)
    return f"{int(status.get('readyReplicas') or 0)}/{int(wanted)}"


def _containers(deployment: Mapping[str, Any], key: str) -> str:
    template = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    return ",".join(str(container.get(key, "")) for container in template.get("containers") or [])


def _selector(deployment: Mapping[str, Any], _: datetime) -> Cell:
    labels = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _event_last_seen(event: Mapping[str, Any], now: datetime) -> Cell:
    stamp = event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")
    return _age(stamp, now)


def _event_object(event: Mapping[str, Any], _: datetime) -> Cell:
    involved = event.get("involvedObject") or {}
    return f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}"


BUILT_IN: dict[str, list[Column]] = {
    "Pod": [
        NAME,
        Column("Ready", "string", _pod_ready),
        Column("Status", "string", _pod_status),
        Column("Restarts", "integer", _pod_restarts),
        AGE,
        Column("IP", "string", _field(".status.podIP"), priority=1),
        Column("Node", "string", _field(".spec.nodeName"), priority=1),
    ],
    "Deployment": [
        NAME,
        Column("Ready", "string", _deployment_ready),
        Column("Up-to-date", "integer", _field(".status.updatedReplicas", 0)),
        Column("Available", "integer", _field(".status.availableReplicas", 0)),
        AGE,
        Column("Containers", "string", lambda obj, _: _containers(obj, "name"), priority=1),
        Column("Images", "string", lambda obj, _: _containers(obj, "image"), priority=1),
        Column("Selector", "string", _selector, priority=1),
    ],
    "ReplicaSet": [
        NAME,
        Column("Desired", "integer", _field(".spec.replicas", 0)),
        Column("Current", "integer", _field(".status.replicas", 0)),
        Column("Ready", "integer", _field(".status.readyReplicas", 0)),
        AGE,
        Column("Containers", "string", lambda obj, _: _containers(obj, "name"), priority=1),
        Column("Images", "string", lambda obj, _: _containers(obj, "image"), priority=1),
        Column("Selector", "string", _selector, priority=1),
    ],
    "Event": [
        Column("Last Seen", "string", _event_last_seen),
        Column("Type", "string", _field(".type", "")),
        Column("Reason", "string", _field(".reason", "")),
        Column("Object", "string", _event_object),
        Column("Message", "string", _field(".message", "")),
    ],
    "RoleBinding": [NAME, Column("Role", "string", _field(".roleRef.name", "")), AGE],
    "ClusterRoleBinding": [NAME, Column("Role", "string", _field(".roleRef.name", "")), AGE],
}


def _row_object(obj: Mapping[str, Any], include: str) -> dict[str, Any] | None:
    if include == "None":
        return None
    if include == "Object":
        return dict(obj)
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": dict(_metadata(obj)),
    }


def table(
    objects: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    now: datetime,
    resource_version: str,
    include_object: str = "Metadata",
) -> dict[str, Any]:
    """The Table of `objects`; `include_object` is the request's `includeObject` parameter."""
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [column.cell(obj, now) for column in columns]}
        embedded = _row_object(obj, include_object)
        if embedded is not None:
            row["object"] = embedded
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [column.definition for column in columns],
        "rows": rows,
    }
