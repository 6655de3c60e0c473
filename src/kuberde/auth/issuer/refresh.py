"""Rotating refresh tokens (RFC 6749 §6), stored only as SHA-256 hashes.

Each use returns a new token; presenting a spent one revokes its whole family (theft
detection, OAuth 2.0 Security BCP §4.14). Changes are made in memory, on the event loop;
`persist` then makes them durable with the fsync in a thread, before the caller answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kuberde.auth.issuer.protocol import Identity, OAuthError, sha256
from kuberde.files import write_private

REFRESH_TOKENS_FILE = "refresh-tokens.json"

log = logging.getLogger(__name__)


class RefreshTokens:
    """Hashed refresh tokens in a 0600 JSON file, rotated on every use.

    Every change is followed by `await persist()` before the client hears of it.
    """

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        self._path = path
        self._clock = clock
        self._entries: dict[str, dict[str, Any]] = self._load()
        self._changes = 0
        self._stored = 0
        self._writer = asyncio.Lock()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            document = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable refresh token store %s: %s", self._path, exc)
            return {}
        entries = document.get("tokens") if isinstance(document, dict) else None
        return entries if isinstance(entries, dict) else {}

    def _changed(self) -> None:
        now = self._clock()
        self._entries = {h: e for h, e in self._entries.items() if e["expires_at"] > now}
        self._changes += 1

    async def persist(self) -> None:
        """Return once every change made so far is on disk (fsynced, in a thread).

        One write at a time, each of the newest state taken on the event loop, so the file
        never goes back to an older state; changes made during a write share the next one.
        A rotation (old token spent, new one issued) reaches the disk in one atomic write.
        """
        wanted = self._changes
        async with self._writer:
            if self._stored >= wanted:
                return
            changes, document = self._changes, json.dumps({"tokens": self._entries})
            await asyncio.to_thread(write_private, self._path, document)
            self._stored = changes

    def issue(
        self, identity: Identity, client_id: str, scope: str, ttl: float, family: str | None
    ) -> str:
        token = secrets.token_urlsafe(32)
        self._entries[sha256(token)] = {
            "family": family or secrets.token_urlsafe(12),
            "username": identity.username,
            "admin": identity.admin,
            "by_password": identity.by_password,
            "credential": identity.credential,
            "client_id": client_id,
            "scope": scope,
            "expires_at": self._clock() + ttl,
            "spent": False,
        }
        self._changed()
        return token

    def spend(self, token: str, client_id: str) -> tuple[Identity, str, str]:
        """Mark a token used; return (identity, scope, family). A reused token kills its family."""
        entry = self._entries.get(sha256(token))
        if entry is None or entry["expires_at"] <= self._clock():
            raise OAuthError("invalid_grant", "the refresh token is invalid or expired")
        if entry["client_id"] != client_id:
            raise OAuthError("invalid_grant", "the refresh token was issued to another client")
        if entry["spent"]:
            self.revoke_family(entry["family"])
            log.warning(
                "a spent refresh token of %s was presented again; revoked its sign-in",
                entry["username"],
            )
            raise OAuthError("invalid_grant", "the refresh token was already used")
        entry["spent"] = True
        self._changed()
        identity = Identity(
            entry["username"], entry["admin"], entry["by_password"], entry.get("credential")
        )
        return identity, entry["scope"], entry["family"]

    def family_of(self, token: str) -> str | None:
        entry = self._entries.get(sha256(token))
        return entry["family"] if entry is not None else None

    def revoke_family(self, family: str) -> None:
        self._entries = {h: e for h, e in self._entries.items() if e["family"] != family}
        self._changed()
