"""The OS accounts local workloads run as: one unprivileged account per owner.

When `kuberde up` runs as root, nothing of a workspace runs with its privileges: each owner's
workloads and agents run as `kuberde-<owner>` (created with `useradd` on first use, with a
0700 home under the homes directory), or as the existing account the users file maps the
owner to (`account: alice`). Without root there is only one account to run as, the one
`kuberde up` runs as, which is why only that user and admins may define workloads then.

Processes start from `clean_environment`, never from the gateway's own environment.
"""

from __future__ import annotations

import functools
import grp
import hashlib
import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kuberde.naming import MAX_OS_USER_LENGTH

__all__ = [
    "ACCOUNT_PREFIX",
    "DEFAULT_HOMES_DIR",
    "Account",
    "AccountError",
    "Accounts",
    "account_name",
    "clean_environment",
    "owner_name",
    "run_as_argv",
    "terminal_group",
]

log = logging.getLogger(__name__)

ACCOUNT_PREFIX = "kuberde-"
DEFAULT_HOMES_DIR = Path("/home")
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Taken from our environment when set: they describe the terminal and locale, not secrets.
_INHERITED = ("PATH", "LANG", "TZ", "TERM")
_SHELLS = ("/bin/bash", "/bin/sh")


class AccountError(Exception):
    """A workspace's account cannot be found or created; the workspace goes to Error."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: Path
    shell: str

    @property
    def is_root(self) -> bool:
        return self.uid == 0


def owner_name(os_user: str) -> str:
    """An OS user name as an owner name (a lower-case DNS label of at most 30 characters)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", os_user.lower()).strip("-")
    return cleaned[:30] or "user"


def account_name(owner: str) -> str:
    """`kuberde-<owner>`, shortened with a hash when longer than a user name may be."""
    name = ACCOUNT_PREFIX + owner
    if len(name) <= MAX_OS_USER_LENGTH:
        return name
    digest = hashlib.sha256(owner.encode()).hexdigest()[:8]
    keep = MAX_OS_USER_LENGTH - len(ACCOUNT_PREFIX) - len(digest) - 1
    return f"{ACCOUNT_PREFIX}{owner[:keep].rstrip('-')}-{digest}"


def clean_environment(
    account: Account, inherited: Mapping[str, str], *layers: Mapping[str, str]
) -> dict[str, str]:
    """A process's whole environment: an allow-list, then `layers` in order (later wins).

    From `inherited` only PATH, LANG, LC_*, TZ and TERM are kept; HOME, USER, LOGNAME and
    SHELL describe `account`. Nothing else of the caller's environment gets through.
    """
    env = {"PATH": _DEFAULT_PATH}
    env |= {
        key: value
        for key, value in inherited.items()
        if key in _INHERITED or (key.startswith("LC_") and key[3:].isupper())
    }
    env |= {
        "HOME": str(account.home),
        "USER": account.name,
        "LOGNAME": account.name,
        "SHELL": account.shell,
    }
    for layer in layers:
        env |= layer
    return env


def run_as_argv(account: Account, argv: list[str], *, terminal_group: int | None) -> list[str]:
    """`argv` run as `account` (with its groups) by util-linux's setpriv, which then execs.

    `terminal_group` (see `terminal_group`) is added to the account's groups when given.
    """
    if terminal_group is None:
        groups = "--init-groups"
    else:
        member_of = {*os.getgrouplist(account.name, account.gid), terminal_group}
        groups = "--groups=" + ",".join(str(gid) for gid in sorted(member_of))
    return ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", groups, "--", *argv]


@functools.cache
def terminal_group() -> int | None:
    """The `tty` group, when new terminals are not created in it; None when they are.

    An sshd running as an unprivileged account (every workspace's, under a root `kuberde up`)
    hands each session's pty to group `tty`, and a failed chown ends the session. Where devpts
    is mounted with `gid=5` (most hosts) the pty is in that group already; where it is not (many
    containers), the chown is only allowed to a member of the group. Such a mount also gives
    terminals mode 0600, so membership lets no one write to anyone else's terminal there.
    """
    try:
        tty = grp.getgrnam("tty").gr_gid
    except KeyError:
        return None
    try:
        primary, terminal = os.openpty()
    except OSError:
        return None
    try:
        created_in = os.fstat(terminal).st_gid
    finally:
        os.close(primary)
        os.close(terminal)
    return None if created_in == tty else tty


def _from_passwd(entry: pwd.struct_passwd, home: Path | None = None) -> Account:
    shell = entry.pw_shell if entry.pw_shell and os.path.isabs(entry.pw_shell) else "/bin/sh"
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, home or Path(entry.pw_dir), shell)


