"""RBAC as the emulated API server evaluates it (`kuberde.testing.rbac`), and protobuf reading."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kuberde.testing import protobuf
from kuberde.testing.rbac import (
    BASIC_USER,
    Attributes,
    Policy,
    User,
    decide,
    forbidden,
    request_verb,
    service_account,
)

OPERATOR = "system:serviceaccount:kuberde:kuberde-operator"


def role(kind: str, name: str, rules: list[dict[str, Any]], namespace: str = "") -> dict[str, Any]:
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"kind": kind, "metadata": metadata, "rules": rules}


def binding(name: str, ref_kind: str, subjects: list[dict[str, str]], namespace: str = "") -> Any:
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"metadata": metadata, "roleRef": {"kind": ref_kind, "name": name}, "subjects": subjects}


SA = [{"kind": "ServiceAccount", "name": "kuberde-operator", "namespace": "kuberde"}]
POLICY = Policy(
    roles=[
        role(
            "Role",
            "kuberde-operator",
            [
                {"apiGroups": ["kuberde.io"], "resources": ["rdeagents"], "verbs": ["get"]},
                {"apiGroups": ["kuberde.io"], "resources": ["rdeagents/status"], "verbs": ["*"]},
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                 "resourceNames": ["key"]},
            ],
            "kuberde",
        )
    ],
    cluster_roles=[
        role("ClusterRole", "kuberde-operator",
             [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list"]}]),
        role("ClusterRole", "viewer",
             [{"nonResourceURLs": ["/healthz", "/api/*"], "verbs": ["get"]}]),
    ],
    role_bindings=[binding("kuberde-operator", "Role", SA, "kuberde")],
    cluster_role_bindings=[
        binding("kuberde-operator", "ClusterRole", SA),
        binding("viewer", "ClusterRole", [{"kind": "Group", "name": "system:authenticated"}]),
    ],
)  # fmt: skip


@pytest.mark.parametrize(
    ("attributes", "allowed"),
    [
        (Attributes("get", "rdeagents", "kuberde.io", namespace="kuberde"), True),
        (Attributes("delete", "rdeagents", "kuberde.io", namespace="kuberde"), False),
        (Attributes("get", "rdeagents", "kuberde.io", namespace="default"), False),
        (Attributes("get", "rdeagents", "other.io", namespace="kuberde"), False),
        (Attributes("patch", "rdeagents", "kuberde.io", "status", namespace="kuberde"), True),
        (Attributes("get", "secrets", namespace="kuberde", name="key"), True),
        (Attributes("get", "secrets", namespace="kuberde", name="other"), False),
        (Attributes("list", "namespaces"), True),
        (Attributes("list", "namespaces", namespace="anywhere"), True),
        (Attributes("get", path="/healthz"), True),
        (Attributes("get", path="/api/v1"), True),
        (Attributes("get", path="/metrics"), False),
    ],
)
def test_rbac_allows_what_a_binding_grants_and_nothing_else(
    attributes: Attributes, allowed: bool
) -> None:
    assert decide(POLICY, service_account(OPERATOR), attributes).allowed is allowed


def test_an_allowed_decision_says_which_binding_allowed_it() -> None:
    asked = Attributes("get", "rdeagents", "kuberde.io", namespace="kuberde")
    assert decide(POLICY, service_account(OPERATOR), asked).reason == (
        'RBAC: allowed by RoleBinding "kuberde-operator/kuberde" of Role "kuberde-operator" '
        'to ServiceAccount "kuberde-operator/kuberde"'
    )


def test_other_users_get_only_what_their_groups_get() -> None:
    other = service_account("system:serviceaccount:kuberde:frp-server")
    assert "system:serviceaccounts:kuberde" in other.groups
    asked = Attributes("get", "rdeagents", "kuberde.io", namespace="kuberde")
    assert not decide(POLICY, other, asked).allowed
    assert decide(POLICY, other, Attributes("get", path="/healthz")).allowed
    assert not decide(POLICY, User("anonymous"), Attributes("get", path="/healthz")).allowed
    admin = User("admin", ("system:masters",))
    assert decide(POLICY, admin, Attributes("delete", "anything", namespace="x")).allowed


def test_a_binding_to_a_missing_role_grants_nothing() -> None:
    policy = Policy(role_bindings=[binding("gone", "Role", SA, "kuberde")])
    asked = Attributes("get", "rdeagents", "kuberde.io", namespace="kuberde")
    assert not decide(policy, service_account(OPERATOR), asked).allowed


def test_a_review_spec_becomes_attributes() -> None:
    spec = {"resourceAttributes": {"namespace": "kuberde", "verb": "get", "resource": "pods"}}
    assert Attributes.from_review(spec) == Attributes("get", "pods", namespace="kuberde")
    other = {"nonResourceAttributes": {"path": "/healthz", "verb": "get"}}
    assert Attributes.from_review(other) == Attributes("get", path="/healthz")


#: `kubectl auth can-i get rdeagents` as kubectl 1.32 sends it.
CAN_I = (
    b"k8s\x00\n2\n\x17authorization.k8s.io/v1\x12\x17SelfSubjectAccessReview\x12K\n\x10\n\x00"
    b'\x12\x00\x1a\x00"\x00*\x002\x008\x00B\x00\x12-\n+\n\x07kuberde\x12\x03get\x1a\nkuberde.io'
    b'"\x00*\trdeagents2\x00:\x00\x1a\x08\x08\x00\x12\x00\x1a\x00 \x00\x1a\x00"\x00'
)


def test_protobuf_as_kubectl_sends_it() -> None:
    assert protobuf.decode(CAN_I) == {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {
            "resourceAttributes": {
                "namespace": "kuberde",
                "verb": "get",
                "group": "kuberde.io",
                "resource": "rdeagents",
            }
        },
    }


@given(st.binary(max_size=64))
def test_any_other_body_is_a_protobuf_error_never_a_crash(tail: bytes) -> None:
    for body in (tail, protobuf.MAGIC + tail, CAN_I[: len(tail) % len(CAN_I)]):
        with contextlib.suppress(protobuf.ProtobufError):
            protobuf.decode(body)


@pytest.mark.parametrize(
    ("method", "watch", "named", "subresource", "verb"),
    [
        ("GET", False, False, "", "list"),
        ("GET", True, False, "", "watch"),
        ("GET", False, True, "", "get"),
        ("GET", False, True, "log", "get"),
        ("GET", False, True, "exec", "create"),
        ("POST", False, False, "", "create"),
        ("PUT", False, True, "", "update"),
        ("PATCH", False, True, "status", "patch"),
        ("DELETE", False, True, "", "delete"),
        ("DELETE", False, False, "", "deletecollection"),
    ],
)
def test_request_verbs(method: str, watch: bool, named: bool, subresource: str, verb: str) -> None:
    assert request_verb(method, watch=watch, named=named, subresource=subresource) == verb


def test_the_bootstrap_policy_lets_anyone_signed_in_review_their_access() -> None:
    asked = Attributes("create", "selfsubjectaccessreviews", "authorization.k8s.io")
    assert decide(BASIC_USER, service_account(OPERATOR), asked).allowed
    assert not decide(BASIC_USER, User("anonymous"), asked).allowed
    message = forbidden(User("u"), Attributes("list", "nodes"))
    assert message == (
        'nodes is forbidden: User "u" cannot list resource "nodes" in API group "" '
        "at the cluster scope"
    )
