"""The managed ~/.ssh/config block, merging it into existing files, and `kuberde ssh`'s argv."""

from __future__ import annotations

import os
import stat

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from kuberde.cli.commands import register
from kuberde.cli.config import ClientSettings
from kuberde.cli.sshconfig import (
    BEGIN_MARKER,
    END_MARKER,
    SshConfigError,
    merge_config,
    proxy_command,
    render_block,
    ssh_argv,
    ssh_environment,
    strip_host_suffix,
)
from kuberde.cli.sshkeys import record_host_key

KUBERDE = ["/usr/local/bin/kuberde"]
BLOCK = render_block(KUBERDE)
OTHER_BLOCK = render_block(["/opt/other/kuberde"])


def test_render_block():
    assert BLOCK == (
        "# --- BEGIN KUBERDE (managed) ---\n"
        "# Written by `kuberde config-ssh`; changes inside this block are replaced.\n"
        "Host *.kuberde\n"
        "    ProxyCommand /usr/local/bin/kuberde connect %n --port %p --kind ssh\n"
        "# --- END KUBERDE ---\n"
    )


def test_render_block_never_disables_host_key_checking():
    assert "StrictHostKeyChecking" not in BLOCK
    assert "UserKnownHostsFile" not in BLOCK


def test_render_block_names_identity_known_hosts_and_an_alias_per_workspace():
    block = render_block(
        KUBERDE,
        identities=["/h/.ssh/id_rsa", "/h/my keys/id_ed25519"],
        known_hosts="/h/.config/kuberde/ssh/known_hosts",
        hosts=["demo.kuberde", "dev.kuberde", "[127.0.0.1]:2022", "bad host.kuberde"],
        logins={"demo.kuberde": "kuberde-root", "dev.kuberde": "not a user"},
    )
    assert block.splitlines()[2:-1] == [
        "Host demo.kuberde",
        "    HostKeyAlias demo.kuberde",
        "    User kuberde-root",
        "Host dev.kuberde",
        "    HostKeyAlias dev.kuberde",
        "Host *.kuberde",
        "    ProxyCommand /usr/local/bin/kuberde connect %n --port %p --kind ssh",
        "    UserKnownHostsFile ~/.ssh/known_hosts ~/.ssh/known_hosts2"
        " /h/.config/kuberde/ssh/known_hosts",
        "    IdentityFile /h/.ssh/id_rsa",
        '    IdentityFile "/h/my keys/id_ed25519"',
    ]
    assert "StrictHostKeyChecking" not in block


def test_render_block_quotes_paths_for_the_shell_and_escapes_ssh_tokens():
    block = render_block(["/home/a b/venv 100%/bin/python", "-m", "kuberde"])
    line = (
        "ProxyCommand '/home/a b/venv 100%%/bin/python' -m kuberde connect %n --port %p --kind ssh"
    )
    assert f"    {line}\n" in block


def test_proxy_command_options():
    assert proxy_command(KUBERDE, "dev", "8888", kind="tcp") == (
        "/usr/local/bin/kuberde connect dev --port 8888 --kind tcp"
    )


def test_strip_host_suffix():
    assert strip_host_suffix("dev.kuberde") == "dev"
    assert strip_host_suffix("user-alice-dev.kuberde") == "user-alice-dev"
    assert strip_host_suffix("dev") == "dev"
    assert strip_host_suffix("kuberde") == "kuberde"


# ---- merge_config ----------------------------------------------------------------------------


def test_merge_into_nothing():
    assert merge_config("", BLOCK) == BLOCK


def test_merge_appends_after_a_blank_line_and_keeps_the_rest():
    existing = "Host work\n    User me\n"
    assert merge_config(existing, BLOCK) == existing + "\n" + BLOCK


def test_merge_completes_a_missing_final_newline():
    assert merge_config("Host x", BLOCK) == "Host x\n\n" + BLOCK


def test_merge_does_not_add_a_second_blank_line():
    assert merge_config("Host x\n\n", BLOCK) == "Host x\n\n" + BLOCK


def test_merge_replaces_the_existing_block_in_place():
    before = "Host a\n    User x\n\n"
    after = "\nHost b\r\n    Port 2222\r\n"
    existing = before + OTHER_BLOCK + after
    assert merge_config(existing, BLOCK) == before + BLOCK + after


