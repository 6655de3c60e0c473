"""Desired Kubernetes objects for one RDEAgent, as plain dicts.

Pure: the operator decides replicas (through `kuberde.policy`) and does the I/O; this module
only says what should exist. Change detection hashes our own desired spec and stores the hash
in an annotation (DESIGN.md §9). Comparing with the API server's copy field by field sees its
defaults (`protocol: TCP`, `terminationMessagePath`, empty maps) as changes, rewrites the pod
template on every reconcile and restarts pods.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kuberde import naming
from kuberde.operator.defaults import DEFAULT_AGENT_IMAGE, DEFAULT_GATEWAY_URL
from kuberde.resource import API_VERSION, KIND, STORAGE_VOLUME, RDEAgent, ResourceRequirements

__all__ = [
    "AGENT_CONTAINER",
    "CREDENTIAL_KEY",
    "CREDENTIAL_MOUNT_PATH",
    "CREDENTIAL_VOLUME",
    "DEFAULT_AGENT_IMAGE",
    "DEFAULT_AGENT_RESOURCES",
    "DEFAULT_GATEWAY_URL",
    "LABEL_MANAGED_BY",
    "LABEL_OWNER",
    "LABEL_RDEAGENT",
    "MANAGED_BY",
    "SPEC_HASH_ANNOTATION",
    "WORKLOAD_CONTAINER",
    "BuildError",
    "BuilderSettings",
    "agent_server_url",
    "build_deployment",
    "build_pvc",
    "build_secret",
    "credential_secret_name",
    "deployment_needs_update",
    "object_labels",
    "owner_reference",
    "pvc_name",
    "spec_hash",
]

SPEC_HASH_ANNOTATION = "kuberde.io/spec-hash"
DEFAULT_AGENT_RESOURCES: Mapping[str, Mapping[str, str]] = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"memory": "256Mi"},
}
AGENT_CONTAINER = "agent"
WORKLOAD_CONTAINER = "workload"
CREDENTIAL_VOLUME = "agent-credential"
CREDENTIAL_MOUNT_PATH = "/var/run/kuberde/agent"
CREDENTIAL_KEY = "token"
MANAGED_BY = "kuberde-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_OWNER = "kuberde.io/owner"
LABEL_RDEAGENT = "kuberde.io/rdeagent"
_AGENT_UID = 10001
# World-readable is safe: the volume is mounted into the agent container only, and the agent
# runs as a fixed non-root uid that does not own the files.
_CREDENTIAL_MODE = 0o444


class BuildError(ValueError):
    """The RDEAgent is valid as a document but cannot be run on Kubernetes as it stands."""


@dataclass(frozen=True, slots=True)
class BuilderSettings:
    """Operator-wide inputs; `gateway_url` is the gateway's base HTTP URL, without `/ws`."""

    gateway_url: str = DEFAULT_GATEWAY_URL
    agent_image: str = DEFAULT_AGENT_IMAGE


def agent_server_url(gateway_url: str) -> str:
    """The WebSocket URL agents dial (`http://host:8080` → `ws://host:8080/ws`)."""
    parts = urlsplit(gateway_url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise BuildError(f"gateway URL {gateway_url!r} must be http(s)://host[:port]")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", "", ""))


def credential_secret_name(agent: RDEAgent) -> str:
    return f"{agent.agent_id}-credential"


def pvc_name(agent_id: str) -> str:
    """`user-{owner}-{name}-home`: named by agent ID, so colliding IDs meet on one name and the
    recorded owner (never the name) decides whose it is."""
    return f"{agent_id}-home"


def object_labels(agent: RDEAgent) -> dict[str, str]:
    """Labels of every object we create; the pod's `app`/`instance` plus who it belongs to."""
    return {
        **naming.agent_labels(agent.agent_id),
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_OWNER: agent.spec.owner,
        LABEL_RDEAGENT: agent.metadata.name,
    }


def owner_reference(agent: RDEAgent) -> dict[str, Any]:
    """Makes the object garbage-collected with its RDEAgent."""
    if not agent.metadata.uid:
        raise BuildError(
            f"RDEAgent {agent.metadata.name!r} has no metadata.uid; "
            "owner references need the uid the API server assigned"
        )
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": agent.metadata.name,
        "uid": agent.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _check_namespace(agent: RDEAgent, namespace: str) -> None:
    naming.validate_name(namespace, "namespace")
    own = agent.metadata.namespace
    if own is not None and own != namespace:
        raise BuildError(
            f"RDEAgent {agent.metadata.name!r} is in namespace {own!r}, not {namespace!r}; "
            "owner references cannot cross namespaces"
        )


def build_secret(agent: RDEAgent, *, namespace: str, name: str, token: str) -> dict[str, Any]:
    """The agent's credential, mounted as a file so it never shows in env or args."""
    _check_namespace(agent, namespace)
    if not token:
        raise BuildError("the agent credential must not be empty")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": object_labels(agent),
            "ownerReferences": [owner_reference(agent)],
        },
        "type": "Opaque",
        "data": {CREDENTIAL_KEY: base64.b64encode(token.encode()).decode("ascii")},
    }


