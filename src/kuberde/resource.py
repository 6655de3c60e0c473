"""The `RDEAgent` document, shared by the embedded local runtime and the Kubernetes operator.

One model for both means a file that `kuberde up` accepts is a resource the CRD accepts, and
the operator reports the same messages a local user sees. Spec objects forbid unknown fields
so a typo (`ownr:`) is an error rather than a silently ignored setting; metadata is lenient
because the API server adds fields we never read (managedFields, resourceVersion, ...).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from kuberde import naming
from kuberde.policy import parse_ttl

__all__ = [
    "API_VERSION",
    "APP_PATH_PATTERN",
    "DEFAULT_LOCAL_TARGET",
    "DEFAULT_STORAGE_SIZE",
    "GROUP",
    "KIND",
    "LOCAL_TARGET_PATTERN",
    "NAME_PATTERN",
    "QUANTITY_PATTERN",
    "STORAGE_VOLUME",
    "AgentOverrides",
    "App",
    "ContainerPort",
    "EnvVar",
    "InvalidResource",
    "LoadResult",
    "ObjectMeta",
    "RDEAgent",
    "RDEAgentSpec",
    "ReclaimPolicy",
    "ResourceRequirements",
    "Storage",
    "Toleration",
    "VolumeMount",
    "Workload",
    "load_documents",
    "parse_agent",
    "parse_host_port",
]

GROUP = "kuberde.io"
API_VERSION = f"{GROUP}/v1"
KIND = "RDEAgent"
DEFAULT_LOCAL_TARGET = "127.0.0.1:22"
STORAGE_VOLUME = "workspace"

# The CRD carries these same patterns; tests/unit/test_resource.py checks they stay equal.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_PORT = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
LOCAL_TARGET_PATTERN = (
    r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?):" + _PORT + "$"
)
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
#: Where an app opens: an absolute path on its own host (not `//host`), no spaces.
APP_PATH_PATTERN = r"^/([^/\s\\][^\s\\]*)?$"
_LOCAL_TARGET = re.compile(LOCAL_TARGET_PATTERN)
_APP_PATH = re.compile(APP_PATH_PATTERN)
_QUANTITY = re.compile(QUANTITY_PATTERN)


class InvalidResource(ValueError):
    """A document that is not a valid RDEAgent; the message is meant for the user as is."""


def parse_host_port(value: str) -> tuple[str, int]:
    """Split `host:port` (IPv6 in brackets) as `spec.localTarget` allows it."""
    if not _LOCAL_TARGET.fullmatch(value):
        raise ValueError(
            f"{value!r} is not host:port (a host name, IPv4 or [IPv6] address, "
            "then a port from 1 to 65535)"
        )
    host, _, port = value.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _check_quantity(value: object, what: str) -> None:
    whole = isinstance(value, int) and not isinstance(value, bool)
    if not whole and not (isinstance(value, str) and _QUANTITY.fullmatch(value)):
        raise ValueError(f"{what} {value!r} is not a Kubernetes quantity (e.g. 500m, 256Mi, 10Gi)")


class _Spec(BaseModel):
    """Base of every spec object: camelCase keys as in YAML, unknown keys rejected.

    Strict types (no `"22"` for a port, no `yes` for a boolean) because the CRD's schema would
    refuse them too, and a local file should be a valid Kubernetes resource as it stands.
    """

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, frozen=True, strict=True)


Port = Annotated[int, Field(ge=1, le=65535)]


class EnvVar(_Spec):
    name: str = Field(min_length=1)
    value: str = ""


class ContainerPort(_Spec):
    container_port: Port
    name: str | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] | None = None


class VolumeMount(_Spec):
    name: str = Field(min_length=1)
    mount_path: str = Field(min_length=1)
    sub_path: str | None = None
    read_only: bool | None = None


class ResourceRequirements(_Spec):
    limits: dict[str, str | int] = Field(default_factory=dict)
    requests: dict[str, str | int] = Field(default_factory=dict)

    @field_validator("limits", "requests", mode="before")
    @classmethod
    def _quantities(cls, value: object) -> object:
        """One readable message per bad amount instead of one per member of `str | int`."""
        if isinstance(value, Mapping):
            for key, amount in value.items():
                _check_quantity(amount, str(key))
        return value


class Workload(_Spec):
    """The user's container; `image` is optional because the local runtime runs `command`."""

    image: str | None = Field(default=None, min_length=1)
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    working_dir: str | None = None
    ports: list[ContainerPort] = Field(default_factory=list)
    resources: ResourceRequirements | None = None
    security_context: dict[str, Any] | None = None
    volume_mounts: list[VolumeMount] = Field(default_factory=list)

    @field_validator("env", mode="before")
    @classmethod
    def _env_mapping(cls, value: object) -> object:
        """Local files may write `env: {KEY: value}`; normalise it to Kubernetes' list form."""
        if not isinstance(value, Mapping):
            return value
        return [{"name": key, "value": _env_text(item)} for key, item in value.items()]

    @model_validator(mode="after")
    def _runnable(self) -> Workload:
        if self.image is None and not self.command:
            raise ValueError("workload needs an image (Kubernetes) or a command (local runtime)")
        return self


