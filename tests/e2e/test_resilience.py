"""Failures end to end: killed and restarted agents and gateways, graceful agent shutdown,
credentials kept out of logs, and tokens the gateway did not sign."""

from __future__ import annotations

import asyncio
import getpass
import os
import re
import signal
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    AGENT_ID,
    KUBERDE,
    RECONNECT_BOUND,
    STEP,
    AgentFactory,
    Gateway,
    GatewayFactory,
    Processes,
    SshServer,
    Targets,
    echo_handler,
    echo_roundtrip,
    mint,
    run,
    spawn,
    start_port_forward,
)

USER = getpass.getuser()
HOST = f"{AGENT_ID}.kuberde"
pytestmark = pytest.mark.timeout(120)


def assert_ssh_works(gateway: Gateway, sshd: SshServer, token: str, word: str) -> None:
    result = run(
        ["ssh", *sshd.proxy_options(), f"{USER}@{HOST}", f"echo {word}"],
        gateway.client_env(token),
    )
    assert result.returncode == 0, result.explain()
    assert result.text == f"{word}\n"


def test_agent_killed_and_restarted_serves_again(
    gateway: Gateway, start_agent: AgentFactory, sshd: SshServer
) -> None:
    agent = start_agent(gateway)
    token = gateway.user_token()
    assert_ssh_works(gateway, sshd, token, "before-kill")

    agent.proc.kill()
    gateway.wait_agent(predicate=lambda entry: not entry["online"])
    refused = run(
        [KUBERDE, "connect", AGENT_ID, "--port", "22", "--kind", "ssh"],
        gateway.client_env(token),
        input=b"",
    )
    assert refused.returncode == 1, refused.explain()
    assert refused.stdout == b""
    assert AGENT_ID in refused.errors, refused.explain()

    start_agent(gateway, reuse=agent)
    assert_ssh_works(gateway, sshd, token, "after-restart")


def test_gateway_restart_agent_reconnects_and_port_forward_survives(
    start_gateway: GatewayFactory,
    start_agent: AgentFactory,
    sshd: SshServer,
    targets: Targets,
    processes: Processes,
) -> None:
    gateway = start_gateway()
    echo_port = targets.serve(echo_handler)
    agent = start_agent(gateway, allowed_ports=[echo_port])
    token = gateway.user_token()
    forward, local = start_port_forward(processes, gateway, token, echo_port)
    assert asyncio.run(echo_roundtrip(local, b"before the restart")) == b"before the restart"
    assert_ssh_works(gateway, sshd, token, "before-restart")

    assert gateway.proc.stop() == 0
    during = asyncio.run(echo_roundtrip(local, b"nobody is listening"))
    assert during == b"", "a connection while the gateway is down must be closed, not served"
    forward.wait_for_log(r"connection from 127\.0\.0\.1:\d+ failed")

    restarted = start_gateway(state_dir=gateway.state_dir, port=gateway.port)
    assert restarted.url == gateway.url
    restarted.wait_agent(timeout=RECONNECT_BOUND, watch=agent.proc)

    assert_ssh_works(restarted, sshd, token, "after-restart")
    payload = os.urandom(512 * 1024)
    assert asyncio.run(echo_roundtrip(local, payload)) == payload
    assert forward.returncode is None, forward.describe()
    assert agent.proc.returncode is None, "the same agent process reconnected"


async def test_agent_sigterm_lets_a_streaming_ssh_session_finish(
    gateway: Gateway, start_agent: AgentFactory, sshd: SshServer
) -> None:
    agent = await asyncio.to_thread(start_agent, gateway)
    token = await asyncio.to_thread(gateway.user_token)
    lines = 60
    command = (
        f"for i in $(seq 1 {lines}); do printf 'line %02d %0400d\\n' $i 0; sleep 0.05; done; "
        "echo finished"
    )
    argv = ["ssh", *sshd.proxy_options(), f"{USER}@{HOST}", command]
    async with spawn(argv, gateway.client_env(token)) as ssh:
        assert ssh.stdout is not None and ssh.stderr is not None
        first = await asyncio.wait_for(ssh.stdout.readline(), STEP)
        assert first.startswith(b"line 01 ")

        agent.proc.signal(signal.SIGTERM)
        rest = await asyncio.wait_for(ssh.stdout.read(), STEP)
        code = await asyncio.wait_for(ssh.wait(), STEP)
        errors = (await ssh.stderr.read()).decode(errors="replace")

    assert code == 0, errors
    output = (first + rest).decode().splitlines()
    expected = [f"line {i:02d} {0:0400d}" for i in range(1, lines + 1)] + ["finished"]
    assert output == expected
    assert await asyncio.to_thread(agent.proc.wait) == 0, agent.proc.describe()
    assert re.search(r"going away: letting [1-9]\d* open stream", agent.proc.log())


def test_tokens_never_appear_in_gateway_or_agent_logs(
    start_gateway: GatewayFactory,
    start_agent: AgentFactory,
    sshd: SshServer,
    tmp_path: Path,
) -> None:
    gateway = start_gateway(log_level="debug")
    agent = start_agent(gateway, log_level="debug")
    user_token = gateway.user_token()
    assert_ssh_works(gateway, sshd, user_token, "logged-session")

    foreign_dir = tmp_path / "foreign-state"
    foreign_agent_token = mint("agent", foreign_dir, "--owner", "alice", "--name", "rogue")
    foreign_user_token = mint("user", foreign_dir, "--user", "alice")
    rogue = start_agent(gateway, name="rogue", token=foreign_agent_token, wait_online=False)
    rogue.proc.wait_for_log(r"credential rejected \(401\)")
    refused = run(
        [KUBERDE, "connect", AGENT_ID, "--port", "22"],
        gateway.client_env(foreign_user_token),
        input=b"",
    )
    assert refused.returncode == 1, refused.explain()

    secrets = {
        "agent credential": agent.token,
        "user token": user_token,
        "management token": gateway.mgmt_token,
        "foreign agent credential": foreign_agent_token,
        "foreign user token": foreign_user_token,
    }
    logs = {
        "gateway": gateway.proc.log(),
        "agent": agent.proc.log(),
        "rejected agent": rogue.proc.log(),
        "rejected connect": refused.errors,
    }
    assert "agent user-alice-dev connected" in logs["gateway"], logs["gateway"]
    for log_name, text in logs.items():
        for secret_name, secret in secrets.items():
            signature = secret.rsplit(".", 1)[1]
            assert secret not in text, f"the {secret_name} is in the {log_name} log"
            assert signature not in text, f"the {secret_name}'s signature is in the {log_name} log"


def test_token_signed_by_another_gateway_is_refused_on_the_cli(
    gateway: Gateway, start_agent: AgentFactory, tmp_path: Path
) -> None:
    start_agent(gateway)
    foreign = mint("user", tmp_path / "other-gateway-state", "--user", "alice")

    result = run(
        [KUBERDE, "connect", AGENT_ID, "--port", "22", "--kind", "ssh"],
        gateway.client_env(foreign),
        input=b"SSH-2.0-OpenSSH_9.2\r\n",
    )

    assert result.returncode == 1, result.explain()
    assert result.stdout == b""
    assert "not authorized" in result.errors, result.explain()
    assert result.errors.startswith("kuberde: "), result.explain()
