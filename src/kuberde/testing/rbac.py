"""Kubernetes RBAC, evaluated: whether a user may do something, given the stored RBAC objects.

What `kubectl auth can-i` asks through a (Self)SubjectAccessReview: the RBAC authorizer's
rules, no more. A ClusterRoleBinding grants its ClusterRole's rules everywhere; a RoleBinding
grants its Role's (or a ClusterRole's) rules in its own namespace only. Nothing is allowed
unless a rule allows it. Members of `system:masters` may do anything, as on a real cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BASIC_USER",
    "SUPERUSERS",
    "Attributes",
    "Decision",
    "Policy",
    "User",
    "decide",
    "forbidden",
    "request_verb",
    "service_account",
]

SUPERUSERS = "system:masters"
_SERVICE_ACCOUNT = "system:serviceaccount:"


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()


def service_account(name: str, extra_groups: Iterable[str] = ()) -> User:
    """A user as the authenticator makes it: a service account's groups, and everyone's."""
    groups = list(extra_groups)
    if name.startswith(_SERVICE_ACCOUNT):
        namespace = name.removeprefix(_SERVICE_ACCOUNT).partition(":")[0]
        groups += ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
    return User(name, (*groups, "system:authenticated"))


@dataclass(frozen=True)
class Attributes:
    """What is asked: a verb on a resource (in a namespace), or on a non-resource path."""

    verb: str
    resource: str = ""
    group: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""

    @classmethod
    def from_review(cls, spec: Mapping[str, Any]) -> Attributes:
        attributes = spec.get("resourceAttributes")
        if attributes:
            return cls(
                verb=str(attributes.get("verb", "")),
                resource=str(attributes.get("resource", "")),
                group=str(attributes.get("group", "")),
                subresource=str(attributes.get("subresource", "")),
                namespace=str(attributes.get("namespace", "")),
                name=str(attributes.get("name", "")),
            )
        other = spec.get("nonResourceAttributes") or {}
        return cls(verb=str(other.get("verb", "")), path=str(other.get("path", "")))


@dataclass(frozen=True)
class Policy:
    """The stored RBAC objects, as their JSON."""

    roles: Sequence[Mapping[str, Any]] = ()
    cluster_roles: Sequence[Mapping[str, Any]] = ()
    role_bindings: Sequence[Mapping[str, Any]] = ()
    cluster_role_bindings: Sequence[Mapping[str, Any]] = ()


#: The bootstrap policy every cluster has: anyone signed in may review their own access.
BASIC_USER = Policy(
    cluster_roles=[
        {
            "metadata": {"name": "system:basic-user"},
            "rules": [
                {
                    "apiGroups": ["authorization.k8s.io"],
                    "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    "verbs": ["create"],
                }
            ],
        }
    ],
    cluster_role_bindings=[
        {
            "metadata": {"name": "system:basic-user"},
            "roleRef": {"kind": "ClusterRole", "name": "system:basic-user"},
            "subjects": [{"kind": "Group", "name": "system:authenticated"}],
        }
    ],
)


def request_verb(method: str, *, watch: bool, named: bool, subresource: str = "") -> str:
    """The RBAC verb of an HTTP request, as the API server derives it."""
    if subresource in ("exec", "attach", "portforward"):
        return "create"
    if method == "GET":
        return "watch" if watch else "get" if named else "list"
    if method == "DELETE":
        return "delete" if named else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def forbidden(user: User, asked: Attributes) -> str:
    """The message of a 403, in the API server's words."""
    resource = f"{asked.resource}/{asked.subresource}" if asked.subresource else asked.resource
    what = f'{asked.resource} "{asked.name}"' if asked.name else asked.resource
    where = f' in the namespace "{asked.namespace}"' if asked.namespace else " at the cluster scope"
    return (
        f'{what} is forbidden: User "{user.name}" cannot {asked.verb} resource "{resource}" '
        f'in API group "{asked.group}"{where}'
    )


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


def _matches(values: Iterable[str], wanted: str) -> bool:
    values = list(values)
    return "*" in values or wanted in values


def _rule_allows(rule: Mapping[str, Any], asked: Attributes) -> bool:
    if not _matches(rule.get("verbs") or [], asked.verb):
        return False
    if asked.path:
        return any(
            url == asked.path or (url.endswith("*") and asked.path.startswith(url[:-1]))
            for url in rule.get("nonResourceURLs") or []
        )
    resource = f"{asked.resource}/{asked.subresource}" if asked.subresource else asked.resource
    names = rule.get("resourceNames") or []
    return (
        _matches(rule.get("apiGroups") or [], asked.group)
        and _matches(rule.get("resources") or [], resource)
        and (not names or asked.name in names)
    )


def _binds(binding: Mapping[str, Any], user: User) -> str | None:
    """How the binding names the user ("ServiceAccount ns/name", ...), or None if it does not."""
    own_namespace = (binding.get("metadata") or {}).get("namespace", "")
    for subject in binding.get("subjects") or []:
        kind, name = subject.get("kind"), subject.get("name", "")
        if kind == "User" and name == user.name:
            return f'User "{name}"'
        if kind == "Group" and name in user.groups:
            return f'Group "{name}"'
        namespace = subject.get("namespace") or own_namespace
        if kind == "ServiceAccount" and user.name == f"{_SERVICE_ACCOUNT}{namespace}:{name}":
            return f'ServiceAccount "{name}/{namespace}"'
    return None


def _role(policy: Policy, reference: Mapping[str, Any], namespace: str) -> Mapping[str, Any]:
    kind, name = reference.get("kind"), reference.get("name")
    candidates = policy.cluster_roles if kind == "ClusterRole" else policy.roles
    for role in candidates:
        metadata = role.get("metadata") or {}
        if metadata.get("name") == name and (
            kind == "ClusterRole" or metadata.get("namespace") == namespace
        ):
            return role
    return {}


def decide(policy: Policy, user: User, asked: Attributes) -> Decision:
    """Whether `user` may do what `asked` says under `policy` (RBAC's rules: see module)."""
    if SUPERUSERS in user.groups:
        return Decision(True, f'allowed as a member of "{SUPERUSERS}"')
    scoped = [(binding, None) for binding in policy.cluster_role_bindings] + [
        (binding, (binding.get("metadata") or {}).get("namespace", ""))
        for binding in policy.role_bindings
    ]
    for binding, namespace in scoped:
        if namespace is not None and (asked.path or asked.namespace != namespace):
            continue
        subject = _binds(binding, user)
        if subject is None:
            continue
        reference = binding.get("roleRef") or {}
        role = _role(policy, reference, namespace or "")
        if any(_rule_allows(rule, asked) for rule in role.get("rules") or []):
            kind = "ClusterRoleBinding" if namespace is None else "RoleBinding"
            name = binding["metadata"]["name"] + ("" if namespace is None else f"/{namespace}")
            return Decision(
                True,
                f'RBAC: allowed by {kind} "{name}" of {reference.get("kind")} '
                f'"{reference.get("name")}" to {subject}',
            )
    return Decision(False)
