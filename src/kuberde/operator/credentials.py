"""The operator's keys and tokens: the signing key shared with the gateway, agent credentials
for the per-agent Secrets, and the management token for `GET /mgmt/agents`.

A Secret's credential is re-minted only when it must be (missing, another RDEAgent's, signed
by an old key, or nearing expiry), so a steady state writes no Secrets.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kuberde.auth import (
    DEFAULT_AGENT_TTL,
    SigningKey,
    SigningKeyError,
    TokenIssuer,
)
from kuberde.auth import (
    load_signing_key as shared_signing_key,
)
from kuberde.clock import Clock, utc_now
from kuberde.operator.annotations import parse_time
from kuberde.operator.builder import CREDENTIAL_KEY
from kuberde.operator.settings import SettingsError
from kuberde.policy import format_timestamp
from kuberde.resource import RDEAgent

__all__ = [
    "CREDENTIAL_EXPIRES_ANNOTATION",
    "CREDENTIAL_KID_ANNOTATION",
    "AgentCredentials",
    "ManagementToken",
    "MintedCredential",
    "controller_uid",
    "load_signing_key",
]

log = logging.getLogger(__name__)

CREDENTIAL_KID_ANNOTATION = "kuberde.io/credential-kid"
CREDENTIAL_EXPIRES_ANNOTATION = "kuberde.io/credential-expires-at"
_MANAGEMENT_TTL = timedelta(hours=1)
_MANAGEMENT_SUBJECT = "kuberde-operator"


def load_signing_key(signing_key_file: Path | None, state_dir: Path | None) -> SigningKey:
    """The key from a mounted Secret file, or the state directory's (created if missing)."""
    if signing_key_file is None and state_dir is None:
        raise SettingsError(
            "no signing key: set KUBERDE_SIGNING_KEY_FILE to the key shared with the gateway "
            "(or --state-dir for a key kept on disk)"
        )
    try:
        return shared_signing_key(signing_key_file, state_dir or Path("."))
    except (OSError, SigningKeyError) as exc:
        raise SettingsError(f"cannot load the signing key: {exc}") from None


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    """The uid of the object's controlling owner (the RDEAgent it belongs to)."""
    for reference in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if reference.get("controller"):
            uid = reference.get("uid")
            return str(uid) if uid else None
    return None


@dataclass(frozen=True)
class MintedCredential:
    token: str
    annotations: dict[str, str]


class AgentCredentials:
    """Mints per-agent credentials and says when a Secret's one must be replaced."""

    def __init__(
        self,
        key: SigningKey,
        *,
        lifetime: timedelta = DEFAULT_AGENT_TTL,
        clock: Clock = utc_now,
    ) -> None:
        self._key = key
        self._issuer = TokenIssuer(key)
        self._lifetime = lifetime
        self._clock = clock

    def replace_reason(self, secret: Mapping[str, Any] | None, agent_uid: str) -> str | None:
        """Why the Secret needs a new credential, or None if it is fine as it is."""
        if secret is None:
            return "missing"
        if controller_uid(secret) != agent_uid:
            return "it belongs to an earlier RDEAgent of the same name"
        if not (secret.get("data") or {}).get(CREDENTIAL_KEY):
            return "it holds no credential"
        annotations = (secret.get("metadata") or {}).get("annotations") or {}
        if annotations.get(CREDENTIAL_KID_ANNOTATION) != self._key.kid:
            return "the signing key changed"
        expires = parse_time(annotations.get(CREDENTIAL_EXPIRES_ANNOTATION))
        if expires is None or expires - self._clock() < self._lifetime / 3:
            return "the credential expires soon"
        return None

    def mint(self, agent: RDEAgent) -> MintedCredential:
        uid = agent.metadata.uid
        if not uid:
            raise ValueError(f"RDEAgent {agent.metadata.name!r} has no uid to bind a credential to")
        expires = self._clock() + self._lifetime
        token = self._issuer.mint_agent(
            agent.spec.owner, agent.metadata.name, uid=uid, ttl=self._lifetime
        )
        return MintedCredential(
            token,
            {
                CREDENTIAL_KID_ANNOTATION: self._key.kid,
                CREDENTIAL_EXPIRES_ANNOTATION: format_timestamp(expires),
            },
        )


class ManagementToken:
    """The bearer token for `/mgmt`: configured, read from a file each time, or self-minted.

    A file is re-read on every use so a rotated Secret takes effect without a restart.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        token_file: Path | None = None,
        key: SigningKey | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._token = token
        self._token_file = token_file
        self._issuer = TokenIssuer(key) if key is not None else None
        self._clock = clock
        self._minted: tuple[str, datetime] | None = None

    def current(self) -> str | None:
        if self._token:
            return self._token
        if self._token_file is not None:
            try:
                return self._token_file.read_text(encoding="utf-8").strip() or None
            except OSError as exc:
                log.warning("cannot read the management token file: %s", exc.strerror or exc)
                return None
        if self._issuer is None:
            return None
        now = self._clock()
        if self._minted is None or self._minted[1] - now < _MANAGEMENT_TTL / 2:
            token = self._issuer.mint_management(_MANAGEMENT_SUBJECT, ttl=_MANAGEMENT_TTL)
            self._minted = (token, now + _MANAGEMENT_TTL)
        return self._minted[0]