def _env_text(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


DEFAULT_STORAGE_SIZE = "10Gi"
ReclaimPolicy = Literal["Retain", "Delete"]


class Storage(_Spec):
    """The workspace's home volume (a PVC): on by default, because a workspace is someone's work.

    `ephemeral: true` is the explicit opt-out. `reclaimPolicy: Retain` (the default) keeps the
    volume when the RDEAgent is deleted; `Delete` lets it go with the RDEAgent. `mountPath`
    defaults to the workload's home (see `RDEAgentSpec.home_mount_path`).
    """

    size: str = DEFAULT_STORAGE_SIZE
    storage_class_name: str | None = Field(default=None, min_length=1)
    mount_path: str | None = None
    reclaim_policy: ReclaimPolicy = "Retain"
    ephemeral: bool = False
    #: Group the volume's files are made writable for (the pod's fsGroup): a fresh volume is
    #: root's, and a non-root image (jupyter: 100, code-server: 1000) could not write its home.
    fs_group: int | None = Field(default=None, ge=0)

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        _check_quantity(value, "size")
        return value

    @field_validator("mount_path")
    @classmethod
    def _mount_path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"mountPath {value!r} must be an absolute path (start with /)")
        return value


class AgentOverrides(_Spec):
    image: str | None = Field(default=None, min_length=1)
    resources: ResourceRequirements | None = None


class Toleration(_Spec):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class App(_Spec):
    """A web app of the workspace, reached in a browser at `{name}--{owner}.{apps-domain}`
    (the first app) or `{port}--{name}--{owner}.{apps-domain}`; `path` is where it opens."""

    name: str
    port: Port
    path: str = "/"

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: object) -> object:
        return naming.validate_name(value, "app name")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not _APP_PATH.fullmatch(value):
            raise ValueError(f"app path {value!r} must be an absolute path such as /lab")
        return value


