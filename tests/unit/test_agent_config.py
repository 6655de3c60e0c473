from __future__ import annotations

import os
from pathlib import Path

import jwt
import pytest

from kuberde.agent.config import (
    AgentConfig,
    ConfigError,
    CredentialUnavailable,
    from_env,
    load_credential,
)

AGENT = "user-alice-dev"


def token_for(subject: str | None) -> str:
    claims = {"aud": "kuberde-agent"} if subject is None else {"sub": subject}
    return jwt.encode(claims, "not-the-gateway-key-but-long-enough-for-hs256", algorithm="HS256")


TOKEN = token_for(AGENT)
BASE = {"SERVER_URL": "ws://frp-server.kuberde.svc:8080/ws", "AGENT_TOKEN": TOKEN}


def env(**overrides: str) -> dict[str, str]:
    merged = {**BASE, **overrides}
    return {key: value for key, value in merged.items() if value != "<unset>"}


def test_defaults() -> None:
    config = from_env(env())
    assert config.server_url == "ws://frp-server.kuberde.svc:8080/ws"
    assert (config.local_host, config.local_port) == ("127.0.0.1", 22)
    assert config.allowed_ports == frozenset()
    assert config.port_map == {}
    assert config.token == TOKEN
    assert config.token_file is None
    assert config.agent_id is None
    assert config.ca_file is None
    assert config.shutdown_grace == 10.0
    assert not config.uses_tls


def test_token_is_not_in_repr() -> None:
    config = from_env(env())
    assert TOKEN not in repr(config)
    assert TOKEN not in repr(load_credential(config))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ws://frp-server.kuberde.svc:8080/ws", "ws://frp-server.kuberde.svc:8080/ws"),
        ("wss://gw.example.com/ws", "wss://gw.example.com/ws"),
        ("http://frp-server.kuberde.svc:8080", "ws://frp-server.kuberde.svc:8080/ws"),
        ("http://frp-server.kuberde.svc:8080/", "ws://frp-server.kuberde.svc:8080/ws"),
        ("https://gw.example.com", "wss://gw.example.com/ws"),
        ("HTTPS://gw.example.com:8443/kuberde/ws", "wss://gw.example.com:8443/kuberde/ws"),
        ("ws://[::1]:8080", "ws://[::1]:8080/ws"),
        ("  ws://gw:8080/ws  ", "ws://gw:8080/ws"),
    ],
)
def test_server_url(value: str, expected: str) -> None:
    config = from_env(env(SERVER_URL=value))
    assert config.server_url == expected
    assert config.uses_tls == expected.startswith("wss://")
    assert config.unix_socket is None
    assert config.dial_url == expected


@pytest.mark.parametrize(
    "value", ["ws+unix:/run/kuberde/ab/alice.sock", "WS+UNIX:///run/kuberde/ab/alice.sock"]
)
def test_a_unix_socket_server_url(value: str) -> None:
    config = from_env(env(SERVER_URL=value))
    assert config.server_url == "ws+unix:/run/kuberde/ab/alice.sock"
    assert config.unix_socket == "/run/kuberde/ab/alice.sock"
    assert config.dial_url == "ws://kuberde-gateway/ws"
    assert not config.uses_tls


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("<unset>", "SERVER_URL is required"),
        ("", "SERVER_URL is required"),
        ("frp-server:8080", "must start with ws://"),
        ("ftp://gw/ws", "must start with ws://"),
        ("ws:///ws", "has no host"),
        ("ws://gw:notaport/ws", "not a valid URL"),
        ("ws://gw:70000/ws", "not a valid URL"),
        ("ws://gw:0/ws", "port 0"),
        ("ws://gw:8080/ws?agent=user-alice-dev", "must not carry"),
        ("ws://gw:8080/ws#x", "must not carry"),
        ("ws://user:secret@gw:8080/ws", "must not carry"),
        ("ws+unix:relative.sock", "absolute/path"),
        ("ws+unix://host/run/x.sock", "absolute/path"),
        ("ws+unix:/run/x.sock?agent=x", "absolute/path"),
        ("ws+unix:/run/dir/", "absolute/path"),
    ],
)
def test_bad_server_url(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match="SERVER_URL") as caught:
        from_env(env(SERVER_URL=value))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        ("127.0.0.1:22", "127.0.0.1", 22),
        ("localhost:8888", "localhost", 8888),
        ("[::1]:2222", "::1", 2222),
        ("3000", "127.0.0.1", 3000),
        ("", "127.0.0.1", 22),
    ],
)
def test_local_target(value: str, host: str, port: int) -> None:
    config = from_env(env(LOCAL_TARGET=value))
    assert (config.local_host, config.local_port) == (host, port)


