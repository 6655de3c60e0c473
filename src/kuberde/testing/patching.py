"""Strategic merge patch, the subset `kubectl apply` and `kubectl set image` send.

Pure functions. KMock merges every dict patch as a JSON merge patch, which replaces lists
whole: `kubectl set image` (`containers: [{name, image}]`) would then drop each container's
command, env and mounts. A real API server merges such lists by their merge key; so do we,
for the lists of the pod template, and ignore the `$setElementOrder/…` directives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["MERGE_KEYS", "merge_patch_between", "strategic_merge"]

#: Lists merged item by item on their key, as the Kubernetes API types declare them.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "name",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}


def _merge_list(key: str, old: list[Any], new: list[Any]) -> list[Any]:
    merge_key = MERGE_KEYS.get(key)
    if merge_key is None or not all(isinstance(item, Mapping) for item in old + new):
        return new
    merged = [dict(item) for item in old]
    for item in new:
        if item.get("$patch") == "delete":
            merged = [kept for kept in merged if kept.get(merge_key) != item.get(merge_key)]
            continue
        for index, kept in enumerate(merged):
            if kept.get(merge_key) == item.get(merge_key):
                merged[index] = strategic_merge(kept, item)
                break
        else:
            merged.append(strategic_merge({}, item))
    return merged


def strategic_merge(old: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`old` with `patch` applied: dicts merge, `None` deletes, keyed lists merge by key."""
    if patch.get("$patch") == "replace":
        return {key: value for key, value in patch.items() if key != "$patch"}
    result = dict(old)
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = strategic_merge(result[key], value)
        elif isinstance(value, Mapping):
            result[key] = strategic_merge({}, value)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(key, result[key], value)
        else:
            result[key] = value
    return result


def merge_patch_between(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch that turns `old` into `new` (what KMock can apply)."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = merge_patch_between(before, value)
            if nested:
                patch[key] = nested
        elif key not in old or before != value:
            patch[key] = value
    return patch
