"""Names, agent IDs, label sets and annotation keys shared by every component.

An agent ID is `user-{owner}-{name}`. IDs can collide (owner `alice` + name `smith-dev` and
owner `alice-smith` + name `dev`), so nothing may parse an owner back out of an ID: the owner
always comes from the resource or the credential.
"""

from __future__ import annotations

import re

__all__ = [
    "AGENT_APP_LABEL",
    "EXTEND_ANNOTATION",
    "MAX_ID_LENGTH",
    "MAX_OS_USER_LENGTH",
    "SCALED_DOWN_ANNOTATION",
    "STOP_ANNOTATION",
    "WAKE_ANNOTATION",
    "InvalidName",
    "agent_id",
    "agent_labels",
    "is_os_user_name",
    "validate_agent_id",
    "validate_name",
]

MAX_ID_LENGTH = 63
AGENT_APP_LABEL = "frp-agent"
#: Written by the gateway (or anyone allowed to wake an agent): RFC 3339 time of the request.
WAKE_ANNOTATION = "kuberde.io/wake-requested-at"
#: Written by the operator when the TTL scales an agent to zero; removed when it is woken.
SCALED_DOWN_ANNOTATION = "kuberde.io/scaled-down-at"
#: Written by the gateway (`kuberde stop`, the dashboard): RFC 3339 time of a stop request.
#: The operator scales the agent to zero and removes it.
STOP_ANNOTATION = "kuberde.io/stop-requested"
#: Written by the gateway (`kuberde extend`, the dashboard): RFC 3339 time the agent stays
#: up until, whatever its TTL says. A stop removes it.
EXTEND_ANNOTATION = "kuberde.io/extend-until"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_OS_USER = re.compile(r"[a-z_][a-z0-9_-]*")
#: useradd's limit on user names.
MAX_OS_USER_LENGTH = 32


class InvalidName(ValueError):
    """A name, owner or agent ID that Kubernetes (or we) would refuse."""


def validate_name(value: object, what: str = "name") -> str:
    """Return `value` if it is a DNS-1123 label; otherwise raise with a readable reason."""
    if not isinstance(value, str) or not value:
        raise InvalidName(f"{what} must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidName(f"{what} {value!r} is longer than {MAX_ID_LENGTH} characters")
    if not _DNS_LABEL.fullmatch(value):
        raise InvalidName(
            f"{what} {value!r} must consist of lower-case letters, digits and '-', "
            "and start and end with a letter or digit"
        )
    return value


def agent_id(owner: str, name: str) -> str:
    """The agent ID (and Deployment name) for `name` owned by `owner`."""
    validate_name(owner, "owner")
    validate_name(name, "name")
    result = f"user-{owner}-{name}"
    if len(result) > MAX_ID_LENGTH:
        raise InvalidName(
            f"agent ID {result!r} is {len(result)} characters; the limit is {MAX_ID_LENGTH}"
        )
    return result


def validate_agent_id(value: object) -> str:
    """Check the shape of an agent ID taken from a credential or a URL."""
    validated = validate_name(value, "agent ID")
    if not validated.startswith("user-"):
        raise InvalidName(f"agent ID {validated!r} must start with 'user-'")
    return validated


def agent_labels(agent: str) -> dict[str, str]:
    """Pod labels of an agent's workload, as the runbook selects them."""
    return {"app": AGENT_APP_LABEL, "instance": agent}


def is_os_user_name(value: str) -> bool:
    """What Debian's useradd accepts by default: a local workspace account's name."""
    return len(value) <= MAX_OS_USER_LENGTH and _OS_USER.fullmatch(value) is not None
