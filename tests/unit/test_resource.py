"""The RDEAgent model, multi-document loading, and the CRD schema that must agree with both."""

from __future__ import annotations

import copy
import re
import types
import typing
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from kuberde.policy import InvalidTTL, parse_ttl
from kuberde.resource import (
    APP_PATH_PATTERN,
    DEFAULT_STORAGE_SIZE,
    LOCAL_TARGET_PATTERN,
    NAME_PATTERN,
    QUANTITY_PATTERN,
    InvalidResource,
    LoadResult,
    RDEAgent,
    RDEAgentSpec,
    ReclaimPolicy,
    Storage,
    load_documents,
    parse_agent,
    parse_host_port,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
EXAMPLES = sorted((DEPLOY / "examples").glob("*.yaml"))


def doc(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"owner": "testuser"}
    body.update(spec)
    return {
        "apiVersion": "kuberde.io/v1",
        "kind": "RDEAgent",
        "metadata": {"name": "ssh-server", "namespace": "kuberde"},
        "spec": body,
    }


FULL = doc(
    ttl="1h30m",
    localTarget="127.0.0.1:8888",
    allowedPorts=[8080, 22],
    workload={
        "image": "quay.io/jupyter/base-notebook:latest",
        "command": ["start-notebook.py"],
        "args": ["--port", "8888"],
        "env": [{"name": "A", "value": "1"}, {"name": "EMPTY"}],
        "workingDir": "/home/jovyan",
        "ports": [{"containerPort": 8888, "name": "http", "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": 2}},
        "securityContext": {"runAsUser": 1000, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "workspace", "mountPath": "/data", "subPath": "data"}],
    },
    storage={"size": "10Gi", "storageClassName": "fast", "mountPath": "/home/jovyan/work"},
    agent={"image": "example/agent:1", "resources": {"limits": {"memory": "128Mi"}}},
    nodeSelector={"disk": "ssd"},
    tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
)