@pytest.mark.parametrize(
    "value",
    [
        "127.0.0.1",
        "127.0.0.1:",
        ":22",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "h:ssh",
        "::1:22",
        "[::1]",
    ],
)
def test_bad_local_target(value: str) -> None:
    with pytest.raises(ConfigError, match="LOCAL_TARGET"):
        from_env(env(LOCAL_TARGET=value))


@pytest.mark.parametrize(
    ("value", "ports"),
    [
        ("8888", {8888}),
        ("8888,5432", {8888, 5432}),
        ("8888, 5432 3000", {8888, 3000, 5432}),
        (" 8888 ,,5432, ", {8888, 5432}),
        ("", set()),
    ],
)
def test_allowed_ports(value: str, ports: set[int]) -> None:
    assert from_env(env(ALLOWED_PORTS=value)).allowed_ports == ports


@pytest.mark.parametrize("value", ["8888,http", "0", "65536", "-1", "80-90", "22;23"])
def test_bad_allowed_ports(value: str) -> None:
    with pytest.raises(ConfigError, match="ALLOWED_PORTS"):
        from_env(env(ALLOWED_PORTS=value))


def test_target_for() -> None:
    config = from_env(env(LOCAL_TARGET="localhost:2222", ALLOWED_PORTS="8888"))
    assert config.target_for(None) == ("localhost", 2222)
    assert config.target_for(2222) == ("localhost", 2222)
    assert config.target_for(8888) == ("127.0.0.1", 8888)
    assert config.target_for(22) is None
    assert config.target_for(5432) is None


def test_port_map_redirects_the_dial_not_the_decision() -> None:
    config = from_env(
        env(
            LOCAL_TARGET="127.0.0.1:22",
            ALLOWED_PORTS="8888",
            PORT_MAP="22=41234 8888=41235,5432=41236",
        )
    )
    assert config.port_map == {22: 41234, 8888: 41235, 5432: 41236}
    assert config.target_for(None) == ("127.0.0.1", 41234)
    assert config.target_for(22) == ("127.0.0.1", 41234)
    assert config.target_for(8888) == ("127.0.0.1", 41235)
    assert config.target_for(5432) is None
    assert config.target_for(41234) is None


@pytest.mark.parametrize("value", ["22", "22=", "=22", "22=ssh", "22=0", "22:41234"])
def test_bad_port_map(value: str) -> None:
    with pytest.raises(ConfigError, match="PORT_MAP"):
        from_env(env(PORT_MAP=value))


def test_token_required() -> None:
    required = "AGENT_TOKEN, AGENT_TOKEN_FILE or AGENT_TOKEN_FD is required"
    with pytest.raises(ConfigError, match=required):
        from_env(env(AGENT_TOKEN="<unset>"))
    with pytest.raises(ConfigError, match=required):
        from_env(env(AGENT_TOKEN="  "))


def test_token_and_file_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="only one of AGENT_TOKEN and AGENT_TOKEN_FILE"):
        from_env(env(AGENT_TOKEN_FILE="/var/run/secrets/kuberde/token"))