class RDEAgentSpec(_Spec):
    owner: str
    ttl: str | int | None = None
    local_target: str = DEFAULT_LOCAL_TARGET
    allowed_ports: list[Port] = Field(default_factory=list)
    apps: list[App] = Field(default_factory=list)
    workload: Workload | None = None
    storage: Storage = Field(default_factory=Storage)
    agent: AgentOverrides | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)

    @field_validator("owner", mode="before")
    @classmethod
    def _owner(cls, value: object) -> object:
        return naming.validate_name(value, "owner")

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, value: object) -> object:
        parse_ttl(value)
        return value

    @field_validator("local_target")
    @classmethod
    def _local_target(cls, value: str) -> str:
        parse_host_port(value)
        return value

    @field_validator("allowed_ports")
    @classmethod
    def _allowed_ports(cls, value: list[int]) -> list[int]:
        duplicates = sorted({port for port in value if value.count(port) > 1})
        if duplicates:
            raise ValueError(f"ports listed more than once: {duplicates}")
        return value

    @field_validator("apps")
    @classmethod
    def _apps(cls, value: list[App]) -> list[App]:
        names = [app.name for app in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"app names used more than once: {duplicates}")
        return value

    @model_validator(mode="after")
    def _volumes(self) -> RDEAgentSpec:
        """Reject mounts Kubernetes would refuse only after the Deployment was written."""
        wants_volume = "storage" in self.model_fields_set and not self.storage.ephemeral
        if wants_volume and self.workload is None:
            raise ValueError(
                "storage needs a workload: the volume is mounted into its container "
                "(set storage.ephemeral: true, or add a workload)"
            )
        if self.workload is None:
            return self
        home = self.home_mount_path
        paths = [mount.mount_path for mount in self.workload.volume_mounts]
        if home is not None:
            paths.append(home)
        repeated = sorted({path for path in paths if paths.count(path) > 1})
        if repeated:
            raise ValueError(f"mount paths used more than once: {repeated}")
        for mount in self.workload.volume_mounts:
            if mount.name != STORAGE_VOLUME or home is None:
                raise ValueError(
                    f"volume mount {mount.name!r} names no volume; the only volume is "
                    f"{STORAGE_VOLUME!r}, the home volume, which exists unless "
                    "storage.ephemeral is true"
                )
        return self

    @property
    def home_mount_path(self) -> str | None:
        """Where the home volume is mounted, or None when there is none (ephemeral, no workload).

        Unless `storage.mountPath` says otherwise: the workload's `HOME` (when set, absolute),
        else `/home/{owner}`. An image's own home is unknowable from here, so the examples name
        theirs.
        """
        if self.workload is None or self.storage.ephemeral:
            return None
        if self.storage.mount_path is not None:
            return self.storage.mount_path
        home = next((var.value for var in self.workload.env if var.name == "HOME"), "")
        return home if home.startswith("/") else f"/home/{self.owner}"

    @property
    def ttl_duration(self) -> timedelta | None:
        """The TTL, None when disabled (already validated, so this cannot raise)."""
        return parse_ttl(self.ttl)

    @property
    def local_address(self) -> tuple[str, int]:
        return parse_host_port(self.local_target)

    @property
    def effective_allowed_ports(self) -> tuple[int, ...]:
        """Ports users may reach: `allowedPorts`, the apps' ports and the local target's port."""
        apps = {app.port for app in self.apps}
        return tuple(sorted({*self.allowed_ports, *apps, self.local_address[1]}))


class ObjectMeta(BaseModel):
    """The metadata we use; anything else the API server adds is ignored."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, frozen=True)

    name: str
    namespace: str | None = None
    uid: str | None = None
    creation_timestamp: AwareDatetime | None = None
    generation: int | None = None
    annotations: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: object) -> object:
        return naming.validate_name(value, "name")


class RDEAgent(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, frozen=True)

    api_version: Literal["kuberde.io/v1"]
    kind: Literal["RDEAgent"]
    metadata: ObjectMeta
    spec: RDEAgentSpec
    status: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _id_fits(self) -> RDEAgent:
        naming.agent_id(self.spec.owner, self.metadata.name)
        return self

    @property
    def agent_id(self) -> str:
        return naming.agent_id(self.spec.owner, self.metadata.name)

    def to_document(self) -> dict[str, Any]:
        """The document in its YAML/JSON shape: camelCase, only the fields it was given."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


def _describe(error: ValidationError) -> str:
    parts: list[str] = []
    for item in error.errors():
        path = ""
        for key in item["loc"]:
            path += f"[{key}]" if isinstance(key, int) else (f".{key}" if path else str(key))
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] == "value_error":
            message = str(item["ctx"]["error"])
        else:
            message = item["msg"]
        parts.append(f"{path}: {message}" if path else message)
    return "; ".join(parts)


