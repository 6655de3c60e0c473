"""How KubeRDE plugs into OpenSSH: the managed `~/.ssh/config` block and `kuberde ssh`'s argv.

Host keys stay checked: `ssh dev.kuberde` looks the workspace's key up under `dev.kuberde`,
so every workspace has its own entry. Workspaces whose key KubeRDE knows are listed in the
CLI's own known_hosts (`kuberde.cli.sshkeys`), which the block names after the user's files,
and each gets `HostKeyAlias NAME.kuberde` (the option takes no `%` tokens) so that the
entry holds whatever port is used. The block names the user's SSH identity (their own
keys, else the managed one). The workspace port is ssh's own (`%p`, 22 unless `-p`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kuberde.cli.config import CA_FILE_ENV, SERVER_ENV, TOKEN_ENV, ClientSettings
from kuberde.naming import is_os_user_name

__all__ = [
    "BEGIN_MARKER",
    "DEFAULT_SSH_PORT",
    "END_MARKER",
    "HOST_SUFFIX",
    "SshConfigError",
    "known_hosts_option",
    "merge_config",
    "proxy_command",
    "render_block",
    "ssh_argv",
    "ssh_environment",
    "strip_host_suffix",
]

BEGIN_MARKER = "# --- BEGIN KUBERDE (managed) ---"
END_MARKER = "# --- END KUBERDE ---"
HOST_SUFFIX = ".kuberde"
DEFAULT_SSH_PORT = 22
#: OpenSSH's default UserKnownHostsFile; kept first so new host keys are still saved there.
_USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")


class SshConfigError(ValueError):
    """The existing ssh config has a damaged managed block; we will not guess."""


def strip_host_suffix(name: str) -> str:
    """`dev.kuberde` (ssh's `%n`) → `dev`."""
    return name.removesuffix(HOST_SUFFIX)


def _shell(words: Sequence[str]) -> str:
    """Shell-quoted words with `%` doubled: ssh expands `%` tokens in a ProxyCommand."""
    import shlex  # here, not at the top: `kuberde connect` imports this module

    return " ".join(shlex.quote(word) for word in words).replace("%", "%%")


def _option_value(value: str) -> str:
    """A path as an ssh option value: double-quoted if it has blanks, `%` doubled."""
    escaped = value.replace("%", "%%")
    return f'"{escaped}"' if any(c.isspace() for c in escaped) else escaped


def proxy_command(kuberde: Sequence[str], target: str, port: str, *, kind: str = "ssh") -> str:
    """`<kuberde> connect <target> --port <port> --kind K`; `target` and `port` are used
    verbatim so they may be ssh tokens such as `%n` and `%p` (quote them otherwise)."""
    return f"{_shell([*kuberde, 'connect'])} {target} --port {port} {_shell(['--kind', kind])}"


def known_hosts_option(known_hosts: str) -> str:
    """UserKnownHostsFile: the user's own files first (new keys are saved there), then ours."""
    return " ".join([*_USER_KNOWN_HOSTS, _option_value(known_hosts)])


def render_block(
    kuberde: Sequence[str],
    *,
    identities: Sequence[str] = (),
    known_hosts: str | None = None,
    hosts: Sequence[str] = (),
    logins: Mapping[str, str] | None = None,
) -> str:
    """The managed block: `ssh NAME.kuberde` goes through `kuberde connect`, offering
    `identities` and checking host keys against `known_hosts` too, where `hosts` are listed
    (logging in as their user in `logins`, if named there)."""
    lines = [
        BEGIN_MARKER,
        "# Written by `kuberde config-ssh`; changes inside this block are replaced.",
    ]
    for host in hosts:
        if host.endswith(HOST_SUFFIX) and all(c.isalnum() or c in "-." for c in host):
            lines += [f"Host {host}", f"    HostKeyAlias {host}"]
            user = (logins or {}).get(host)
            if user is not None and is_os_user_name(user):
                lines.append(f"    User {user}")
    lines += [f"Host *{HOST_SUFFIX}", f"    ProxyCommand {proxy_command(kuberde, '%n', '%p')}"]
    if known_hosts is not None:
        lines.append(f"    UserKnownHostsFile {known_hosts_option(known_hosts)}")
    lines += [f"    IdentityFile {_option_value(identity)}" for identity in identities]
    return "\n".join([*lines, END_MARKER, ""])


def merge_config(existing: str, block: str) -> str:
    """Replace the managed block in `existing`, or append it; every other byte is kept."""
    lines = existing.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.strip() == BEGIN_MARKER]
    ends = [i for i, line in enumerate(lines) if line.strip() == END_MARKER]
    if not begins and not ends:
        prefix = existing
        if prefix and not prefix.endswith("\n"):
            prefix += "\n"
        if prefix and not prefix.endswith("\n\n"):
            prefix += "\n"
        return prefix + block
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise SshConfigError(
            f"found {len(begins)} {BEGIN_MARKER!r} and {len(ends)} {END_MARKER!r} lines "
            "out of order; remove the damaged KubeRDE block by hand and run again"
        )
    return "".join(lines[: begins[0]]) + block + "".join(lines[ends[0] + 1 :])


def ssh_argv(
    kuberde: Sequence[str],
    agent: str,
    *,
    user: str | None = None,
    port: int = DEFAULT_SSH_PORT,
    extra: Sequence[str] = (),
    known_hosts: str | None = None,
    identity_file: str | None = None,
) -> list[str]:
    """`ssh` through `kuberde connect`.

    No `-l`: ssh's own default (ssh_config `User`, else the local user) applies unless the
    user names one. `known_hosts` is consulted after the user's own files (for a workspace
    whose host key KubeRDE knows, such as `kuberde up`'s demo); `identity_file` is for a
    user with no key of their own (any IdentityFile stops ssh trying its default files).
    """
    host = f"{agent}{HOST_SUFFIX}"
    command = proxy_command(kuberde, _shell([agent]), str(port))
    options = ["-o", f"ProxyCommand={command}", "-o", f"HostKeyAlias={host}"]
    if known_hosts is not None:
        options += ["-o", f"UserKnownHostsFile={known_hosts_option(known_hosts)}"]
    if identity_file is not None:
        options += ["-o", f"IdentityFile={_option_value(identity_file)}"]
    destination = f"{user}@{host}" if user else host
    return ["ssh", *options, destination, *extra]


def ssh_environment(settings: ClientSettings, base: Mapping[str, str]) -> dict[str, str]:
    """`base` plus the gateway settings for the ProxyCommand: in the environment rather than
    on its command line, which any local user can read with `ps`."""
    env = dict(base)
    env[SERVER_ENV] = settings.server
    env[TOKEN_ENV] = settings.token
    if settings.ca_file:
        env[CA_FILE_ENV] = settings.ca_file
    return env
