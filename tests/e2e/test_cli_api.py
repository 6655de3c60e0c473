"""The CLI's client for the gateway's API (kuberde.cli.api, asyncio streams and h11) against
a real `kuberde server`: answers, refusals, TLS, and that no aiohttp is loaded for it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import KUBERDE, GatewayFactory, TlsFiles, clean_env, run
from tests.e2e.up_fixtures import CLI_TIMEOUT, KubeRDE, running_demo
from tests.loaded_modules import run_listing_packages

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def rde(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeRDE]:
    with running_demo(tmp_path_factory.mktemp("api")) as installation:
        yield installation


def test_ls_and_version_answer_without_loading_aiohttp(rde: KubeRDE) -> None:
    for args in (["ls", "-o", "json"], ["version"]):
        result, loaded = run_listing_packages(args, rde.env, CLI_TIMEOUT)
        assert result.returncode == 0, result.stderr
        assert "h11" in loaded
        assert not {"aiohttp", "pydantic"} & loaded
    assert [row["name"] for row in json.loads(rde.ok("ls", "-o", "json"))] == ["demo"]
    assert f"Gateway version: 0.1.0 ({rde.url})" in rde.ok("version")


def test_a_refused_token_says_how_to_get_a_fresh_one(rde: KubeRDE) -> None:
    result = rde.kuberde("ls", "--token", "not-a-token")
    assert result.returncode == 1
    assert result.stderr.startswith("kuberde: ")
    assert "run `kuberde up` (or `kuberde login`) for a fresh token" in result.stderr


def test_https_with_and_without_the_ca_file(
    start_gateway: GatewayFactory, tls_files: TlsFiles
) -> None:
    gateway = start_gateway(tls=tls_files)
    token = gateway.user_token()
    trusting = run([KUBERDE, "version"], gateway.client_env(token, ca_file=tls_files.ca_cert))
    assert trusting.returncode == 0, trusting.explain()
    assert f"Gateway version: 0.1.0 ({gateway.url})" in trusting.text

    untrusting = run([KUBERDE, "version"], gateway.client_env(token))
    assert untrusting.returncode == 1
    assert f"the certificate of {gateway.url} is not trusted" in untrusting.errors
    assert "pass --ca-file or set KUBERDE_CA_FILE" in untrusting.errors


def test_a_gateway_that_is_not_there(start_gateway: GatewayFactory) -> None:
    gateway = start_gateway()
    url = gateway.url
    gateway.proc.stop()
    result = run([KUBERDE, "version"], clean_env(KUBERDE_SERVER=url))
    assert result.returncode == 1
    assert f"cannot reach the gateway at {url} (connection refused)" in result.errors
    assert result.text == "Client version: 0.1.0\n"
