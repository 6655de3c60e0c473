"""The SSH identity and known hosts KubeRDE keeps for a user, next to the CLI config.

A user with a key of their own (`~/.ssh/id_ed25519`, ...) logs in with it. A user with none
gets a platform-managed key, `<config dir>/ssh/id_ed25519`, made on first use, so that SSH
works on a fresh account without anyone running ssh-keygen. Workspaces whose host key
KubeRDE knows (the demo of `kuberde up`) are listed in `<config dir>/ssh/known_hosts` under
their alias `NAME.kuberde`, one line each, replaced when the key changes; ssh reads that file
after the user's own, so host keys stay checked.

`with_host_key` and `aliases` are pure; the rest are thin file adapters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from kuberde.cli.config import config_path
from kuberde.files import write_private

__all__ = [
    "USER_KEY_NAMES",
    "aliases",
    "identities",
    "known_hosts_file",
    "listed_aliases",
    "logins",
    "managed_key",
    "public_keys",
    "record_host_key",
    "record_login",
    "ssh_directory",
    "user_keys",
    "with_host_key",
]

#: The private keys OpenSSH tries by default, in its order.
USER_KEY_NAMES = ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk")


def ssh_directory(config_file: Path | None = None) -> Path:
    return (config_path() if config_file is None else config_file).parent / "ssh"


def known_hosts_file(config_file: Path | None = None) -> Path:
    return ssh_directory(config_file) / "known_hosts"


def user_keys(home: Path | None = None) -> list[Path]:
    """The user's own default private keys that have their public half beside them."""
    directory = (Path.home() if home is None else home) / ".ssh"
    return [
        directory / name
        for name in USER_KEY_NAMES
        if (directory / name).is_file() and (directory / f"{name}.pub").is_file()
    ]


class ManagedKeyError(Exception):
    """The managed key is missing and cannot be made; the message says what to install."""


def managed_key(config_file: Path | None = None, *, create: bool = True) -> Path:
    """The platform-managed key, created (ed25519, no passphrase, 0600) if missing."""
    path = ssh_directory(config_file) / "id_ed25519"
    if create:
        import subprocess

        from kuberde.local.sshd import keygen

        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            keygen(path, "kuberde-managed")
        except FileNotFoundError:
            raise ManagedKeyError(
                "ssh-keygen not found: install the OpenSSH client (apt-get install openssh-client)"
            ) from None
        except (OSError, subprocess.SubprocessError) as exc:
            raise ManagedKeyError(f"cannot make the SSH key {path}: {exc}") from None
    return path


def identities(
    home: Path | None = None, config_file: Path | None = None, *, create: bool = True
) -> list[Path]:
    """The keys ssh should offer: the user's own, else the managed one (made now if asked)."""
    return user_keys(home) or [managed_key(config_file, create=create)]


def public_keys(home: Path | None = None, config_file: Path | None = None) -> list[Path]:
    """Public halves a workspace should trust for this user (see `identities`)."""
    return [key.with_name(key.name + ".pub") for key in identities(home, config_file)]


def with_host_key(known_hosts: str, alias: str, key: str) -> str:
    """`known_hosts` with `alias` trusting exactly `key` (`TYPE BASE64`): other lines kept."""
    kept = [
        line
        for line in known_hosts.splitlines()
        if not line.split() or line.split()[0].split(",") != [alias]
    ]
    return "".join(f"{line}\n" for line in [*kept, f"{alias} {key}"])


def aliases(known_hosts: str) -> list[str]:
    """The plain host names a known_hosts text lists, in order."""
    found: list[str] = []
    for line in known_hosts.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith(("#", "|", "@")):
            found += [name for name in fields[0].split(",") if name not in found]
    return found


def record_host_key(alias: str, key: str, config_file: Path | None = None) -> Path:
    """Trust `key` for `alias` in the managed known_hosts (replacing an older key)."""
    path = known_hosts_file(config_file)
    try:
        existing = path.read_text(errors="replace")
    except FileNotFoundError:
        existing = ""
    write_private(path, with_host_key(existing, alias, key).encode())
    return path


def _logins_file(config_file: Path | None) -> Path:
    return ssh_directory(config_file) / "logins.json"


def logins(config_file: Path | None = None) -> Mapping[str, str]:
    """The user to log in as for aliases whose sshd runs as an account of its own (the demo
    under a root `kuberde up`); empty if unknown."""
    try:
        stored = json.loads(_logins_file(config_file).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(stored, dict):
        return {}
    return {k: v for k, v in stored.items() if isinstance(k, str) and isinstance(v, str)}


def record_login(alias: str, user: str, config_file: Path | None = None) -> None:
    write_private(
        _logins_file(config_file),
        json.dumps({**logins(config_file), alias: user}, sort_keys=True).encode(),
    )


def listed_aliases(config_file: Path | None = None) -> Sequence[str]:
    try:
        return aliases(known_hosts_file(config_file).read_text(errors="replace"))
    except OSError:
        return []
