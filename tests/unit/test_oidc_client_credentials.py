"""The agent's client-credentials settings (runbook compatibility), read from the environment."""

from __future__ import annotations

import pytest

from kuberde.agent.config import ConfigError, from_env

BASE = {"SERVER_URL": "ws://frp-server.kuberde.svc:8080/ws"}
CLIENT = {
    "AUTH_CLIENT_ID": "agent-alice-dev",
    "AUTH_CLIENT_SECRET": "client-secret-value",
    "AUTH_TOKEN_URL": "https://keycloak.example/realms/kuberde/protocol/openid-connect/token",
}


def test_client_credentials_replace_the_agent_token() -> None:
    config = from_env({**BASE, **CLIENT})
    assert config.token is None and config.token_file is None
    credentials = config.client_credentials
    assert credentials is not None
    assert credentials.client_id == "agent-alice-dev"
    assert credentials.token_url == CLIENT["AUTH_TOKEN_URL"]
    assert "client-secret-value" not in repr(config)


@pytest.mark.parametrize("missing", sorted(CLIENT))
def test_all_three_variables_are_needed(missing: str) -> None:
    partial = {key: value for key, value in CLIENT.items() if key != missing}
    with pytest.raises(ConfigError, match=missing):
        from_env({**BASE, **partial})


def test_client_credentials_and_an_agent_token_exclude_each_other() -> None:
    with pytest.raises(ConfigError, match="not both"):
        from_env({**BASE, **CLIENT, "AGENT_TOKEN_FILE": "/var/run/secrets/kuberde/token"})


@pytest.mark.parametrize(
    "url",
    ["ftp://keycloak.example/token", "keycloak.example/token", "https://user:pw@idp/token"],
)
def test_the_token_url_must_be_plain_http_or_https(url: str) -> None:
    with pytest.raises(ConfigError, match="AUTH_TOKEN_URL"):
        from_env({**BASE, **CLIENT, "AUTH_TOKEN_URL": url})


def test_without_any_credential_the_error_names_both_ways() -> None:
    with pytest.raises(ConfigError, match="AUTH_CLIENT_ID"):
        from_env(BASE)