def _plain(value: object) -> object:
    """Mapping views (as Kopf hands out) to dicts, so strict validation sees JSON shapes."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def parse_agent(obj: object) -> RDEAgent:
    """Validate one decoded document (a file's or the API server's); raise `InvalidResource`."""
    if not isinstance(obj, Mapping):
        raise InvalidResource(f"expected a mapping, got {type(obj).__name__}")
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if (api_version, kind) != (API_VERSION, KIND):
        raise InvalidResource(
            f"unsupported apiVersion {api_version!r} / kind {kind!r}; "
            f"expected apiVersion {API_VERSION!r} and kind {KIND!r}"
        )
    try:
        return RDEAgent.model_validate(_plain(obj))
    except ValidationError as error:
        raise InvalidResource(_describe(error)) from None


@dataclass(frozen=True, slots=True)
class LoadResult:
    """One document of a file: either `agent` or `error` is set, never both."""

    source: str
    index: int
    item: int | None
    name: str | None
    agent: RDEAgent | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if (self.agent is None) == (self.error is None):
            raise ValueError("a LoadResult holds exactly one of agent and error")

    @property
    def ok(self) -> bool:
        return self.agent is not None

    @property
    def location(self) -> str:
        """`file.yaml, document 2` (`, item 3` inside a List), as error messages name it."""
        return _location(self.source, self.index, self.item)


def _split_documents(text: str) -> list[tuple[int, str]]:
    """Cut a stream at `---` lines so one broken document cannot hide the others.

    A `---` at column 0 followed by a space or the line end is always a document marker in
    YAML, so cutting there agrees with what a YAML parser would do.
    """
    chunks: list[tuple[int, list[str]]] = [(1, [])]
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("---") and (len(line) == 3 or line[3] in " \t"):
            chunks.append((number, [line[3:]]))
        else:
            chunks[-1][1].append(line)
    return [(start, "\n".join(lines)) for start, lines in chunks]


def _name_of(obj: object) -> str | None:
    if isinstance(obj, Mapping):
        metadata = obj.get("metadata")
        if isinstance(metadata, Mapping):
            name = metadata.get("name")
            if isinstance(name, str):
                return name
    return None


def _location(source: str, index: int, item: int | None) -> str:
    where = f"{source}, document {index}"
    return where if item is None else f"{where}, item {item}"


def _result(source: str, index: int, item: int | None, obj: object) -> LoadResult:
    name = _name_of(obj)
    try:
        agent = parse_agent(obj)
    except InvalidResource as error:
        label = _location(source, index, item) + (f" ({name!r})" if name else "")
        return LoadResult(source, index, item, name, error=f"{label}: {error}")
    return LoadResult(source, index, item, name, agent=agent)


def _yaml_problem(error: yaml.YAMLError, first_line: int) -> str:
    """PyYAML's problem with line numbers counted in the whole file, not the document."""
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return f": {error}"
    mark = error.problem_mark
    text = f" at line {first_line + mark.line}, column {mark.column + 1}: {error.problem}"
    if error.context and error.context_mark is not None:
        text += f" ({error.context} at line {first_line + error.context_mark.line})"
    return text


def load_documents(text: str, source: str) -> list[LoadResult]:
    """Every RDEAgent in a multi-document YAML text, each valid or with its own error.

    Empty documents are skipped and not counted; a text with no document at all (an empty
    or comment-only file) is one error, so it is never taken for success. A
    `kind: List` (what `kubectl get -o yaml` writes) contributes its items.
    """
    results: list[LoadResult] = []
    index = 0
    for start, chunk in _split_documents(text):
        try:
            obj = yaml.safe_load(chunk)
        except yaml.YAMLError as error:
            index += 1
            message = f"{source}, document {index}: invalid YAML{_yaml_problem(error, start)}"
            results.append(LoadResult(source, index, None, None, error=message))
            continue
        if obj is None:
            continue
        index += 1
        if isinstance(obj, Mapping) and obj.get("kind") == "List" and obj.get("apiVersion") == "v1":
            items = obj.get("items") or []
            if not isinstance(items, list):
                message = f"{source}, document {index}: items of a List must be a list"
                results.append(LoadResult(source, index, None, None, error=message))
                continue
            results.extend(
                _result(source, index, number, entry) for number, entry in enumerate(items, 1)
            )
            continue
        results.append(_result(source, index, None, obj))
    if index == 0:
        message = f"{source}: holds no RDEAgent document (it is empty)"
        results.append(LoadResult(source, 0, None, None, error=message))
    return results