# --- model ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        doc(),
        FULL,
        doc(storage={"ephemeral": True}),
        doc(workload={"image": "x"}, storage={}),
        doc(ttl=0),
        doc(ttl="0"),
        doc(ttl=""),
        doc(ttl=300),
        doc(ttl=None),
        doc(localTarget="[::1]:22"),
        doc(localTarget="db.example.svc:5432"),
        doc(workload={"command": ["sleep", "60"]}),
        doc(workload={"image": "busybox"}),
    ],
    ids=lambda body: repr(body["spec"])[:60],
)
def test_valid_documents(body: dict[str, Any]) -> None:
    agent = parse_agent(body)
    assert agent.spec.owner == "testuser"
    assert parse_agent(agent.to_document()) == agent


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (doc(owner="Alice"), "spec.owner: owner 'Alice' must consist of lower-case letters"),
        (doc(owner="-alice"), "spec.owner: owner '-alice' must consist"),
        (doc(owner=""), "spec.owner: owner must be a non-empty string"),
        (doc(ttl="5x"), "spec.ttl: invalid TTL '5x'"),
        (doc(ttl="-5m"), "negative durations are not allowed"),
        (doc(ttl="1.5h"), "fractions are not allowed"),
        (doc(ttl=1.5), "spec.ttl: invalid TTL 1.5"),
        (doc(ttl=True), "spec.ttl: invalid TTL True"),
        (doc(ttl="400d"), "longer than the maximum"),
        (doc(owner="o" * 40) | {"metadata": {"name": "n" * 20}}, "is 66 characters; the limit"),
        (doc(ownr="x"), "spec.ownr: unknown field"),
        ({**doc(), "spec": {}}, "spec.owner: Field required"),
        (doc(localTarget="localhost"), "spec.localTarget: 'localhost' is not host:port"),
        (doc(localTarget="127.0.0.1:70000"), "spec.localTarget: '127.0.0.1:70000' is not"),
        (doc(localTarget="127.0.0.1:0"), "spec.localTarget"),
        (doc(allowedPorts=[22, 0]), "spec.allowedPorts[1]: Input should be greater than"),
        (doc(allowedPorts=[65536]), "spec.allowedPorts[0]: Input should be less than"),
        (doc(allowedPorts=["22"]), "spec.allowedPorts[0]: Input should be a valid integer"),
        (doc(allowedPorts=[22, 22]), "spec.allowedPorts: ports listed more than once: [22]"),
        (doc(workload={"args": ["x"]}), "spec.workload: workload needs an image"),
        (doc(workload={"image": "x", "imagee": "y"}), "spec.workload.imagee: unknown field"),
        (
            doc(workload={"image": "x", "env": [{"name": "N", "value": 1}]}),
            "spec.workload.env[0].value: Input should be a valid string",
        ),
        (
            doc(workload={"image": "x", "ports": [{"containerPort": 22, "protocol": "tcp"}]}),
            "spec.workload.ports[0].protocol",
        ),
        (
            doc(workload={"image": "x", "resources": {"limits": {"cpu": "lots"}}}),
            "cpu 'lots' is not a Kubernetes quantity",
        ),
        (
            doc(workload={"image": "x", "resources": {"requests": {"cpu": 1.5}}}),
            "spec.workload.resources.requests: cpu 1.5 is not a Kubernetes quantity",
        ),
        (doc(storage={"size": "1Gi"}), "spec: storage needs a workload"),
        (doc(workload={"image": "x"}, storage={"size": "big"}), "size 'big' is not a Kubernetes"),
        (
            doc(workload={"image": "x"}, storage={"size": 10}),
            "spec.storage.size: Input should be a valid string",
        ),
        (
            doc(workload={"image": "x"}, storage={"reclaimPolicy": "Recycle"}),
            "spec.storage.reclaimPolicy: Input should be 'Retain' or 'Delete'",
        ),
        (
            doc(workload={"image": "x"}, storage={"mountPath": "home/me"}),
            "mountPath 'home/me' must be an absolute path",
        ),
        (
            doc(workload={"image": "x"}, storage={"fsGroup": -1}),
            "spec.storage.fsGroup: Input should be greater than or equal to 0",
        ),
        (
            doc(workload={"image": "x"}, storage={"ephemeral": "yes"}),
            "spec.storage.ephemeral: Input should be a valid boolean",
        ),
        (
            doc(workload={"image": "x", "volumeMounts": [{"name": "home", "mountPath": "/h"}]}),
            "volume mount 'home' names no volume",
        ),
        (
            doc(
                workload={"image": "x", "volumeMounts": [{"name": "workspace", "mountPath": "/h"}]},
                storage={"ephemeral": True},
            ),
            "volume mount 'workspace' names no volume",
        ),
        (
            doc(
                workload={"image": "x", "volumeMounts": [{"name": "workspace", "mountPath": "/w"}]},
                storage={"size": "1Gi", "mountPath": "/w"},
            ),
            "mount paths used more than once: ['/w']",
        ),
        (
            doc(tolerations=[{"key": "k", "operator": "Maybe"}]),
            "spec.tolerations[0].operator",
        ),
        (doc(nodeSelector={"disk": 1}), "spec.nodeSelector.disk: Input should be a valid string"),
        ({**doc(), "kind": "Deployment"}, "unsupported apiVersion 'kuberde.io/v1' / kind"),
        ({**doc(), "apiVersion": "kuberde.io/v2"}, "expected apiVersion 'kuberde.io/v1'"),
        ({**doc(), "metadata": {"name": "Bad"}}, "metadata.name: name 'Bad' must consist"),
        ({**doc(), "metadata": {}}, "metadata.name: Field required"),
        ({**doc(), "extra": 1}, "extra: unknown field"),
        (["not", "a", "mapping"], "expected a mapping, got list"),
    ],
)
def test_invalid_documents(body: Any, message: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        parse_agent(body)
    assert message in str(caught.value)


def test_several_problems_are_reported_together() -> None:
    with pytest.raises(InvalidResource) as caught:
        parse_agent(doc(owner="Bob", ttl="soon"))
    text = str(caught.value)
    assert "spec.owner:" in text
    assert "spec.ttl:" in text


def test_derived_values() -> None:
    agent = parse_agent(FULL)
    assert agent.agent_id == "user-testuser-ssh-server"
    assert agent.spec.ttl_duration == timedelta(hours=1, minutes=30)
    assert agent.spec.local_address == ("127.0.0.1", 8888)
    assert agent.spec.effective_allowed_ports == (22, 8080, 8888)
    assert parse_agent(doc(ttl="0")).spec.ttl_duration is None
    assert parse_agent(doc()).spec.local_target == "127.0.0.1:22"
    assert parse_agent(doc()).spec.effective_allowed_ports == (22,)


def test_env_accepts_a_mapping_for_local_files() -> None:
    agent = parse_agent(
        doc(workload={"command": ["run"], "env": {"PORT": 8888, "DEBUG": True, "NAME": "x"}})
    )
    assert agent.spec.workload is not None
    pairs = [(var.name, var.value) for var in agent.spec.workload.env]
    assert pairs == [("PORT", "8888"), ("DEBUG", "true"), ("NAME", "x")]
    assert agent.to_document()["spec"]["workload"]["env"][0] == {"name": "PORT", "value": "8888"}


def test_metadata_is_lenient_and_keeps_what_we_use() -> None:
    body = doc()
    body["metadata"] = {
        "name": "ssh-server",
        "namespace": "kuberde",
        "uid": "1234",
        "generation": 3,
        "creationTimestamp": "2025-12-07T10:00:00Z",
        "resourceVersion": "99",
        "managedFields": [{"manager": "kubectl"}],
        "annotations": {"kuberde.io/wake-requested-at": "2025-12-07T10:05:00Z"},
    }
    body["status"] = {"phase": "Running", "online": True}
    agent = parse_agent(body)
    assert agent.metadata.uid == "1234"
    assert agent.metadata.generation == 3
    assert agent.metadata.creation_timestamp is not None
    assert agent.metadata.creation_timestamp.isoformat() == "2025-12-07T10:00:00+00:00"
    assert agent.status == {"phase": "Running", "online": True}


def test_naive_creation_timestamp_is_refused() -> None:
    body = doc()
    body["metadata"]["creationTimestamp"] = "2025-12-07T10:00:00"
    with pytest.raises(InvalidResource, match=r"metadata\.creationTimestamp"):
        parse_agent(body)


def test_kopf_style_mapping_views_are_accepted() -> None:
    body = doc(workload={"image": "x", "command": ("sh",)})
    view = MappingProxyType({**body, "spec": MappingProxyType(body["spec"])})
    agent = parse_agent(view)
    assert agent.spec.workload is not None
    assert agent.spec.workload.command == ["sh"]


def test_models_are_immutable() -> None:
    agent = parse_agent(doc())
    with pytest.raises(ValueError, match="frozen"):
        agent.spec.owner = "mallory"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:22", ("127.0.0.1", 22)),
        ("[::1]:8080", ("::1", 8080)),
        ("my-db.default.svc:5432", ("my-db.default.svc", 5432)),
        ("h:65535", ("h", 65535)),
    ],
)
def test_parse_host_port(value: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(value) == expected


@pytest.mark.parametrize("value", ["h", ":22", "h:", "h:0", "h:65536", "-h:22", "::1:22", "h :22"])
def test_parse_host_port_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="is not host:port"):
        parse_host_port(value)


