"""A private OpenSSH server for one user: host key, client key, authorized keys, config.

The demo workspace, the end-to-end tests and the benchmarks all run `sshd` this way, as one
(unprivileged) user on a loopback port, so the recipe lives in one place. That user is the
only one who may log in; root only if the server runs as root. The server's files belong to
its user, and StrictModes (on unless a caller's files live under a world-writable directory
such as /tmp) makes sshd check that they do.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kuberde.local.accounts import Account

__all__ = ["SshdFiles", "find_sshd", "keygen", "prepare_sshd"]

_SSHD_LOCATIONS = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")


@dataclass(frozen=True)
class SshdFiles:
    directory: Path
    port: int
    host_key: Path
    client_key: Path
    config: Path
    #: `sshd -D -e -f CONFIG`: foreground (so a supervisor can stop it), logging to stderr.
    argv: list[str]

    def host_public_key(self) -> str:
        """The server's host key as known_hosts wants it: `TYPE BASE64`."""
        return " ".join(self.host_key.with_suffix(".pub").read_text().split()[:2])

    def known_hosts_line(self, *aliases: str) -> str:
        """A known_hosts entry trusting this server's host key under `aliases`."""
        return f"{','.join(aliases)} {self.host_public_key()}\n"


def find_sshd() -> str | None:
    found = shutil.which("sshd")
    if found:
        return found
    return next((path for path in _SSHD_LOCATIONS if os.access(path, os.X_OK)), None)


def keygen(path: Path, comment: str) -> None:
    """Create an ed25519 key pair at `path` unless one is already there."""
    if not path.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True,
            timeout=30,
        )


def _give(path: Path, account: Account | None) -> None:
    if account is not None and os.geteuid() == 0:
        os.chown(path, account.uid, account.gid)


def prepare_sshd(
    directory: Path,
    port: int,
    *,
    account: Account | None = None,
    client_directory: Path | None = None,
    comment: str = "kuberde",
    extra_authorized_keys: Sequence[Path] = (),
    strict_modes: bool = True,
) -> SshdFiles:
    """Write a host key, authorized keys and an `sshd_config` for `account` (default: the
    current user, who runs the server) into `directory`, and the client key into
    `client_directory` (default: `directory`), which stays ours.

    sshd (an absolute path, as its re-exec requires) is looked up here; a missing sshd raises
    FileNotFoundError naming the package to install.
    """
    sshd = find_sshd()
    if sshd is None:
        raise FileNotFoundError("OpenSSH's sshd is not installed (apt-get install openssh-server)")
    user = account.name if account is not None else getpass.getuser()
    root_login = account.is_root if account is not None else os.geteuid() == 0
    clients = client_directory or directory
    for folder in (directory, clients):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    _give(directory, account)
    host_key = directory / "ssh_host_ed25519_key"
    client_key = clients / "id_ed25519"
    keygen(host_key, f"{comment}-host")
    keygen(client_key, comment)
    authorized = directory / "authorized_keys"
    keys = [*extra_authorized_keys, client_key.with_suffix(".pub")]
    authorized.write_text("".join(key.read_text() for key in keys))
    authorized.chmod(0o600)
    config = directory / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {authorized}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                f"StrictModes {'yes' if strict_modes else 'no'}",
                f"PermitRootLogin {'prohibit-password' if root_login else 'no'}",
                f"AllowUsers {user}",
                f"PidFile {directory / 'sshd.pid'}",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    for path in (host_key, host_key.with_suffix(".pub"), authorized, config):
        _give(path, account)
    if os.geteuid() == 0:
        # Privilege separation needs this directory; containers often lack it.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    argv = [sshd, "-D", "-e", "-f", str(config)]
    return SshdFiles(directory, port, host_key, client_key, config, argv)
