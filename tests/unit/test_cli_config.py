"""The CLI's pure pieces: settings precedence, the config file, the /connect URL, user-facing
messages, port specs and wake progress."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from kuberde.cli.config import (
    CliConfig,
    ClientSettings,
    ConfigError,
    config_path,
    connect_url,
    load,
    normalize_server,
    resolve,
    save,
)
from kuberde.cli.messages import close_message, refusal_message
from kuberde.cli.portforward import PortMapping, format_address, parse_port_mapping
from kuberde.cli.progress import WakeProgress
from kuberde.files import write_private


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return tmp_path / "kuberde" / "config.json"


def _write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


# ---- resolve: flag > environment > file ------------------------------------------------------

FILE = {"server": "http://file:8080", "token": "file-token", "ca_file": "/file/ca.pem"}
ENV = {
    "KUBERDE_SERVER": "http://env:8080",
    "KUBERDE_TOKEN": "env-token",
    "KUBERDE_CA_FILE": "/env/ca.pem",
}


def test_flags_win_over_environment_and_file(config_file):
    _write(config_file, FILE)
    settings = resolve(
        "http://flag:8080", "flag-token", ENV, ca_file_flag="/flag/ca.pem", path=config_file
    )
    assert settings == ClientSettings("http://flag:8080", "flag-token", "/flag/ca.pem")


def test_environment_wins_over_file(config_file):
    _write(config_file, FILE)
    assert resolve(None, None, ENV, path=config_file) == ClientSettings(
        "http://env:8080", "env-token", "/env/ca.pem"
    )


def test_file_is_the_fallback(config_file):
    _write(config_file, FILE)
    assert resolve(None, None, {}, path=config_file) == ClientSettings(
        "http://file:8080", "file-token", "/file/ca.pem"
    )


def test_each_setting_resolves_on_its_own(config_file):
    _write(config_file, FILE)
    settings = resolve(None, "flag-token", {"KUBERDE_CA_FILE": "/env/ca.pem"}, path=config_file)
    assert settings == ClientSettings("http://file:8080", "flag-token", "/env/ca.pem")


def test_file_token_is_used_for_the_same_server_written_differently(config_file):
    _write(config_file, FILE)
    settings = resolve("http://file:8080/", None, {}, path=config_file)
    assert settings.token == "file-token"


def test_file_token_is_never_sent_to_another_server(config_file):
    _write(config_file, FILE)
    with pytest.raises(ConfigError, match=r"no token for http://other:1: pass --token"):
        resolve("http://other:1", None, {}, path=config_file)
    with pytest.raises(ConfigError, match="no token"):
        resolve(None, None, {"KUBERDE_SERVER": "http://other:1"}, path=config_file)


def test_file_ca_belongs_to_the_file_server(config_file):
    _write(config_file, FILE)
    settings = resolve("https://other", "t", {}, path=config_file)
    assert settings.ca_file is None


def test_missing_server_has_a_clear_error(config_file):
    with pytest.raises(ConfigError) as info:
        resolve(None, "token", {}, path=config_file)
    assert str(info.value) == (
        "no server configured: pass --server, set KUBERDE_SERVER or run `kuberde up`"
    )


def test_missing_token_has_a_clear_error(config_file):
    with pytest.raises(ConfigError, match=r"no token for http://a:1: .*run `kuberde up`"):
        resolve("http://a:1", None, {}, path=config_file)


def test_empty_values_count_as_unset(config_file):
    _write(config_file, FILE)
    env = {"KUBERDE_SERVER": "", "KUBERDE_TOKEN": ""}
    assert resolve("", "", env, path=config_file).server == "http://file:8080"


def test_resolve_finds_the_file_through_the_environment(config_file):
    _write(config_file, FILE)
    settings = resolve(None, None, {"KUBERDE_CONFIG": str(config_file)})
    assert settings.token == "file-token"


def test_config_path_defaults(tmp_path):
    assert config_path({"KUBERDE_CONFIG": "/x/c.json"}) == Path("/x/c.json")
    assert config_path({"XDG_CONFIG_HOME": "/xdg"}) == Path("/xdg/kuberde/config.json")
    default = Path.home() / ".config" / "kuberde" / "config.json"
    assert config_path({}) == default


# ---- the file ---------------------------------------------------------------------------------


def test_missing_file_is_empty(config_file):
    assert load(config_file) == CliConfig()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"server": 3}', "'server' must be a string"),
        ('{"token": ["a"]}', "'token' must be a string"),
    ],
)
def test_malformed_file_is_reported(config_file, content, message):
    config_file.parent.mkdir(parents=True)
    config_file.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load(config_file)
    with pytest.raises(ConfigError, match=message):
        resolve("http://a:1", "t", {}, path=config_file)


def test_save_round_trip_keeps_unknown_keys(config_file):
    extra = {"refresh_token": "r", "issuer": "https://idp"}
    save(CliConfig("http://a:1/", "tok", None, extra), config_file)
    assert json.loads(config_file.read_text()) == {
        "server": "http://a:1",
        "token": "tok",
        "refresh_token": "r",
        "issuer": "https://idp",
    }
    assert load(config_file) == CliConfig("http://a:1", "tok", None, extra)


def test_save_creates_private_file_and_directory(config_file):
    save(CliConfig("http://a:1", "tok"), config_file)
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(config_file.parent.stat().st_mode) == 0o700


def test_save_tightens_an_existing_file_and_leaves_existing_directories(tmp_path):
    tmp_path.chmod(0o755)
    path = tmp_path / "config.json"
    path.write_text("{}")
    path.chmod(0o644)
    save(CliConfig("http://a:1", "tok"), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_save_defaults_to_the_environment_path(config_file, monkeypatch):
    monkeypatch.setenv("KUBERDE_CONFIG", str(config_file))
    assert save(CliConfig("http://a:1", "tok")) == config_file
    assert load(config_file).token == "tok"


def test_save_refuses_a_bad_server(config_file):
    with pytest.raises(ConfigError):
        save(CliConfig("ftp://a", "tok"), config_file)
    assert not config_file.exists()


def test_write_is_atomic_when_it_fails(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    path.write_bytes(b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_private(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["config.json"]  # no temporary file left behind


# ---- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "agent", "port", "kind", "url"),
    [
        ("http://127.0.0.1:8080", "dev", 22, "ssh", "ws://127.0.0.1:8080/connect/dev?port=22&kind=ssh"),
        ("https://gw.example", "dev", None, "tcp", "wss://gw.example/connect/dev?kind=tcp"),
        ("https://gw.example/kuberde/", "user-alice-dev", 8888, "port-forward",
         "wss://gw.example/kuberde/connect/user-alice-dev?port=8888&kind=port-forward"),
        ("ws://h:1", "a/b?c", 1, "tcp", "ws://h:1/connect/a%2Fb%3Fc?port=1&kind=tcp"),
        ("wss://[::1]:9443", "dev", 5432, "tcp", "wss://[::1]:9443/connect/dev?port=5432&kind=tcp"),
    ],
)  # fmt: skip
def test_connect_url(server, agent, port, kind, url):
    assert connect_url(server, agent, port, kind) == url


@pytest.mark.parametrize(
    "server",
    [
        "127.0.0.1:8080",
        "ftp://host",
        "http://",
        "http://user:secret@host",
        "http://host?token=x",
        "http://host#frag",
        "http://host:99999",
        "http://host:0",
    ],
)
def test_bad_servers_are_refused(server):
    with pytest.raises(ConfigError):
        normalize_server(server)


# ---- messages ---------------------------------------------------------------------------------


def test_refusal_messages():
    assert refusal_message(401, "token expired", "dev") == (
        "not authorized: token expired — run `kuberde login`"
    )
    assert (
        refusal_message(401, None, "dev") == "not authorized: token rejected — run `kuberde login`"
    )
    assert refusal_message(403, "user 'bob' does not own agent x", "x") == (
        "forbidden: user 'bob' does not own agent x"
    )
    assert refusal_message(404, None, "dev") == "no workspace named 'dev'; `kuberde ls` lists yours"
    assert refusal_message(400, "port '0' is not a TCP port", "dev") == (
        "bad request: port '0' is not a TCP port"
    )
    assert refusal_message(429, "user bob has 2 open connections", "dev") == (
        "user bob has 2 open connections"
    )
    assert refusal_message(502, None, "dev") == "the gateway answered HTTP 502"


@pytest.mark.parametrize(
    ("code", "reason", "message"),
    [
        (1000, None, None),
        (1000, "bye", None),
        (4404, None, "workspace dev went away"),
        (4404, "agent user-a-dev is not connected", "agent user-a-dev is not connected"),
        (4408, None, "workspace dev did not come online in time"),
        (4500, "port 5432 is not allowed", "connection reset: port 5432 is not allowed"),
        (4500, None, "the workspace reset the connection"),
        (4409, "workload exited: boom", "dev is unavailable: workload exited: boom"),
        (4409, None, "dev is unavailable: it cannot run"),
        (4503, None, "the gateway is shutting down"),
        (4401, None, "your sign-in is no longer valid — run `kuberde login`"),
        (4429, None, "over one of the gateway's stream limits"),
        (
            4429,
            "buffer limit: 256 MiB held for slow readers per user; read or close other "
            "connections first",
            "buffer limit: 256 MiB held for slow readers per user; read or close other "
            "connections first",
        ),
        (1006, None, "lost the connection to the gateway"),
        (None, None, "lost the connection to the gateway"),
        (4999, None, "the gateway closed the connection (code 4999)"),
    ],
)
def test_close_messages(code, reason, message):
    assert close_message(code, reason, "dev") == message


# ---- port specs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "mapping"),
    [("22", PortMapping(22, 22)), ("2022:22", PortMapping(2022, 22)), (":22", PortMapping(0, 22))],
)
def test_port_mappings(spec, mapping):
    assert parse_port_mapping(spec) == mapping


@pytest.mark.parametrize("spec", ["", "x", "0", "22:", "1:2:3", "70000", "-1:22", "22:0", " 22"])
def test_bad_port_mappings(spec):
    with pytest.raises(ValueError):
        parse_port_mapping(spec)


def test_format_address():
    assert format_address("127.0.0.1", 2022) == "127.0.0.1:2022"
    assert format_address("::1", 2022) == "[::1]:2022"


# ---- wake progress ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_on_a_terminal_overwrites_one_line():
    out = io.StringIO()
    clock = FakeClock()
    clock.now = 50.0
    progress = WakeProgress("demo", out, interactive=True, clock=clock)
    progress({"event": "waking", "elapsed_s": 0})
    progress({"event": "waking", "elapsed_s": 2.1})
    clock.now = 52.4
    progress({"event": "connected"})
    assert out.getvalue() == (
        "\r\x1b[Kwaking demo… 0.0s\r\x1b[Kwaking demo… 2.1s\r\x1b[Kdemo is up after 2.4s\n"
    )


def test_progress_in_a_log_prints_a_line_every_few_seconds():
    out = io.StringIO()
    clock = FakeClock()
    progress = WakeProgress("demo", out, interactive=False, interval=5.0, clock=clock)
    for second in range(12):
        clock.now = 100.0 + second
        progress({"event": "waking", "elapsed_s": float(second)})
    progress({"event": "connected"})
    assert out.getvalue().splitlines() == [
        "waking demo… 0.0s",
        "waking demo… 5.0s",
        "waking demo… 10.0s",
        "demo is up after 11.0s",
    ]


def test_progress_is_silent_without_a_wake_and_ends_its_line_before_errors():
    out = io.StringIO()
    progress = WakeProgress("demo", out, interactive=True)
    progress({"event": "connected"})
    progress({"event": "something-new"})
    progress.end_line()
    assert out.getvalue() == ""
    progress({"event": "waking", "elapsed_s": "garbage"})
    progress.end_line()
    progress.end_line()
    assert out.getvalue() == "\r\x1b[Kwaking demo… 0.0s\n"