# --- loading files ----------------------------------------------------------------------------

MULTI = """\
# leading comment
apiVersion: kuberde.io/v1
kind: RDEAgent
metadata: {name: good-one}
spec: {owner: testuser, ttl: 5m}
---
apiVersion: kuberde.io/v1
kind: RDEAgent
metadata: {name: bad-ttl}
spec: {owner: testuser, ttl: soon}
---
---
# only a comment
---
apiVersion: kuberde.io/v1
kind: RDEAgent
metadata: {name: broken
spec: {owner: testuser}
---
apiVersion: kuberde.io/v1
kind: RDEAgent
metadata: {name: upper}
spec: {owner: TestUser}
---
apiVersion: kuberde.io/v1
kind: RDEAgent
metadata: {name: a-very-long-workspace-name-that-goes-on-and-on-and-on}
spec: {owner: testuser}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: not-ours}
--- # a marker with a comment
apiVersion: kuberde.io/v1
kind: RDEAgent
metadata: {name: good-two}
spec: {owner: testuser}
"""


def test_one_bad_document_does_not_stop_the_others() -> None:
    results = load_documents(MULTI, "agents.yaml")
    assert [(r.index, r.name, r.ok) for r in results] == [
        (1, "good-one", True),
        (2, "bad-ttl", False),
        (3, None, False),
        (4, "upper", False),
        (5, "a-very-long-workspace-name-that-goes-on-and-on-and-on", False),
        (6, "not-ours", False),
        (7, "good-two", True),
    ]
    errors = [r.error for r in results if r.error is not None]
    assert errors[0].startswith("agents.yaml, document 2 ('bad-ttl'): spec.ttl: invalid TTL")
    assert errors[1] == (
        "agents.yaml, document 3: invalid YAML at line 18, column 5: expected ',' or '}', "
        "but got ':' (while parsing a flow mapping at line 17)"
    )
    assert errors[2].startswith("agents.yaml, document 4 ('upper'): spec.owner: owner 'TestUser'")
    assert "agent ID 'user-testuser-a-very-long" in errors[3]
    assert "is 67 characters; the limit is 63" in errors[3]
    assert errors[4].startswith("agents.yaml, document 6 ('not-ours'): unsupported apiVersion")
    good = [r.agent for r in results if r.agent is not None]
    assert [agent.agent_id for agent in good] == [
        "user-testuser-good-one",
        "user-testuser-good-two",
    ]


