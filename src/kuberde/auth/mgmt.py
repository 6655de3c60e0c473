"""Credentials for the management API (`/mgmt/*`) besides tokens signed with the gateway key.

- A shared token from a file (a mounted Secret), re-read on every request so a rotated
  Secret takes effect without a restart, compared in constant time.
- A Kubernetes ServiceAccount token, checked with the TokenReview API and accepted only for
  the listed accounts (e.g. `system:serviceaccount:kuberde:kuberde-operator`). The gateway's
  own account needs `create` on `tokenreviews` (the `system:auth-delegator` ClusterRole).
  Answers are cached briefly, keyed by the token's hash, so the operator's polling costs one
  review a minute.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import jwt
from kubernetes_asyncio import client as k8s_client

from kuberde.auth.tokens import AuthError, Principal
from kuberde.kube import load_configuration

__all__ = [
    "KubernetesTokenReview",
    "SharedTokenVerifier",
    "TokenReviewVerifier",
    "TokenReviewer",
    "service_account_username",
]

log = logging.getLogger(__name__)

_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
_IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


class SharedTokenVerifier:
    """Accepts exactly the token in `token_file`."""

    def __init__(self, token_file: Path, *, subject: str = "shared-token") -> None:
        self._file = token_file
        self._subject = subject

    async def verify_management(self, token: str) -> Principal:
        try:
            expected = self._file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            log.error("cannot read the management token file %s: %s", self._file, exc)
            raise AuthError("unknown_key", "the management token cannot be checked") from None
        if not expected:
            log.error("the management token file %s is empty", self._file)
            raise AuthError("unknown_key", "the management token cannot be checked")
        # Comparing digests keeps the time independent of where, and whether, lengths differ.
        if not token or not hmac.compare_digest(_digest(token), _digest(expected)):
            raise AuthError("bad_signature", "the management token is not the configured one")
        return Principal(kind="management", name=self._subject)


def service_account_username(namespace: str, name: str) -> str:
    """The username Kubernetes authenticates a ServiceAccount token as."""
    return f"system:serviceaccount:{namespace}:{name}"


class TokenReviewer(Protocol):
    async def review(self, token: str, audiences: Sequence[str]) -> Mapping[str, Any]:
        """The TokenReview's `status`."""
        ...


class KubernetesTokenReview:
    """POSTs TokenReviews with kubernetes-asyncio, as the gateway's own identity."""

    def __init__(self, configuration: k8s_client.Configuration, *, timeout: float = 10.0) -> None:
        self._configuration = configuration
        self._timeout = timeout

    @classmethod
    async def load(cls, kubeconfig: Path | None = None) -> KubernetesTokenReview:
        """Credentials by the standard rules (see `kuberde.kube.load_configuration`)."""
        configuration = await load_configuration(kubeconfig)
        return cls(configuration)

    async def review(self, token: str, audiences: Sequence[str]) -> Mapping[str, Any]:
        body: dict[str, Any] = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        if audiences:
            body["spec"]["audiences"] = list(audiences)
        # The response echoes the token: read it raw so the client library never logs it.
        async with k8s_client.ApiClient(self._configuration) as api:
            response = await api.call_api(
                _REVIEW_PATH,
                "POST",
                header_params={"Content-Type": "application/json", "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=self._timeout,
            )
            status_code = response.status
            data = await response.read()
        if not 200 <= status_code < 300:
            raise OSError(f"TokenReview failed with HTTP {status_code}")
        document = json.loads(data)
        status = document.get("status") if isinstance(document, dict) else None
        return status if isinstance(status, dict) else {}


@dataclass(frozen=True)
class _Verdict:
    username: str | None
    until: float


class TokenReviewVerifier:
    """Accepts ServiceAccount tokens that the API server authenticates as an allowed user."""

    def __init__(
        self,
        reviewer: TokenReviewer,
        *,
        allowed_users: Collection[str],
        audiences: Sequence[str] = (),
        cache_seconds: float = 60.0,
        negative_cache_seconds: float = 10.0,
        max_cached: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not allowed_users:
            raise ValueError("at least one allowed user is required")
        self._reviewer = reviewer
        self._allowed = frozenset(allowed_users)
        self._audiences = tuple(audiences)
        self._ttl = cache_seconds
        self._negative_ttl = negative_cache_seconds
        self._max_cached = max_cached
        self._clock = clock
        self._cache: dict[bytes, _Verdict] = {}
        self._concurrency = asyncio.Semaphore(4)

    async def _username(self, token: str) -> str | None:
        """Who the API server says the token is, or None if it is not authenticated."""
        status = await self._reviewer.review(token, self._audiences)
        if status.get("authenticated") is not True:
            return None
        if self._audiences:
            granted = status.get("audiences") or []
            if not any(audience in granted for audience in self._audiences):
                return None
        user = status.get("user")
        username = user.get("username") if isinstance(user, dict) else None
        return username if isinstance(username, str) and username else None

    async def verify_management(self, token: str) -> Principal:
        if not token:
            raise AuthError("missing", "no token was given")
        try:
            jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError("malformed", "the token is not a ServiceAccount token") from None
        key = _digest(token)
        now = self._clock()
        verdict = self._cache.get(key)
        if verdict is None or verdict.until <= now:
            async with self._concurrency:
                try:
                    username = await self._username(token)
                except (
                    OSError,
                    ValueError,
                    TimeoutError,
                    aiohttp.ClientError,
                    k8s_client.ApiException,
                ) as exc:
                    log.warning("TokenReview failed: %s", type(exc).__name__)
                    raise AuthError(
                        "unknown_key", "the Kubernetes API cannot check the token right now"
                    ) from None
            ttl = self._ttl if username is not None else self._negative_ttl
            verdict = _Verdict(username, now + ttl)
            if len(self._cache) >= self._max_cached:
                self._cache = {k: v for k, v in self._cache.items() if v.until > now}
            if len(self._cache) < self._max_cached:
                self._cache[key] = verdict
        if verdict.username is None:
            raise AuthError("bad_signature", "the Kubernetes API did not authenticate the token")
        if verdict.username not in self._allowed:
            raise AuthError("wrong_kind", f"{verdict.username} may not use the management API")
        return Principal(kind="management", name=verdict.username)
