"""Desired Deployment/Secret/PVC for an RDEAgent, change detection, and the deploy/ manifests."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kuberde.operator.builder import (
    AGENT_CONTAINER,
    CREDENTIAL_MOUNT_PATH,
    DEFAULT_AGENT_IMAGE,
    DEFAULT_GATEWAY_URL,
    SPEC_HASH_ANNOTATION,
    WORKLOAD_CONTAINER,
    BuildError,
    BuilderSettings,
    agent_server_url,
    build_deployment,
    build_pvc,
    build_secret,
    credential_secret_name,
    deployment_needs_update,
    pvc_name,
    spec_hash,
)
from kuberde.resource import RDEAgent, parse_agent

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
TOKEN = "agent-credential-value-7f3a"
UID = "0b6f5d2e-1111-4c4c-9e9e-123456789abc"


def make_agent(**spec: Any) -> RDEAgent:
    body: dict[str, Any] = {
        "owner": "testuser",
        "ttl": "5m",
        "workload": {
            "image": "lscr.io/linuxserver/openssh-server:latest",
            "env": [{"name": "USER_NAME", "value": "testuser"}],
            "ports": [{"containerPort": 2222, "name": "ssh"}],
            "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}},
        },
        "storage": {"size": "5Gi", "storageClassName": "standard", "mountPath": "/config"},
        "localTarget": "127.0.0.1:2222",
    }
    body.update(spec)
    body = {key: value for key, value in body.items() if value is not None}
    return parse_agent(
        {
            "apiVersion": "kuberde.io/v1",
            "kind": "RDEAgent",
            "metadata": {"name": "ssh-server", "namespace": "kuberde", "uid": UID},
            "spec": body,
        }
    )


def deployment_of(agent: RDEAgent | None = None, replicas: int = 1) -> dict[str, Any]:
    agent = agent or make_agent()
    return build_deployment(
        agent,
        namespace="kuberde",
        replicas=replicas,
        secret_name=credential_secret_name(agent),
    )


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return dict(found)


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {var["name"]: var["value"] for var in c["env"]}


OWNER_REFERENCE = {
    "apiVersion": "kuberde.io/v1",
    "kind": "RDEAgent",
    "name": "ssh-server",
    "uid": UID,
    "controller": True,
    "blockOwnerDeletion": True,
}


# --- Deployment -------------------------------------------------------------------------------


def test_deployment_names_and_labels() -> None:
    deployment = deployment_of()
    metadata = deployment["metadata"]
    assert (deployment["apiVersion"], deployment["kind"]) == ("apps/v1", "Deployment")
    assert metadata["name"] == "user-testuser-ssh-server"
    assert metadata["namespace"] == "kuberde"
    pod_labels = {"app": "frp-agent", "instance": "user-testuser-ssh-server"}
    assert deployment["spec"]["selector"] == {"matchLabels": pod_labels}
    assert deployment["spec"]["template"]["metadata"]["labels"] == pod_labels
    assert metadata["labels"].items() >= pod_labels.items()
    assert metadata["labels"]["kuberde.io/owner"] == "testuser"
    assert metadata["ownerReferences"] == [OWNER_REFERENCE]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_agent_container_environment() -> None:
    agent_container = deployment_of()["spec"]["template"]["spec"]["containers"][0]
    assert agent_container["name"] == AGENT_CONTAINER
    assert agent_container["image"] == DEFAULT_AGENT_IMAGE
    assert agent_container["command"] == ["kuberde", "agent"]
    assert env_of(agent_container) == {
        "SERVER_URL": "ws://frp-server.kuberde.svc:8080/ws",
        "AGENT_ID": "user-testuser-ssh-server",
        "LOCAL_TARGET": "127.0.0.1:2222",
        "ALLOWED_PORTS": "2222",
        "AGENT_TOKEN_FILE": f"{CREDENTIAL_MOUNT_PATH}/token",
    }
    assert agent_container["securityContext"]["runAsNonRoot"] is True


def test_credential_is_a_mounted_file_never_env_or_args() -> None:
    agent = make_agent()
    deployment = deployment_of(agent)
    secret = build_secret(
        agent, namespace="kuberde", name=credential_secret_name(agent), token=TOKEN
    )
    assert TOKEN not in json.dumps(deployment)
    assert base64.b64decode(secret["data"]["token"]).decode() == TOKEN
    pod = deployment["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    agent_mounts = container(deployment, AGENT_CONTAINER)["volumeMounts"]
    assert {"name": volume["name"], "mountPath": CREDENTIAL_MOUNT_PATH, "readOnly": True} in (
        agent_mounts
    )
    workload_mounts = container(deployment, WORKLOAD_CONTAINER)["volumeMounts"]
    assert all(mount["name"] != volume["name"] for mount in workload_mounts)
    assert pod["automountServiceAccountToken"] is False


def test_workload_container() -> None:
    workload = container(deployment_of(), WORKLOAD_CONTAINER)
    assert workload == {
        "name": "workload",
        "image": "lscr.io/linuxserver/openssh-server:latest",
        "env": [{"name": "USER_NAME", "value": "testuser"}],
        "ports": [{"containerPort": 2222, "name": "ssh"}],
        "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}},
        "volumeMounts": [{"name": "workspace", "mountPath": "/config"}],
    }


def test_full_workload_is_passed_through() -> None:
    agent = make_agent(
        workload={
            "image": "img",
            "command": ["sh", "-c"],
            "args": ["exec sshd -D"],
            "workingDir": "/w",
            "resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "1Gi", "cpu": 2}},
            "volumeMounts": [{"name": "workspace", "mountPath": "/cache", "subPath": "c"}],
        },
        nodeSelector={"disk": "ssd"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    deployment = deployment_of(agent)
    workload = container(deployment, WORKLOAD_CONTAINER)
    assert workload["command"] == ["sh", "-c"]
    assert workload["args"] == ["exec sshd -D"]
    assert workload["workingDir"] == "/w"
    assert workload["resources"] == {
        "requests": {"cpu": "100m"},
        "limits": {"memory": "1Gi", "cpu": 2},
    }
    assert workload["volumeMounts"] == [
        {"name": "workspace", "mountPath": "/config"},
        {"name": "workspace", "mountPath": "/cache", "subPath": "c"},
    ]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"disk": "ssd"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_storage_volume_survives_scale_to_zero() -> None:
    agent = make_agent()
    for replicas in (1, 0):
        deployment = deployment_of(agent, replicas=replicas)
        assert deployment["spec"]["replicas"] == replicas
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert {
            "name": "workspace",
            "persistentVolumeClaim": {"claimName": pvc_name(agent.agent_id)},
        } in (volumes)


def test_agent_overrides_and_settings() -> None:
    agent = make_agent(
        agent={"image": "example/agent:2", "resources": {"limits": {"memory": "64Mi"}}},
        allowedPorts=[8080, 22],
    )
    settings = BuilderSettings(gateway_url="https://gw.example.com/base/", agent_image="x/y:1")
    deployment = build_deployment(
        agent, namespace="kuberde", replicas=1, secret_name="s", settings=settings
    )
    agent_container = container(deployment, AGENT_CONTAINER)
    assert agent_container["image"] == "example/agent:2"
    assert agent_container["resources"] == {"limits": {"memory": "64Mi"}}
    env = env_of(agent_container)
    assert env["SERVER_URL"] == "wss://gw.example.com/base/ws"
    assert env["ALLOWED_PORTS"] == "22,2222,8080"
    plain = build_deployment(
        make_agent(), namespace="kuberde", replicas=1, secret_name="s", settings=settings
    )
    assert container(plain, AGENT_CONTAINER)["image"] == "x/y:1"


@pytest.mark.parametrize(
    "spec",
    [
        {"workload": None, "storage": None, "localTarget": "db.example.svc:5432"},
        {"storage": {"ephemeral": True}},
    ],
    ids=["no-workload", "ephemeral"],
)
def test_no_volume_claim_without_workload_or_when_ephemeral(spec: dict[str, Any]) -> None:
    agent = make_agent(**spec)
    deployment = deployment_of(agent)
    pod = deployment["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["agent-credential"]
    mounts = [m for c in pod["containers"][1:] for m in c.get("volumeMounts", [])]
    assert mounts == []
    assert build_pvc(agent, namespace="kuberde") is None


def test_the_built_objects_do_not_share_state_with_the_model() -> None:
    agent = make_agent()
    first = deployment_of(agent)
    container(first, WORKLOAD_CONTAINER)["securityContext"]["capabilities"]["add"].append("ALL")
    first["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "9"
    assert deployment_of(agent) == deployment_of(make_agent())


@pytest.mark.parametrize(
    ("agent_kwargs", "build_kwargs", "message"),
    [
        ({"workload": {"command": ["sleep", "1"]}}, {}, "spec.workload.image is required"),
        ({}, {"namespace": "other"}, "is in namespace 'kuberde', not 'other'"),
        ({}, {"replicas": -1}, "replicas must not be negative"),
        ({}, {"namespace": "Bad_NS"}, "namespace 'Bad_NS'"),
    ],
)
def test_deployment_build_errors(
    agent_kwargs: dict[str, Any], build_kwargs: dict[str, Any], message: str
) -> None:
    agent = make_agent(**agent_kwargs)
    arguments: dict[str, Any] = {"namespace": "kuberde", "replicas": 1, "secret_name": "s"}
    arguments.update(build_kwargs)
    with pytest.raises(ValueError, match=message):
        build_deployment(agent, **arguments)


def test_owner_references_need_the_uid() -> None:
    document = make_agent().to_document()
    del document["metadata"]["uid"]
    agent = parse_agent(document)
    with pytest.raises(BuildError, match=r"no metadata\.uid"):
        deployment_of(agent)
    with pytest.raises(BuildError, match=r"no metadata\.uid"):
        build_secret(agent, namespace="kuberde", name="s", token=TOKEN)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (DEFAULT_GATEWAY_URL, "ws://frp-server.kuberde.svc:8080/ws"),
        ("http://frp-server.kuberde.svc:8080/", "ws://frp-server.kuberde.svc:8080/ws"),
        ("https://gw.example.com", "wss://gw.example.com/ws"),
        ("wss://gw.example.com:8443/prefix", "wss://gw.example.com:8443/prefix/ws"),
    ],
)
def test_agent_server_url(url: str, expected: str) -> None:
    assert agent_server_url(url) == expected


@pytest.mark.parametrize("url", ["ftp://x", "frp-server:8080", "http://", ""])
def test_agent_server_url_rejects(url: str) -> None:
    with pytest.raises(BuildError, match="must be http"):
        agent_server_url(url)


# --- Secret and PVC ---------------------------------------------------------------------------


def test_secret() -> None:
    agent = make_agent()
    secret = build_secret(agent, namespace="kuberde", name="user-x-credential", token=TOKEN)
    assert (secret["apiVersion"], secret["kind"], secret["type"]) == ("v1", "Secret", "Opaque")
    assert secret["metadata"]["name"] == "user-x-credential"
    assert secret["metadata"]["namespace"] == "kuberde"
    assert secret["metadata"]["ownerReferences"] == [OWNER_REFERENCE]
    assert secret["metadata"]["labels"]["instance"] == "user-testuser-ssh-server"
    with pytest.raises(BuildError, match="must not be empty"):
        build_secret(agent, namespace="kuberde", name="s", token="")


def test_pvc_records_its_owner_and_is_not_owned_by_default() -> None:
    agent = make_agent()
    pvc = build_pvc(agent, namespace="kuberde")
    assert pvc is not None
    assert (pvc["apiVersion"], pvc["kind"]) == ("v1", "PersistentVolumeClaim")
    assert "ownerReferences" not in pvc["metadata"], "Retain: the garbage collector must not see it"
    assert pvc["metadata"]["name"] == "user-testuser-ssh-server-home"
    assert pvc["metadata"]["labels"] == {
        "app": "frp-agent",
        "instance": "user-testuser-ssh-server",
        "app.kubernetes.io/managed-by": "kuberde-operator",
        "kuberde.io/owner": "testuser",
        "kuberde.io/rdeagent": "ssh-server",
    }
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "5Gi"}},
        "storageClassName": "standard",
    }
    default_class = make_agent(storage={"size": "1Gi"}, workload={"image": "x"})
    built = build_pvc(default_class, namespace="kuberde")
    assert built is not None
    assert "storageClassName" not in built["spec"]


def test_fs_group_makes_the_home_volume_writable_for_the_image_group() -> None:
    pod = deployment_of(make_agent(storage={"fsGroup": 100}))["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"fsGroup": 100}
    assert "securityContext" not in deployment_of()["spec"]["template"]["spec"]
    ephemeral = make_agent(storage={"fsGroup": 100, "ephemeral": True})
    assert "securityContext" not in deployment_of(ephemeral)["spec"]["template"]["spec"]


def test_pvc_with_reclaim_policy_delete_goes_with_its_rdeagent() -> None:
    agent = make_agent(storage={"reclaimPolicy": "Delete"})
    pvc = build_pvc(agent, namespace="kuberde")
    assert pvc is not None
    assert pvc["metadata"]["ownerReferences"] == [OWNER_REFERENCE]


@pytest.mark.parametrize(
    ("workload", "storage", "mounted_at"),
    [
        ({"image": "x"}, {}, "/home/testuser"),
        ({"image": "x", "env": [{"name": "HOME", "value": "/home/jovyan"}]}, {}, "/home/jovyan"),
        ({"image": "x", "env": [{"name": "HOME", "value": "relative"}]}, {}, "/home/testuser"),
        ({"image": "x", "env": [{"name": "HOME", "value": "/h"}]}, {"mountPath": "/d"}, "/d"),
    ],
)
def test_default_storage_is_a_home_volume(
    workload: dict[str, Any], storage: dict[str, Any], mounted_at: str
) -> None:
    agent = make_agent(workload=workload, storage=storage or None)
    pvc = build_pvc(agent, namespace="kuberde")
    assert pvc is not None
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert "storageClassName" not in pvc["spec"]
    assert container(deployment_of(agent), WORKLOAD_CONTAINER)["volumeMounts"] == [
        {"name": "workspace", "mountPath": mounted_at}
    ]


# --- change detection -------------------------------------------------------------------------


def _reordered(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _reordered(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(item) for item in value]
    return value


def test_hash_is_stable_and_in_the_annotation() -> None:
    first, second = deployment_of(), deployment_of()
    assert spec_hash(first) == spec_hash(second)
    assert len(spec_hash(first)) == 64
    assert int(spec_hash(first), 16) >= 0
    assert first["metadata"]["annotations"] == {SPEC_HASH_ANNOTATION: spec_hash(first)}


def test_hash_ignores_key_order() -> None:
    deployment = deployment_of()
    reordered = _reordered(deployment)
    assert json.dumps(reordered) != json.dumps(deployment)
    assert spec_hash(reordered) == spec_hash(deployment)


def test_hash_ignores_replicas() -> None:
    running, scaled_down = deployment_of(replicas=1), deployment_of(replicas=0)
    assert spec_hash(running) == spec_hash(scaled_down)
    assert running["metadata"]["annotations"] == scaled_down["metadata"]["annotations"]


@pytest.mark.parametrize(
    "change",
    [
        {"workload": {"image": "lscr.io/linuxserver/openssh-server:9.9"}},
        {"workload": {"image": "lscr.io/linuxserver/openssh-server:latest", "args": ["-v"]}},
        {"localTarget": "127.0.0.1:22"},
        {"allowedPorts": [8080]},
        {"agent": {"image": "example/agent:2"}},
        {"nodeSelector": {"disk": "ssd"}},
        {"storage": {"size": "5Gi", "mountPath": "/data"}},
        {"storage": {"size": "5Gi", "mountPath": "/config", "fsGroup": 1000}},
        {"storage": {"ephemeral": True}},
    ],
)
def test_hash_changes_with_the_spec(change: dict[str, Any]) -> None:
    assert spec_hash(deployment_of(make_agent(**change))) != spec_hash(deployment_of())


def test_hash_does_not_change_with_ttl() -> None:
    assert spec_hash(deployment_of(make_agent(ttl="1h"))) == spec_hash(deployment_of())


def with_server_defaults(desired: dict[str, Any]) -> dict[str, Any]:
    """`desired` as an API server returns it: defaults filled in, bookkeeping added."""
    live = copy.deepcopy(desired)
    live["metadata"].update(
        uid="d1",
        resourceVersion="4711",
        generation=3,
        creationTimestamp="2025-12-07T10:00:00Z",
        managedFields=[{"manager": "kopf", "operation": "Update"}],
    )
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "1"
    spec = live["spec"]
    spec.update(
        revisionHistoryLimit=10,
        progressDeadlineSeconds=600,
        strategy={"type": "Recreate"},
    )
    template = spec["template"]
    template["metadata"]["creationTimestamp"] = None
    template["metadata"]["labels"]["pod-template-hash"] = "7c445d9b55"
    pod = template["spec"]
    pod.update(
        dnsPolicy="ClusterFirst",
        restartPolicy="Always",
        schedulerName="default-scheduler",
        securityContext={},
        terminationGracePeriodSeconds=30,
    )
    for c in pod["containers"]:
        c.setdefault("resources", {})
        c.update(
            imagePullPolicy="Always",
            terminationMessagePath="/dev/termination-log",
            terminationMessagePolicy="File",
        )
        for port in c.get("ports", []):
            port.setdefault("protocol", "TCP")
    for volume in pod["volumes"]:
        if "secret" in volume:
            volume["secret"]["defaultMode"] = 292
    live["status"] = {"replicas": 1, "readyReplicas": 1, "observedGeneration": 3}
    return live


def test_server_defaults_are_not_a_change() -> None:
    desired = deployment_of()
    live = with_server_defaults(desired)
    assert spec_hash(live) != spec_hash(desired)  # a field-by-field comparison would differ
    assert deployment_needs_update(live, spec_hash(desired)) is False


def test_scaled_down_live_deployment_is_not_a_change() -> None:
    live = with_server_defaults(deployment_of(replicas=0))
    assert deployment_needs_update(live, spec_hash(deployment_of(replicas=1))) is False


def test_needs_update() -> None:
    desired_hash = spec_hash(deployment_of())
    assert deployment_needs_update(None, desired_hash) is True
    live = with_server_defaults(deployment_of())
    del live["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    assert deployment_needs_update(live, desired_hash) is True
    assert deployment_needs_update({"metadata": {"annotations": None}}, desired_hash) is True
    changed = deployment_of(make_agent(localTarget="127.0.0.1:22"))
    stale = with_server_defaults(deployment_of())
    assert deployment_needs_update(stale, spec_hash(changed)) is True


# --- deploy/ manifests ------------------------------------------------------------------------

MANIFESTS = sorted(DEPLOY.rglob("*.yaml"))


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d is not None]


def find(kind: str, name: str) -> dict[str, Any]:
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            if document and document["kind"] == kind and document["metadata"]["name"] == name:
                return dict(document)
    raise AssertionError(f"no {kind} {name} in deploy/")


def test_deploy_holds_manifests() -> None:
    names = {path.relative_to(DEPLOY).as_posix() for path in MANIFESTS}
    assert names >= {
        "crd.yaml",
        "namespace.yaml",
        "rbac.yaml",
        "operator.yaml",
        "gateway.yaml",
        "kustomization.yaml",
        "examples/ssh-server.yaml",
        "examples/jupyter-notebook.yaml",
        "examples/code-server.yaml",
    }


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_manifest_parses(path: Path) -> None:
    loaded = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert loaded
    for document in loaded:
        assert isinstance(document, dict)
        assert document["apiVersion"]
        assert document["kind"]
        if document["kind"] != "Kustomization":
            assert document["metadata"]["name"]
            namespaced = document["kind"] not in {
                "Namespace",
                "CustomResourceDefinition",
                "ClusterRole",
                "ClusterRoleBinding",
            }
            assert document["metadata"].get("namespace") == ("kuberde" if namespaced else None)


def test_kustomization_lists_every_manifest_but_the_examples() -> None:
    [kustomization] = documents("kustomization.yaml")
    top_level = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == top_level
    assert len(kustomization["resources"]) == len(top_level)


def _pod_template_matches_selector(deployment: dict[str, Any]) -> dict[str, Any]:
    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    return dict(spec["template"]["spec"])


def test_operator_deployment_matches_the_runbook() -> None:
    deployment = find("Deployment", "kuberde-operator")
    assert deployment["metadata"]["labels"]["app"] == "kuberde-operator"
    pod = _pod_template_matches_selector(deployment)
    assert deployment["spec"]["template"]["metadata"]["labels"]["app"] == "kuberde-operator"
    assert pod["serviceAccountName"] == "kuberde-operator"
    [operator] = pod["containers"]
    assert operator["name"] == "operator"
    # The runbook checks this tag; `make image` builds it and the agent image in one build.
    assert operator["image"] == "soloking/kuberde-operator:v2.1"
    assert operator["command"] == ["kuberde", "operator"]
    assert operator["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "500m", "memory": "512Mi"},
    }
    assert {"name": "http", "containerPort": 8080} in operator["ports"]
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert operator["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    env = {var["name"]: var["value"] for var in operator["env"]}
    assert env["KUBERDE_SERVER_API"] == DEFAULT_GATEWAY_URL


def test_gateway_deployment_and_service() -> None:
    deployment = find("Deployment", "frp-server")
    pod = _pod_template_matches_selector(deployment)
    assert pod["serviceAccountName"] == "frp-server"
    [server] = pod["containers"]
    assert server["command"][:2] == ["kuberde", "server"]
    assert {"name": "http", "containerPort": 8080} in server["ports"]
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    service = find("Service", "frp-server")
    assert service["spec"]["selector"] == {"app": "frp-server"}
    assert service["spec"]["selector"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http"}]
    host = DEFAULT_GATEWAY_URL.removeprefix("http://").split(":")[0]
    assert host == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"


def _rules(kind: str, name: str) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in find(kind, name)["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_operator_rbac() -> None:
    role = _rules("Role", "kuberde-operator")
    assert role[("kuberde.io", "rdeagents")] >= {"get", "list", "watch", "patch"}
    assert role[("kuberde.io", "rdeagents/status")] >= {"patch"}
    assert role[("kuberde.io", "rdeagents/finalizers")] == {"update"}
    assert role[("apps", "deployments")] >= {"get", "list", "watch", "create", "patch"}
    assert role[("", "secrets")] >= {"get", "create", "patch"}
    assert role[("", "persistentvolumeclaims")] >= {"get", "create", "patch"}, (
        "patch: owner references follow reclaimPolicy"
    )
    assert "delete" not in role[("", "persistentvolumeclaims")]
    assert role[("", "pods")] == {"get", "list", "watch"}
    assert "create" in role[("", "events")]
    assert role[("coordination.k8s.io", "leases")] >= {"get", "create", "update"}
    assert ("kopf.dev", "kopfpeerings") in role
    cluster = _rules("ClusterRole", "kuberde-operator")
    assert all(verbs <= {"get", "list", "watch"} for verbs in cluster.values())


def test_gateway_rbac_is_minimal() -> None:
    assert _rules("Role", "frp-server") == {
        ("kuberde.io", "rdeagents"): {"get", "list", "watch", "patch"}
    }
    assert _rules("ClusterRole", "frp-server") == {
        ("authentication.k8s.io", "tokenreviews"): {"create"}
    }


@pytest.mark.parametrize("account", ["kuberde-operator", "frp-server"])
def test_bindings_connect_accounts_to_roles(account: str) -> None:
    assert find("ServiceAccount", account)["metadata"]["namespace"] == "kuberde"
    for kind, role_kind in (("RoleBinding", "Role"), ("ClusterRoleBinding", "ClusterRole")):
        binding = find(kind, account)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role_kind,
            "name": account,
        }
        find(role_kind, account)
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": "kuberde"}
        ]


def test_namespace() -> None:
    assert find("Namespace", "kuberde")["apiVersion"] == "v1"


def test_dockerfile() -> None:
    lines = [
        line.strip()
        for line in (DEPLOY / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    assert 'ENTRYPOINT ["kuberde"]' in lines
    text = "\n".join(lines)
    assert "openssh-client" in text
    assert "pip install ." in text
    assert "USER 10001" in lines


@pytest.mark.parametrize("path", sorted((DEPLOY / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_build_deployments(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    document["metadata"]["uid"] = UID
    agent = parse_agent(document)
    deployment = deployment_of(agent)
    assert deployment["metadata"]["name"] == f"user-testuser-{document['metadata']['name']}"
    workload = container(deployment, WORKLOAD_CONTAINER)
    target_port = agent.spec.local_address[1]
    assert any(port["containerPort"] == target_port for port in workload["ports"])
    claim = build_pvc(agent, namespace="kuberde")
    assert claim is not None, "every example keeps its work"
    assert "storage" in document["spec"], "each example names where its image keeps its home"
    mount = {"name": "workspace", "mountPath": document["spec"]["storage"]["mountPath"]}
    assert mount in workload["volumeMounts"]