@pytest.mark.parametrize("text", ["", "# nothing\n---\n---\n"])
def test_empty_and_comment_only_texts_are_one_error(text: str) -> None:
    [result] = load_documents(text, "x.yaml")
    assert result.error == "x.yaml: holds no RDEAgent document (it is empty)"


def test_a_scalar_document_is_an_error_not_a_crash() -> None:
    [result] = load_documents("just text", "x.yaml")
    assert result.error == "x.yaml, document 1: expected a mapping, got str"


def test_a_kubectl_list_contributes_its_items() -> None:
    text = yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "List",
            "items": [doc(), {**doc(), "metadata": {"name": "Nope"}}],
        }
    )
    first, second = load_documents(text, "backup.yaml")
    assert first.ok
    assert first.location == "backup.yaml, document 1, item 1"
    assert second.error is not None
    assert second.error.startswith("backup.yaml, document 1, item 2 ('Nope'): metadata.name")


def test_a_list_with_bad_items_is_an_error() -> None:
    [result] = load_documents("apiVersion: v1\nkind: List\nitems: 3\n", "l.yaml")
    assert result.error == "l.yaml, document 1: items of a List must be a list"


def test_load_result_holds_exactly_one_outcome() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        LoadResult("s", 1, None, None)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(path: Path) -> None:
    [result] = load_documents(path.read_text(), str(path))
    assert result.agent is not None, result.error
    assert result.agent.spec.owner == "testuser"
    assert result.agent.spec.ttl == "5m"
    assert result.agent.metadata.namespace == "kuberde"


def test_examples_are_the_runbooks_three_agents() -> None:
    names = set()
    for path in EXAMPLES:
        for result in load_documents(path.read_text(), str(path)):
            assert result.agent is not None
            names.add(result.agent.metadata.name)
    assert names == {"ssh-server", "jupyter-notebook", "code-server"}