def build_pvc(agent: RDEAgent, *, namespace: str) -> dict[str, Any] | None:
    """The workspace's home volume, or None when it has none (ephemeral, or no workload).

    Its labels record the owner and RDEAgent name it belongs to: the operator mounts it for
    that pair only. An owner reference (garbage collection with the RDEAgent) only with
    `reclaimPolicy: Delete`; by default deleting an RDEAgent never deletes a user's files.
    """
    _check_namespace(agent, namespace)
    storage = agent.spec.storage
    if agent.spec.home_mount_path is None:
        return None
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": storage.size}},
    }
    if storage.storage_class_name is not None:
        spec["storageClassName"] = storage.storage_class_name
    metadata: dict[str, Any] = {
        "name": pvc_name(agent.agent_id),
        "namespace": namespace,
        "labels": object_labels(agent),
    }
    if storage.reclaim_policy == "Delete":
        metadata["ownerReferences"] = [owner_reference(agent)]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata,
        "spec": spec,
    }


def _resources(value: ResourceRequirements | None) -> dict[str, Any]:
    if value is None:
        return {key: dict(amounts) for key, amounts in DEFAULT_AGENT_RESOURCES.items()}
    return value.model_dump(by_alias=True, exclude_defaults=True)


def _agent_container(agent: RDEAgent, settings: BuilderSettings) -> dict[str, Any]:
    overrides = agent.spec.agent
    image = overrides.image if overrides is not None and overrides.image else settings.agent_image
    ports = ",".join(str(port) for port in agent.spec.effective_allowed_ports)
    return {
        "name": AGENT_CONTAINER,
        "image": image,
        "command": ["kuberde", "agent"],
        "env": [
            {"name": "SERVER_URL", "value": agent_server_url(settings.gateway_url)},
            {"name": "AGENT_ID", "value": agent.agent_id},
            {"name": "LOCAL_TARGET", "value": agent.spec.local_target},
            {"name": "ALLOWED_PORTS", "value": ports},
            {"name": "AGENT_TOKEN_FILE", "value": f"{CREDENTIAL_MOUNT_PATH}/{CREDENTIAL_KEY}"},
        ],
        "resources": _resources(overrides.resources if overrides is not None else None),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": _AGENT_UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": CREDENTIAL_VOLUME, "mountPath": CREDENTIAL_MOUNT_PATH, "readOnly": True}
        ],
    }