def test_merge_replaces_a_block_whose_end_marker_has_no_newline():
    existing = "Host a\n\n" + OTHER_BLOCK.rstrip("\n")
    assert merge_config(existing, BLOCK) == "Host a\n\n" + BLOCK


def test_merge_accepts_indented_or_crlf_markers():
    existing = f"x\n  {BEGIN_MARKER}\r\nold\r\n{END_MARKER}  \r\ny\n"
    assert merge_config(existing, BLOCK) == "x\n" + BLOCK + "y\n"


def test_merge_is_idempotent_for_every_starting_point():
    for existing in ["", "Host x", "Host x\n", "Host x\n\n", "a\n" + OTHER_BLOCK + "b\n"]:
        once = merge_config(existing, BLOCK)
        assert merge_config(once, BLOCK) == once


@pytest.mark.parametrize(
    "existing",
    [
        f"{BEGIN_MARKER}\nHost *.kuberde\n",
        f"Host *.kuberde\n{END_MARKER}\n",
        f"{END_MARKER}\n{BEGIN_MARKER}\n",
        f"{BEGIN_MARKER}\n{END_MARKER}\n{BEGIN_MARKER}\n{END_MARKER}\n",
    ],
)
def test_merge_refuses_a_damaged_block(existing):
    with pytest.raises(SshConfigError, match="remove the damaged KubeRDE block"):
        merge_config(existing, BLOCK)


_pieces = st.sampled_from(["Host a\n", "  User b\n", "\n", "\r\n", "#x", "é", " ", "\t"])
_text = st.lists(_pieces, max_size=12).map("".join)


@given(before=_text, after=_text)
def test_merge_keeps_everything_outside_the_block(before, after):
    merged = merge_config(before, BLOCK)
    assert merged.startswith(before)
    assert merged.endswith(BLOCK)
    assert merge_config(merged, BLOCK) == merged
    prefix = before if not before or before.endswith("\n") else before + "\n"
    around = prefix + OTHER_BLOCK + after
    assert merge_config(around, BLOCK) == prefix + BLOCK + after


# ---- kuberde ssh ----------------------------------------------------------------------------


def test_ssh_argv():
    assert ssh_argv(KUBERDE, "dev") == [
        "ssh",
        "-o",
        "ProxyCommand=/usr/local/bin/kuberde connect dev --port 22 --kind ssh",
        "-o",
        "HostKeyAlias=dev.kuberde",
        "dev.kuberde",
    ]


def test_ssh_argv_with_user_port_and_extra_arguments():
    argv = ssh_argv(KUBERDE, "dev", user="bob", port=2222, extra=["-L", "8080:localhost:80"])
    assert argv == [
        "ssh",
        "-o",
        "ProxyCommand=/usr/local/bin/kuberde connect dev --port 2222 --kind ssh",
        "-o",
        "HostKeyAlias=dev.kuberde",
        "bob@dev.kuberde",
        "-L",
        "8080:localhost:80",
    ]


def test_ssh_argv_with_generated_host_key_and_identity():
    argv = ssh_argv(
        KUBERDE, "demo", known_hosts="/state/demo 1/known_hosts", identity_file="/s/100%/id"
    )
    assert argv[5:] == [
        "-o",
        'UserKnownHostsFile=~/.ssh/known_hosts ~/.ssh/known_hosts2 "/state/demo 1/known_hosts"',
        "-o",
        "IdentityFile=/s/100%%/id",
        "demo.kuberde",
    ]


def test_ssh_environment_carries_the_token_instead_of_the_command_line():
    settings = ClientSettings("http://gw:8080", "secret-token", "/ca.pem")
    env = ssh_environment(settings, {"PATH": "/bin", "KUBERDE_TOKEN": "old"})
    assert env == {
        "PATH": "/bin",
        "KUBERDE_SERVER": "http://gw:8080",
        "KUBERDE_TOKEN": "secret-token",
        "KUBERDE_CA_FILE": "/ca.pem",
    }
    assert not any("secret-token" in arg for arg in ssh_argv(KUBERDE, "dev"))