def test_token_file_is_read_before_every_dial(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    config = from_env(env(AGENT_TOKEN="<unset>", AGENT_TOKEN_FILE=str(path), AGENT_ID=AGENT))
    assert config.token is None
    assert config.token_file == path
    assert load_credential(config).token == TOKEN
    rotated = jwt.encode({"sub": AGENT, "v": 2}, "another-key-that-is-long-enough-for-hs256")
    path.write_text(rotated)
    credential = load_credential(config)
    assert credential.token == rotated
    assert credential.subject == AGENT


def test_token_descriptor_is_read_from_its_start_before_every_dial() -> None:
    fd = os.memfd_create("credential")
    try:
        os.write(fd, TOKEN.encode())
        config = from_env(env(AGENT_TOKEN="<unset>", AGENT_TOKEN_FD=str(fd), AGENT_ID=AGENT))
        assert (config.token, config.token_file, config.token_fd) == (None, None, fd)
        assert load_credential(config).token == TOKEN
        assert load_credential(config).token == TOKEN  # the offset does not move
        rotated = jwt.encode({"sub": AGENT, "v": 2}, "another-key-that-is-long-enough-for-hs256")
        os.ftruncate(fd, 0)
        os.pwrite(fd, rotated.encode(), 0)
        assert load_credential(config).token == rotated
        os.ftruncate(fd, 0)
        with pytest.raises(CredentialUnavailable, match=f"AGENT_TOKEN_FD {fd} is empty"):
            load_credential(config)
    finally:
        os.close(fd)
    with pytest.raises(CredentialUnavailable, match=f"cannot read AGENT_TOKEN_FD {fd}"):
        load_credential(config)


@pytest.mark.parametrize("value", ["x", "-1", "0", "2", "3.5"])
def test_a_token_descriptor_must_be_a_number_past_stdio(value: str) -> None:
    with pytest.raises(ConfigError, match=r"AGENT_TOKEN_FD .* must be an open file descriptor"):
        from_env(env(AGENT_TOKEN="<unset>", AGENT_TOKEN_FD=value))


def test_token_descriptor_and_file_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="only one of AGENT_TOKEN_FILE and AGENT_TOKEN_FD"):
        from_env(env(AGENT_TOKEN="<unset>", AGENT_TOKEN_FILE="/t", AGENT_TOKEN_FD="5"))


def test_token_file_problems_are_retryable(tmp_path: Path) -> None:
    path = tmp_path / "token"
    config = from_env(env(AGENT_TOKEN="<unset>", AGENT_TOKEN_FILE=str(path)))
    with pytest.raises(CredentialUnavailable, match="cannot read AGENT_TOKEN_FILE"):
        load_credential(config)
    path.write_text("\n")
    with pytest.raises(CredentialUnavailable, match="is empty"):
        load_credential(config)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(CredentialUnavailable, match="cannot read AGENT_TOKEN_FILE"):
        load_credential(config)


def test_agent_id_matching_the_credential() -> None:
    config = from_env(env(AGENT_ID=AGENT))
    assert config.agent_id == AGENT
    assert load_credential(config).subject == AGENT


def test_agent_id_mismatch_names_both() -> None:
    with pytest.raises(ConfigError, match="AGENT_ID") as caught:
        from_env(env(AGENT_ID="user-bob-dev"))
    assert "'user-bob-dev'" in str(caught.value)
    assert f"'{AGENT}'" in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_agent_id_mismatch_in_rotated_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    config = from_env(env(AGENT_TOKEN="<unset>", AGENT_TOKEN_FILE=str(path), AGENT_ID=AGENT))
    path.write_text(token_for("user-mallory-dev"))
    with pytest.raises(ConfigError, match="AGENT_TOKEN_FILE belongs to 'user-mallory-dev'"):
        load_credential(config)


@pytest.mark.parametrize("token", ["opaque-token", token_for(None)])
def test_agent_id_needs_a_subject(token: str) -> None:
    with pytest.raises(ConfigError, match="not a JWT with a 'sub' claim"):
        from_env(env(AGENT_TOKEN=token, AGENT_ID=AGENT))


def test_opaque_token_without_agent_id_is_left_to_the_gateway() -> None:
    config = from_env(env(AGENT_TOKEN="opaque-token"))
    assert load_credential(config).subject is None


@pytest.mark.parametrize("value", ["alice-dev", "User-Alice-Dev", "user_alice", "user-" + "x" * 60])
def test_bad_agent_id(value: str) -> None:
    with pytest.raises(ConfigError, match="AGENT_ID"):
        from_env(env(AGENT_ID=value))


def test_ca_file() -> None:
    assert from_env(env(KUBERDE_CA_FILE="/etc/kuberde/ca.crt")).ca_file == "/etc/kuberde/ca.crt"


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("2.5", 2.5), ("30", 30.0)])
def test_shutdown_grace(value: str, seconds: float) -> None:
    assert from_env(env(SHUTDOWN_GRACE=value)).shutdown_grace == seconds


@pytest.mark.parametrize("value", ["-1", "ten", "10s", "nan", "inf"])
def test_bad_shutdown_grace(value: str) -> None:
    with pytest.raises(ConfigError, match="SHUTDOWN_GRACE"):
        from_env(env(SHUTDOWN_GRACE=value))


def test_from_env_reads_only_the_mapping_given() -> None:
    config = from_env(env())
    assert isinstance(config, AgentConfig)
    assert config == from_env(env())