# --- the CRD ----------------------------------------------------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}
_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def schema_errors(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """A small OpenAPI v3 validator covering the keywords the CRD uses (no CEL)."""
    where = path or "<root>"
    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            return [f"{where}: must be an integer or a string"]
    elif "type" in schema:
        kinds = _TYPES[schema["type"]]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            return [f"{where}: expected {schema['type']}, got {type(value).__name__}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{where}: longer than {schema['maxLength']}")
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: shorter than {schema['minLength']}")
    if isinstance(value, int) and not isinstance(value, bool):
        if value < schema.get("minimum", value):
            errors.append(f"{where}: below {schema['minimum']}")
        if value > schema.get("maximum", value):
            errors.append(f"{where}: above {schema['maximum']}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        errors += [
            f"{where}: {key} is required" for key in schema.get("required", []) if key not in value
        ]
        for key, item in value.items():
            child = f"{path}.{key}" if path else key
            if key in properties:
                errors += schema_errors(properties[key], item, child)
            elif "additionalProperties" in schema:
                errors += schema_errors(schema["additionalProperties"], item, child)
            elif not schema.get("x-kubernetes-preserve-unknown-fields") and path != "metadata":
                errors.append(f"{child}: unknown field")
    if isinstance(value, list):
        for number, item in enumerate(value):
            errors += schema_errors(schema["items"], item, f"{path}[{number}]")
        if schema.get("x-kubernetes-list-type") == "set" and len(set(value)) != len(value):
            errors.append(f"{where}: duplicate items in a set")
    return errors


def structural_problems(schema: dict[str, Any], path: str) -> list[str]:
    """Kubernetes' structural-schema rules, as far as the CRD uses them."""
    problems: list[str] = []
    special = schema.get("x-kubernetes-int-or-string") or schema.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if "type" not in schema and not special:
        problems.append(f"{path}: no type")
    if "anyOf" in schema and not (
        schema.get("x-kubernetes-int-or-string") and schema["anyOf"] == _INT_OR_STRING
    ):
        problems.append(f"{path}: anyOf is only allowed as the int-or-string pattern")
    for keyword in ("oneOf", "allOf", "not", "nullable"):
        if keyword in schema:
            problems.append(f"{path}: {keyword} is not used by this CRD")
    if "default" in schema:
        problems += [f"{path}: default {e}" for e in schema_errors(schema, schema["default"])]
    for key, child in schema.get("properties", {}).items():
        problems += structural_problems(child, f"{path}.{key}")
    if isinstance(schema.get("additionalProperties"), dict):
        problems += structural_problems(schema["additionalProperties"], f"{path}.*")
    if "items" in schema:
        problems += structural_problems(schema["items"], f"{path}[]")
    return problems


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return typing.cast(dict[str, Any], yaml.safe_load((DEPLOY / "crd.yaml").read_text()))


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    [version] = crd["spec"]["versions"]
    return typing.cast(dict[str, Any], version["schema"]["openAPIV3Schema"])


def test_crd_identity(crd: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "rdeagents.kuberde.io"
    spec = crd["spec"]
    assert spec["group"] == "kuberde.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "RDEAgent"
    assert spec["names"]["plural"] == "rdeagents"
    assert spec["names"]["shortNames"] == ["rde"]
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
    assert version["subresources"] == {"status": {}}


def test_crd_printer_columns_match_the_runbook(crd: dict[str, Any]) -> None:
    [version] = crd["spec"]["versions"]
    columns = [
        (c["name"].upper(), c["jsonPath"], c.get("priority", 0))
        for c in version["additionalPrinterColumns"]
    ]
    assert columns == [
        ("STATUS", ".status.phase", 0),
        ("ONLINE", ".status.online", 0),
        ("POD", ".status.pod", 0),
        ("AGE", ".metadata.creationTimestamp", 0),
        ("TTL", ".spec.ttl", 1),
        ("LAST-ACTIVITY", ".status.lastActivity", 1),
        ("MESSAGE", ".status.message", 1),
    ]


def test_crd_printer_columns_point_at_schema_fields(
    crd: dict[str, Any], schema: dict[str, Any]
) -> None:
    [version] = crd["spec"]["versions"]
    for column in version["additionalPrinterColumns"]:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            continue
        node = schema
        for part in column["jsonPath"].strip(".").split("."):
            node = node["properties"][part]
        assert node, column


def test_crd_schema_is_structural(schema: dict[str, Any]) -> None:
    assert schema["type"] == "object"
    assert structural_problems(schema, "openAPIV3Schema") == []
    assert set(schema["properties"]["metadata"]) == {"type", "properties"}
    assert set(schema["properties"]["metadata"]["properties"]) == {"name"}


def test_crd_status_fields(schema: dict[str, Any]) -> None:
    status = schema["properties"]["status"]["properties"]
    assert set(status) >= {
        "phase",
        "online",
        "pod",
        "lastActivity",
        "lastActivitySource",
        "idleDeadline",
        "message",
        "conditions",
        "observedGeneration",
    }
    assert status["phase"]["enum"] == [
        "Pending",
        "Starting",
        "Running",
        "Disconnected",
        "ScaledDown",
        "Error",
    ]


def test_crd_patterns_are_the_models(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]["properties"]
    assert spec["owner"]["pattern"] == NAME_PATTERN
    assert schema["properties"]["metadata"]["properties"]["name"]["pattern"] == NAME_PATTERN
    assert spec["localTarget"]["pattern"] == LOCAL_TARGET_PATTERN
    app = spec["apps"]["items"]["properties"]
    assert app["name"]["pattern"] == NAME_PATTERN
    assert app["path"]["pattern"] == APP_PATH_PATTERN
    assert spec["localTarget"]["default"] == RDEAgentSpec.model_fields["local_target"].default
    assert spec["storage"]["properties"]["size"]["pattern"] == QUANTITY_PATTERN
    storage = spec["storage"]["properties"]
    assert storage["size"]["default"] == DEFAULT_STORAGE_SIZE
    assert storage["reclaimPolicy"]["enum"] == list(typing.get_args(ReclaimPolicy))
    assert storage["reclaimPolicy"]["default"] == Storage.model_fields["reclaim_policy"].default
    for holder in (spec["workload"], spec["agent"]):
        for kind in ("limits", "requests"):
            amounts = holder["properties"]["resources"]["properties"][kind]
            assert amounts["additionalProperties"]["pattern"] == QUANTITY_PATTERN


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]
    return []


def _field_drift(model: type[BaseModel], node: dict[str, Any], path: str) -> list[str]:
    if node.get("type") == "array":
        node = node["items"]
    if node.get("x-kubernetes-preserve-unknown-fields") and "properties" not in node:
        return []
    aliases = {field.alias or name: field for name, field in model.model_fields.items()}
    properties = node.get("properties", {})
    drift = [f"{path}: model field {a} not in CRD" for a in aliases.keys() - properties.keys()]
    drift += [f"{path}: CRD field {p} not in model" for p in properties.keys() - aliases.keys()]
    for alias in aliases.keys() & properties.keys():
        for nested in _models_in(aliases[alias].annotation):
            drift += _field_drift(nested, properties[alias], f"{path}.{alias}")
    return drift


def test_crd_spec_fields_match_the_model(schema: dict[str, Any]) -> None:
    assert _field_drift(RDEAgentSpec, schema["properties"]["spec"], "spec") == []
    required = set(schema["properties"]["spec"]["required"])
    model_required = {
        field.alias for field in RDEAgentSpec.model_fields.values() if field.is_required()
    }
    assert required == model_required == {"owner"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_crd_accepts_the_examples(schema: dict[str, Any], path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        assert schema_errors(schema, document) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d["spec"].update(owner="TestUser"), "spec.owner"),
        (lambda d: d["spec"].update(ttl="5 minutes"), "spec.ttl"),
        (lambda d: d["spec"].update(ttl=-1), "spec.ttl: below 0"),
        (lambda d: d["spec"].update(localTarget="localhost"), "spec.localTarget"),
        (lambda d: d["spec"].update(allowedPorts=[22, 22]), "duplicate items"),
        (lambda d: d["spec"].update(ownr="x"), "spec.ownr: unknown field"),
        (lambda d: d["spec"].pop("owner"), "owner is required"),
        (lambda d: d["metadata"].update(name="Ssh"), "metadata.name"),
        (lambda d: d["spec"]["workload"].update(image=""), "spec.workload.image: shorter"),
        (lambda d: d["spec"]["workload"]["resources"]["limits"].update(memory="lots"), "memory"),
        (lambda d: d["spec"]["apps"].append({"name": "Web", "port": 80}), "spec.apps[1].name"),
        (lambda d: d["spec"]["apps"].append({"name": "w", "port": 0}), "spec.apps[1].port"),
        (lambda d: d["spec"]["apps"].append({"name": "w"}), "port is required"),
        (lambda d: d["spec"]["apps"][0].update(path="//evil.example"), "spec.apps[0].path"),
        (lambda d: d["spec"]["apps"][0].update(path="lab"), "spec.apps[0].path"),
    ],
)
def test_crd_rejects_what_the_model_rejects(
    schema: dict[str, Any], change: Any, problem: str
) -> None:
    document = copy.deepcopy(yaml.safe_load((DEPLOY / "examples" / "code-server.yaml").read_text()))
    change(document)
    errors = schema_errors(schema, document)
    assert any(problem in error for error in errors), errors
    with pytest.raises(InvalidResource):
        parse_agent(document)