# ---- kuberde config-ssh ------------------------------------------------------------------------


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KUBERDE_CONFIG", str(tmp_path / "cli" / "config.json"))
    application = typer.Typer()
    register(application)
    return application


def test_config_ssh_prints_the_block(app, tmp_path):
    result = CliRunner().invoke(app, ["config-ssh", "--ssh-config", str(tmp_path / "config")])
    assert result.exit_code == 0
    assert result.stdout.startswith(BEGIN_MARKER + "\n")
    assert "    ProxyCommand " in result.stdout
    assert not (tmp_path / "config").exists()


def test_config_ssh_write_creates_a_private_file(app, tmp_path):
    path = tmp_path / "dot-ssh" / "config"
    result = CliRunner().invoke(app, ["config-ssh", "--write", "--ssh-config", str(path)])
    assert result.exit_code == 0, result.output
    assert path.read_text().startswith(BEGIN_MARKER)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not (path.parent / "config.bak").exists()


def test_config_ssh_write_names_the_managed_key_and_the_known_workspaces(app, tmp_path):
    record_host_key("demo.kuberde", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake")
    path = tmp_path / "config"
    result = CliRunner().invoke(app, ["config-ssh", "--write", "--ssh-config", str(path)])
    assert result.exit_code == 0, result.output
    text = path.read_text()
    managed = tmp_path / "cli" / "ssh" / "id_ed25519"
    assert f"    IdentityFile {managed}\n" in text
    assert managed.is_file() and stat.S_IMODE(managed.stat().st_mode) == 0o600
    assert f" {tmp_path / 'cli' / 'ssh' / 'known_hosts'}\n" in text
    assert "Host demo.kuberde\n    HostKeyAlias demo.kuberde\n" in text


def test_config_ssh_prefers_the_users_own_keys_and_creates_nothing_to_print(app, tmp_path):
    own = tmp_path / "home" / ".ssh" / "id_ed25519"
    own.parent.mkdir(parents=True)
    own.write_text("private")
    own.with_suffix(".pub").write_text("ssh-ed25519 AAAA me")
    result = CliRunner().invoke(app, ["config-ssh"])
    assert result.exit_code == 0, result.output
    assert f"    IdentityFile {own}\n" in result.stdout
    assert not (tmp_path / "cli").exists()


def test_config_ssh_write_keeps_other_bytes_and_backs_up(app, tmp_path):
    path = tmp_path / "config"
    original = b"Host work\r\n    User \xff\xfe\r\n"
    path.write_bytes(original)
    path.chmod(0o644)
    runner = CliRunner()
    result = runner.invoke(app, ["config-ssh", "--write", "--ssh-config", str(path)])
    assert result.exit_code == 0, result.output
    written = path.read_bytes()
    assert written.startswith(original + b"\n" + BEGIN_MARKER.encode())
    assert (tmp_path / "config.bak").read_bytes() == original
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "config.bak").stat().st_mode) == 0o600

    result = runner.invoke(app, ["config-ssh", "--write", "--ssh-config", str(path)])
    assert result.exit_code == 0
    assert "up to date" in result.output
    assert path.read_bytes() == written
    assert (tmp_path / "config.bak").read_bytes() == original


def test_config_ssh_write_follows_a_symlink(app, tmp_path):
    real = tmp_path / "dotfiles" / "ssh_config"
    real.parent.mkdir()
    real.write_text("Host a\n")
    link = tmp_path / "config"
    os.symlink(real, link)
    result = CliRunner().invoke(app, ["config-ssh", "--write", "--ssh-config", str(link)])
    assert result.exit_code == 0, result.output
    assert link.is_symlink()
    assert BEGIN_MARKER in real.read_text()


def test_config_ssh_write_refuses_a_damaged_block(app, tmp_path):
    path = tmp_path / "config"
    path.write_text(f"{BEGIN_MARKER}\nHost a\n")
    result = CliRunner().invoke(app, ["config-ssh", "--write", "--ssh-config", str(path)])
    assert result.exit_code == 1
    assert "damaged" in result.output
    assert path.read_text() == f"{BEGIN_MARKER}\nHost a\n"