def _workload_container(agent: RDEAgent) -> dict[str, Any] | None:
    workload = agent.spec.workload
    if workload is None:
        return None
    if workload.image is None:
        raise BuildError(
            f"RDEAgent {agent.metadata.name!r}: spec.workload.image is required on Kubernetes "
            "(a command without an image only runs with the local runtime)"
        )
    container: dict[str, Any] = {"name": WORKLOAD_CONTAINER, "image": workload.image}
    if workload.command:
        container["command"] = list(workload.command)
    if workload.args:
        container["args"] = list(workload.args)
    if workload.env:
        container["env"] = [{"name": var.name, "value": var.value} for var in workload.env]
    if workload.working_dir is not None:
        container["workingDir"] = workload.working_dir
    if workload.ports:
        container["ports"] = [
            port.model_dump(by_alias=True, exclude_none=True) for port in workload.ports
        ]
    if workload.resources is not None:
        container["resources"] = workload.resources.model_dump(by_alias=True, exclude_defaults=True)
    if workload.security_context is not None:
        container["securityContext"] = copy.deepcopy(workload.security_context)
    mounts: list[dict[str, Any]] = []
    home = agent.spec.home_mount_path
    if home is not None:
        mounts.append({"name": STORAGE_VOLUME, "mountPath": home})
    mounts.extend(
        mount.model_dump(by_alias=True, exclude_none=True) for mount in workload.volume_mounts
    )
    if mounts:
        container["volumeMounts"] = mounts
    return container


def build_deployment(
    agent: RDEAgent,
    *,
    namespace: str,
    replicas: int,
    secret_name: str,
    settings: BuilderSettings | None = None,
) -> dict[str, Any]:
    """The agent's Deployment (`user-{owner}-{name}`), annotated with its `spec_hash`.

    `Recreate`, not a rolling update: two pods of one agent would take the agent ID from each
    other, and a ReadWriteOnce volume cannot be attached to both.
    """
    _check_namespace(agent, namespace)
    if replicas < 0:
        raise BuildError(f"replicas must not be negative, got {replicas}")
    settings = settings or BuilderSettings()
    pod_labels = naming.agent_labels(agent.agent_id)
    containers = [_agent_container(agent, settings)]
    workload = _workload_container(agent)
    if workload is not None:
        containers.append(workload)
    volumes: list[dict[str, Any]] = [
        {
            "name": CREDENTIAL_VOLUME,
            "secret": {"secretName": secret_name, "defaultMode": _CREDENTIAL_MODE},
        }
    ]
    if agent.spec.home_mount_path is not None:
        volumes.append(
            {
                "name": STORAGE_VOLUME,
                "persistentVolumeClaim": {"claimName": pvc_name(agent.agent_id)},
            }
        )
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "containers": containers,
        "volumes": volumes,
    }
    fs_group = agent.spec.storage.fs_group
    if fs_group is not None and agent.spec.home_mount_path is not None:
        pod_spec["securityContext"] = {"fsGroup": fs_group}
    if agent.spec.node_selector:
        pod_spec["nodeSelector"] = dict(agent.spec.node_selector)
    if agent.spec.tolerations:
        pod_spec["tolerations"] = [
            toleration.model_dump(by_alias=True, exclude_none=True)
            for toleration in agent.spec.tolerations
        ]
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": agent.agent_id,
            "namespace": namespace,
            "labels": object_labels(agent),
            "ownerReferences": [owner_reference(agent)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": pod_labels},
            "strategy": {"type": "Recreate"},
            "template": {"metadata": {"labels": dict(pod_labels)}, "spec": pod_spec},
        },
    }
    deployment["metadata"]["annotations"] = {SPEC_HASH_ANNOTATION: spec_hash(deployment)}
    return deployment


def spec_hash(desired: Mapping[str, Any]) -> str:
    """sha256 of canonical JSON of our desired Deployment's labels, owners and spec.

    Replicas are left out: scaling to zero and back is the operator's decision, not a change
    of the pod template, and must never cause a rollout.
    """
    metadata = desired.get("metadata") or {}
    spec = {key: value for key, value in (desired.get("spec") or {}).items() if key != "replicas"}
    payload = {
        "labels": metadata.get("labels") or {},
        "ownerReferences": metadata.get("ownerReferences") or [],
        "spec": spec,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def deployment_needs_update(live: Mapping[str, Any] | None, desired_hash: str) -> bool:
    """True when there is no live Deployment or its hash annotation differs from ours.

    Only the annotation is compared, never the live spec, so server defaults cannot look like
    changes.
    """
    if live is None:
        return True
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    return bool(annotations.get(SPEC_HASH_ANNOTATION) != desired_hash)