def test_crd_status_is_typed_but_open_for_operator_fields(schema: dict[str, Any]) -> None:
    document = yaml.safe_load((DEPLOY / "examples" / "code-server.yaml").read_text())
    document["status"] = {"phase": "Running", "online": True, "kopf": {"progress": {}}}
    assert schema_errors(schema, document) == []
    document["status"] = {"phase": "Sleeping", "online": "yes"}
    assert len(schema_errors(schema, document)) == 2


def _model_accepts_ttl(value: object) -> bool | None:
    """True/False as the model decides; None for what only the magnitude check refuses."""
    try:
        parse_ttl(value)
    except InvalidTTL as error:
        return None if "maximum" in str(error) else False
    return True


@pytest.mark.parametrize(
    "value",
    [
        *("5m", "300s", "1h30m", "1d", "1d2h3m4s", "0", "0s", "", "  5m ", "300", 0, 300, 31536000),
        *("5x", "1.5h", "-5m", "5M", "m", "1h1h", "30m1h", "5 m", "1h 30m", -1, "5mm"),
    ],
)
def test_crd_ttl_pattern_agrees_with_parse_ttl(schema: dict[str, Any], value: object) -> None:
    ttl_schema = schema["properties"]["spec"]["properties"]["ttl"]
    assert _model_accepts_ttl(value) is (schema_errors(ttl_schema, value) == [])