def _lookup(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _run_shadow_tool(tool: str, args: list[str], doing: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is None:
        raise AccountError(f"cannot {doing}: {tool} is not installed")
    return subprocess.run([found, *args], capture_output=True, text=True, timeout=60, check=False)


def _useradd(name: str, home: Path) -> None:
    shell = next((path for path in _SHELLS if os.access(path, os.X_OK)), "/bin/sh")
    result = _run_shadow_tool(
        "useradd",
        [
            *("--system", "--user-group", "--no-create-home", "--home-dir", str(home)),
            *("--shell", shell, "--comment", "KubeRDE workspace", name),
        ],
        f"create OS account {name!r}",
    )
    # Another kuberde up may have created it meanwhile; the lookup after us decides.
    if result.returncode != 0 and _lookup(name) is None:
        raise AccountError(f"cannot create OS account {name!r}: {result.stderr.strip()}")
    log.info("created OS account %s for workspaces, home %s", name, home)


def _move_home(name: str, old: str, home: Path) -> None:
    """Point our account's passwd entry at `home`: a `kuberde up` with another homes
    directory made it, and sshd starts each session in the passwd home. Failing that (the
    account is busy: usermod refuses while its processes run) sessions start in `/`, which
    is worth a warning, not a workspace in Error."""
    result = _run_shadow_tool("usermod", ["--home", str(home), name], f"set the home of {name!r}")
    if result.returncode == 0:
        log.info("OS account %s: home %s (was %s)", name, home, old)
    else:
        log.warning(
            "OS account %s keeps home %s, not %s (ssh sessions will not start in it): %s",
            name,
            old,
            home,
            result.stderr.strip(),
        )


def _check_home(account: Account) -> os.stat_result:
    """The home's status; AccountError unless it is a directory of the account's own."""
    try:
        info = account.home.lstat()
    except OSError as exc:
        raise AccountError(f"home {account.home} of {account.name}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise AccountError(f"home {account.home} of {account.name} is not a directory")
    if info.st_uid != account.uid:
        raise AccountError(
            f"home {account.home} of {account.name} belongs to uid {info.st_uid}, not {account.uid}"
        )
    return info


def _ensure_home(account: Account) -> None:
    """A created account's home: made 0700 on first use, and kept 0700."""
    try:
        account.home.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise AccountError(f"cannot create home {account.home}: {exc.strerror}") from None
    else:
        os.chown(account.home, account.uid, account.gid)
    if _check_home(account).st_mode & 0o077:
        account.home.chmod(0o700)


class Accounts:
    """Which account each owner's processes run as, resolved (and created) on first use.

    `isolated` is whether we run as root and so give owners accounts of their own; otherwise
    every owner runs as `current`. `mapped` names the existing account the users file gives
    an owner, if any.
    """

    def __init__(
        self,
        *,
        isolated: bool,
        homes_dir: Path,
        current: Account,
        mapped: Callable[[str], str | None] = lambda owner: None,
    ) -> None:
        self.isolated = isolated
        self.homes_dir = homes_dir
        self.current = current
        #: The owner `kuberde up` signs its own user in as.
        self.machine_owner = owner_name(current.name)
        self._mapped = mapped

    @classmethod
    def for_this_process(
        cls, homes_dir: Path, mapped: Callable[[str], str | None] = lambda owner: None
    ) -> Accounts:
        entry = pwd.getpwuid(os.geteuid())
        home = os.environ.get("HOME")
        current = _from_passwd(entry, Path(home) if home and os.path.isabs(home) else None)
        return cls(isolated=entry.pw_uid == 0, homes_dir=homes_dir, current=current, mapped=mapped)

    def login_for(self, owner: str) -> str | None:
        """The name of the account `owner`'s processes run as, without creating it; None if
        the users file cannot say."""
        if not self.isolated:
            return self.current.name
        try:
            return self._mapped(owner) or account_name(owner)
        except AccountError:
            return None

    def for_owner(self, owner: str) -> Account:
        """The account `owner`'s processes run as, with its home ready; AccountError if none."""
        if not self.isolated:
            return self.current
        wanted = self._mapped(owner)
        if wanted is not None:
            entry = _lookup(wanted)
            if entry is None:
                raise AccountError(f"the users file maps {owner!r} to {wanted!r}: no such account")
            if entry.pw_uid == 0:
                raise AccountError(f"the users file maps {owner!r} to {wanted!r}, which is root")
            # Someone's existing account: its home is theirs to set up, we only check it.
            account = _from_passwd(entry)
            _check_home(account)
            return account
        name = account_name(owner)
        home = self.homes_dir / name
        if _lookup(name) is None:
            self.homes_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            _useradd(name, home)
        entry = _lookup(name)
        if entry is None:
            raise AccountError(f"OS account {name!r} vanished after it was created")
        if entry.pw_uid == 0:
            raise AccountError(f"OS account {name!r} is root; refusing to run workloads as it")
        if Path(entry.pw_dir) != home:
            _move_home(name, entry.pw_dir, home)
        account = _from_passwd(entry, home)
        _ensure_home(account)
        return account
