"""`/mgmt` credentials as `kuberde server` composes them: the gateway key's tokens, a shared
token file, and ServiceAccount tokens checked with TokenReview against an emulated API
server (KMock), reached through a kubeconfig like a gateway outside the cluster would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import kmock
import pytest

from kuberde.auth import SigningKey, TokenIssuer, TokenVerifier, load_or_create_signing_key
from kuberde.auth.mgmt import service_account_username
from kuberde.auth.oidc import AgentClaims
from kuberde.gateway.server import GatewayAuth, build_verifier
from tests.oidc_provider.gateway import GatewayUnderTest, captured_logs, running_gateway

WAIT = 10.0
OPERATOR = service_account_username("kuberde", "kuberde-operator")
GATEWAY_IDENTITY = "gateway-service-account-token"
SHARED = "shared-management-token-value"


def service_account_token(name: str) -> str:
    return jwt.encode(
        {"iss": "https://kubernetes.default.svc", "sub": service_account_username("kuberde", name)},
        "signed-by-the-cluster-with-a-key-of-32-bytes",
        algorithm="HS256",
    )


@dataclass
class ApiServer:
    """KMock answering TokenReviews for the tokens it knows."""

    known: dict[str, str]
    reviews: list[dict[str, Any]] = field(default_factory=list)
    callers: list[str | None] = field(default_factory=list)

    def review(self, request: Any) -> dict[str, Any]:
        body = request.data
        self.reviews.append(body)
        self.callers.append(request.headers.get("Authorization"))
        username = self.known.get(body["spec"]["token"])
        status: dict[str, Any] = {"authenticated": username is not None}
        if username is not None:
            status["user"] = {"username": username, "groups": ["system:serviceaccounts"]}
        return {**body, "status": status}


@pytest.fixture
async def api_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ApiServer]:
    api = ApiServer(
        {
            service_account_token("kuberde-operator"): OPERATOR,
            service_account_token("default"): service_account_username("kuberde", "default"),
        }
    )
    server = kmock.KubernetesEmulator()
    server["post /apis/authentication.k8s.io/v1/tokenreviews"] << api.review
    async with server, kmock.Server(server) as http_server:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": {"server": str(http_server.url)}}],
                    "users": [{"name": "gateway", "user": {"token": GATEWAY_IDENTITY}}],
                    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "gateway"}}],
                    "current-context": "c",
                }
            )
        )
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield api


async def start(tmp_path: Path, auth: GatewayAuth) -> tuple[TokenVerifier, SigningKey]:
    key = load_or_create_signing_key(tmp_path / "gateway")
    return await build_verifier(auth, key, None), key


async def mgmt_status(gateway: GatewayUnderTest, token: str) -> tuple[int, dict[str, Any]]:
    async with (
        asyncio.timeout(WAIT),
        gateway.http.get(
            gateway.url + "/mgmt/agents", headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        return response.status, await response.json()


async def test_service_accounts_shared_tokens_and_the_gateway_key(
    tmp_path: Path, api_server: ApiServer
) -> None:
    token_file = tmp_path / "mgmt-token"
    token_file.write_text(SHARED + "\n")
    auth = GatewayAuth(mgmt_token_file=token_file, mgmt_service_accounts=(OPERATOR,))
    verifier, key = await start(tmp_path, auth)
    operator = service_account_token("kuberde-operator")
    with captured_logs() as logs:
        async with running_gateway(tmp_path / "gateway", lambda url, k: verifier) as gateway:
            for token in (operator, SHARED, TokenIssuer(key).mint_management()):
                status, body = await mgmt_status(gateway, token)
                assert status == 200, body
                assert body["agents"] == []
            assert [review["spec"]["token"] for review in api_server.reviews] == [operator]
            assert api_server.callers == [f"Bearer {GATEWAY_IDENTITY}"]

            for refused in (
                service_account_token("default"),
                service_account_token("unknown"),
                "shared-management-token-valu",
                TokenIssuer(key).mint_user("alice"),
            ):
                status, body = await mgmt_status(gateway, refused)
                assert status == 401, body
                assert refused not in json.dumps(body)
    for token in (operator, SHARED, service_account_token("default")):
        assert token not in logs.text


async def test_an_unreachable_api_server_refuses_service_accounts_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "gateway", "user": {"token": GATEWAY_IDENTITY}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "gateway"}}],
                "current-context": "c",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    verifier, key = await start(tmp_path, GatewayAuth(mgmt_service_accounts=(OPERATOR,)))
    async with running_gateway(tmp_path / "gateway", lambda url, k: verifier) as gateway:
        with captured_logs() as logs:
            status, _ = await mgmt_status(gateway, service_account_token("kuberde-operator"))
        assert status == 401
        assert "TokenReview failed" in logs.text
        status, _ = await mgmt_status(gateway, TokenIssuer(key).mint_management())
        assert status == 200


async def test_client_credential_agents_need_an_issuer(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="OIDC issuer"):
        await start(tmp_path, GatewayAuth(agent_claims=AgentClaims()))