@given(st.text(alphabet="0123456789dhms -.", max_size=12))
def test_crd_ttl_pattern_agrees_with_parse_ttl_on_any_text(
    schema: dict[str, Any], text: str
) -> None:
    ttl_schema = schema["properties"]["spec"]["properties"]["ttl"]
    accepted = _model_accepts_ttl(text)
    if accepted is not None:
        assert accepted is (schema_errors(ttl_schema, text) == [])


def test_crd_guards_the_agent_id_length(schema: dict[str, Any]) -> None:
    [rule] = schema["x-kubernetes-validations"]
    # "user-" + owner + "-" + name <= 63  <=>  len(owner) + len(name) <= 57
    assert rule["rule"] == "size(self.spec.owner) + size(self.metadata.name) <= 57"
    assert parse_agent(doc(owner="o" * 28) | {"metadata": {"name": "n" * 29}}).agent_id == (
        "user-" + "o" * 28 + "-" + "n" * 29
    )
    with pytest.raises(InvalidResource, match="is 64 characters"):
        parse_agent(doc(owner="o" * 29) | {"metadata": {"name": "n" * 29}})


def test_every_example_agent_round_trips_through_the_model() -> None:
    for path in EXAMPLES:
        document = yaml.safe_load(path.read_text())
        agent = parse_agent(document)
        assert isinstance(agent, RDEAgent)
        assert agent.to_document() == document


def test_apps_default_path_and_ports_are_reachable() -> None:
    agent = parse_agent(
        doc(apps=[{"name": "lab", "port": 8888, "path": "/lab"}, {"name": "docs", "port": 9000}])
    )
    assert [(a.name, a.port, a.path) for a in agent.spec.apps] == [
        ("lab", 8888, "/lab"),
        ("docs", 9000, "/"),
    ]
    assert agent.spec.effective_allowed_ports == (22, 8888, 9000)
    assert agent.to_document()["spec"]["apps"][0] == {"name": "lab", "port": 8888, "path": "/lab"}


@pytest.mark.parametrize(
    ("apps", "problem"),
    [
        ([{"name": "a", "port": 1}, {"name": "a", "port": 2}], "app names used more than once"),
        ([{"name": "a", "port": "80"}], "spec.apps[0].port"),
        ([{"name": "a", "port": 80, "path": "/a b"}], "absolute path"),
        ([{"name": "a", "port": 80, "extra": 1}], "spec.apps[0].extra: unknown field"),
    ],
)
def test_bad_apps_are_refused(apps: list[dict[str, Any]], problem: str) -> None:
    with pytest.raises(InvalidResource, match=re.escape(problem)):
        parse_agent(doc(apps=apps))
