"""Owners' network namespaces under a root `kuberde up`: each owner's 127.0.0.1 is theirs.

Accounts keep owners' files apart, but every process on the host's loopback can connect to
every other's ports (a token-less Jupyter is code execution as its owner). So as root each
owner's agent and workloads run in a network namespace of that owner's (`ip netns add
kuberde-TAG-OWNER`, loopback up), entered with `nsenter --net`; a workspace's `localTarget`
and app ports then resolve inside it. TAG names this installation (its state directory), so
several `kuberde up` on one machine never touch each other's namespaces, and a crashed run's
leftovers are removed at the next start.

- The agent reaches the gateway through a Unix socket of its owner's
  (`/run/kuberde/TAG/OWNER.sock`, mode 0600 and the owner's, in root-owned 0711
  directories): a socket file works across network namespaces. The agent's identity still
  comes from its credential alone.
- Outbound traffic (pip, git) goes through slirp4netns, when installed: user-mode networking
  with `--disable-host-loopback`, so the host's loopback (the gateway, other owners' agents)
  stays out of reach. Without it workloads get loopback only, which `kuberde up` says once.
  Where the host's resolver listens on its own loopback (systemd-resolved's 127.0.0.53),
  that address is the namespace's empty loopback inside it, so the namespace gets a
  resolv.conf naming slirp4netns's DNS forwarder instead, in iproute2's place for it
  (`/etc/netns/NAME/resolv.conf`, which `ip netns exec` shows too).
- Where namespaces cannot be made (not root, or a container without CAP_SYS_ADMIN) every
  workload shares the host's network, which `kuberde up` also says once; never silently.

An owner's namespace lives from the first start of one of their workspaces until the last
of them is deleted or `kuberde up` exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from kuberde.aio import KeyedLocks
from kuberde.local.accounts import Account
from kuberde.local.supervisor import ProcessSpec, SupervisedProcess

__all__ = [
    "NETNS_DIR",
    "NETNS_ETC_DIR",
    "SOCKETS_DIR",
    "NetworkError",
    "OwnerNetwork",
    "OwnerNetworks",
    "installation_tag",
    "is_ours",
    "netns_name",
    "remove_leftovers",
    "slirp_argv",
    "workload_resolv_conf",
]

log = logging.getLogger(__name__)

#: Where `ip netns` keeps its named namespaces.
NETNS_DIR = Path("/run/netns")
#: iproute2's per-namespace /etc: NETNS_ETC_DIR/NAME/resolv.conf is NAME's resolv.conf.
NETNS_ETC_DIR = Path("/etc/netns")
HOST_RESOLV_CONF = Path("/etc/resolv.conf")
#: slirp4netns's DNS forwarder, inside the namespace.
SLIRP_DNS = "10.0.2.3"
#: The gateway's per-owner Unix sockets live in SOCKETS_DIR/TAG.
SOCKETS_DIR = Path("/run/kuberde")
_PREFIX = "kuberde-"
#: Namespaces are made and removed by iproute2 and entered with util-linux's nsenter.
_TOOLS_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"
_COMMAND_TIMEOUT = 30.0
#: How long a new namespace waits for slirp4netns to configure its interface.
SLIRP_READY_TIMEOUT = 10.0

#: Serves the gateway's agent endpoint on a listening socket; returns what stops that.
Serve = Callable[[socket.socket], Awaitable[Callable[[], Awaitable[None]]]]


class NetworkError(Exception):
    """An owner's network namespace cannot be set up; their workspace goes to Error."""


@dataclass(frozen=True)
class OwnerNetwork:
    """Where an owner's processes run, and how their agent reaches the gateway."""

    #: The namespace to enter; None for the host's network.
    netns: Path | None
    #: The agent's SERVER_URL.
    gateway_url: str
    #: What its processes see as /etc/resolv.conf; None for the host's.
    resolv_conf: Path | None = None


def installation_tag(state_dir: Path) -> str:
    """Eight hex digits naming an installation by its state directory."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]


def netns_name(tag: str, owner: str) -> str:
    """`kuberde-TAG-OWNER`; owners are DNS labels, so no owner's name is another's prefix."""
    return f"{_PREFIX}{tag}-{owner}"


def is_ours(tag: str, name: str) -> bool:
    """Whether namespace `name` belongs to installation `tag`."""
    return name.startswith(f"{_PREFIX}{tag}-")


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.partition("%")[0]).is_loopback
    except ValueError:
        return False


def workload_resolv_conf(host: str) -> str | None:
    """The resolv.conf a namespace with slirp4netns needs, given the host's, or None when
    the host's works there as it is: when every nameserver is on the host's loopback (or none
    is named, which means 127.0.0.1), they become slirp4netns's forwarder, which asks the
    host's resolver on the workload's behalf. Search domains and options are kept."""
    lines = host.splitlines()
    servers = [
        words[1]
        for words in map(str.split, lines)
        if words[:1] == ["nameserver"] and len(words) > 1
    ]
    if not all(map(_is_loopback, servers)):
        return None
    kept = [line for line in lines if line.split()[:1] != ["nameserver"]]
    return "\n".join([*kept, f"nameserver {SLIRP_DNS}", ""])


def slirp_argv(slirp: str, netns: Path, exit_fd: int, ready_fd: int) -> list[str]:
    """slirp4netns for `netns`: outbound NAT, never to the host's loopback; it exits when
    `exit_fd`'s other end closes (also when we crash) and writes to `ready_fd` once
    configured. Not `--enable-sandbox`: its mount namespace unmounts the namespace's
    /run/netns entry wherever mounts are shared."""
    return [
        slirp,
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        "--enable-seccomp",
        f"--exit-fd={exit_fd}",
        f"--ready-fd={ready_fd}",
        "--netns-type=path",
        str(netns),
        "tap0",
    ]


def _run(*argv: str) -> str:
    """Run an administrative command to completion, for its output; NetworkError with its
    stderr if it fails."""
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"{argv[0]}: {exc}") from None
    if result.returncode != 0:
        detail = result.stderr.strip() or f"exit code {result.returncode}"
        raise NetworkError(f"{' '.join(argv[1:])}: {detail}")
    return result.stdout


def _private_directory(path: Path) -> None:
    """A root-owned 0711 directory (not a symlink): others may pass through, not list it."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o711)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0:
        raise NetworkError(f"{path} is not a directory of root's")
    path.chmod(0o711)


def remove_leftovers(tag: str, ip: str) -> None:
    """What a crashed run of installation `tag` left: its namespaces, the workloads and agents
    still in them (orphans that nothing supervises; an agent would dial the new socket of its
    owner), and its sockets. Its slirp4netns exited with it."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(NETNS_DIR):
            if is_ours(tag, name):
                pids = [int(pid) for pid in _run(ip, "netns", "pids", name).split()]
                log.info(
                    "removing network namespace %s left by a previous run, and the %d "
                    "process(es) still in it",
                    name,
                    len(pids),
                )
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                _run(ip, "netns", "delete", name)
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(NETNS_ETC_DIR):
            if is_ours(tag, name):
                shutil.rmtree(NETNS_ETC_DIR / name, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        for entry in (SOCKETS_DIR / tag).iterdir():
            entry.unlink()
        (SOCKETS_DIR / tag).rmdir()


def _write_resolv_conf(name: str) -> Path | None:
    """NAME's own resolv.conf, written if the host's does not work in the namespace."""
    try:
        text = workload_resolv_conf(HOST_RESOLV_CONF.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read %s (%s): workloads use it as it is", HOST_RESOLV_CONF, exc)
        return None
    if text is None:
        return None
    path = NETNS_ETC_DIR / name / "resolv.conf"
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.parent.chmod(0o755)
    path.write_text(text)
    path.chmod(0o644)
    log.info(
        "the host's resolver is on its loopback: %s's workloads ask slirp4netns's DNS "
        "forwarder (%s) instead",
        name,
        path,
    )
    return path


async def _readable(fd: int, seconds: float) -> bool:
    """Whether `fd` has something to read within `seconds`."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, readable)
    try:
        async with asyncio.timeout(seconds):
            await ready
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


@dataclass
class _Namespace:
    """One owner's live namespace and what serves it."""

    network: OwnerNetwork
    socket_path: Path
    stop_serving: Callable[[], Awaitable[None]]
    slirp: SupervisedProcess | None
    #: Our ends of slirp4netns's pipes, kept so a restarted slirp4netns gets them again.
    fds: tuple[int, ...]
    users: set[str] = field(default_factory=set)


class OwnerNetworks:
    """Each owner's network namespace, made on first use and removed with their last workspace.

    `ip` is None where namespaces are unavailable: then every owner gets the host's network
    and `host_gateway_url`. Build it with `prepare`, which cleans up and says what owners get.
    """

    def __init__(
        self,
        *,
        tag: str,
        host_gateway_url: str,
        serve: Serve,
        logs_dir: Path,
        ip: str | None,
        slirp: str | None,
        sockets_dir: Path,
    ) -> None:
        self._tag = tag
        self._host = OwnerNetwork(None, host_gateway_url)
        self._serve = serve
        self._logs_dir = logs_dir
        self._ip = ip
        self._slirp = slirp
        self._sockets_dir = sockets_dir
        self._owners: dict[str, _Namespace] = {}
        self._locks = KeyedLocks()

    @property
    def isolated(self) -> bool:
        """Whether owners get namespaces of their own."""
        return self._ip is not None

    @classmethod
    def prepare(
        cls,
        *,
        state_dir: Path,
        root: bool,
        host_gateway_url: str,
        serve: Serve,
        logs_dir: Path,
    ) -> OwnerNetworks:
        """Remove a previous run's namespaces and sockets, find out whether this machine
        lets us make namespaces, and say once what owners' workloads get."""
        tag = installation_tag(state_dir)
        sockets_dir = SOCKETS_DIR / tag
        ip = shutil.which("ip", path=_TOOLS_PATH) if root else None
        slirp = shutil.which("slirp4netns", path=_TOOLS_PATH)
        if not root:
            log.info(
                "not running as root: every workload runs as you, on this machine's network "
                "(there is no other owner to keep apart)"
            )
        else:
            try:
                if ip is None:
                    raise NetworkError("iproute2's ip is not installed")
                remove_leftovers(tag, ip)
                cls._probe(tag, ip)
                _private_directory(SOCKETS_DIR)
                _private_directory(sockets_dir)
            except NetworkError as exc:
                log.warning(
                    "cannot give owners network namespaces of their own (%s): every owner's "
                    "workloads share this machine's network, so one owner's workload can "
                    "connect to another's ports on 127.0.0.1",
                    exc,
                )
                ip = None
            else:
                if slirp is None:
                    log.warning(
                        "slirp4netns is not installed: workloads get a loopback network only, "
                        "with no outbound access (scripts/system-deps.sh installs it)"
                    )
                else:
                    log.info(
                        "each owner's workloads run in a network namespace of their own "
                        "(outbound through slirp4netns)"
                    )
        return cls(
            tag=tag,
            host_gateway_url=host_gateway_url,
            serve=serve,
            logs_dir=logs_dir,
            ip=ip,
            slirp=slirp,
            sockets_dir=sockets_dir,
        )

    @staticmethod
    def _probe(tag: str, ip: str | None) -> None:
        """Make and remove a namespace (`--` cannot start an owner's name)."""
        assert ip is not None
        if shutil.which("nsenter", path=_TOOLS_PATH) is None:
            raise NetworkError("util-linux's nsenter is not installed")
        probe = netns_name(tag, "-probe")
        _run(ip, "netns", "add", probe)
        _run(ip, "netns", "delete", probe)

    async def join(self, owner: str, workspace: str, account: Account) -> OwnerNetwork:
        """The network `workspace` of `owner` runs in, made now if it is the owner's first."""
        if self._ip is None:
            return self._host
        async with self._locks.hold(owner):
            namespace = self._owners.get(owner)
            if namespace is None:
                namespace = await self._create(self._ip, owner, account)
                self._owners[owner] = namespace
            namespace.users.add(workspace)
            return namespace.network

    async def leave(self, owner: str, workspace: str) -> None:
        """`workspace` is gone: remove the owner's namespace if it was their last."""
        async with self._locks.hold(owner):
            namespace = self._owners.get(owner)
            if namespace is None:
                return
            namespace.users.discard(workspace)
            if not namespace.users:
                del self._owners[owner]
                await self._remove(owner, namespace)

    async def close(self) -> None:
        """Remove every namespace (their processes are stopped by now)."""
        for owner in list(self._owners):
            async with self._locks.hold(owner):
                namespace = self._owners.pop(owner, None)
                if namespace is not None:
                    await self._remove(owner, namespace)
        if self._ip is not None:
            with contextlib.suppress(OSError):
                self._sockets_dir.rmdir()

    async def _create(self, ip: str, owner: str, account: Account) -> _Namespace:
        name = netns_name(self._tag, owner)
        path = NETNS_DIR / name
        await asyncio.to_thread(_run, ip, "netns", "add", name)
        try:
            await asyncio.to_thread(_run, ip, "-n", name, "link", "set", "lo", "up")
            socket_path, stop_serving = await self._listen(owner, account)
        except BaseException:
            await asyncio.to_thread(_run, ip, "netns", "delete", name)
            raise
        slirp, fds = await self._outbound(owner, path)
        resolv_conf = None if slirp is None else await asyncio.to_thread(_write_resolv_conf, name)
        log.info("network namespace %s for %s's workspaces", name, owner)
        return _Namespace(
            OwnerNetwork(path, f"ws+unix:{socket_path}", resolv_conf),
            socket_path,
            stop_serving,
            slirp,
            fds,
        )

    async def _listen(
        self, owner: str, account: Account
    ) -> tuple[Path, Callable[[], Awaitable[None]]]:
        """The gateway listening on the owner's socket, which only their account may use."""
        path = self._sockets_dir / f"{owner}.sock"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chown(path, account.uid, account.gid)
            path.chmod(0o600)
            sock.listen(1024)
            sock.setblocking(False)
            return path, await self._serve(sock)
        except OSError as exc:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise NetworkError(f"cannot listen on {path}: {exc.strerror or exc}") from None

    async def _outbound(
        self, owner: str, netns: Path
    ) -> tuple[SupervisedProcess | None, tuple[int, ...]]:
        """slirp4netns for the namespace, once its interface is up; loopback only without."""
        if self._slirp is None:
            return None, ()
        exit_read, exit_write = os.pipe()
        ready_read, ready_write = os.pipe()
        os.set_blocking(ready_read, False)
        process = SupervisedProcess(
            ProcessSpec(
                name=f"{owner}/network",
                argv=slirp_argv(self._slirp, netns, exit_read, ready_write),
                env={"PATH": _TOOLS_PATH},
                cwd="/",
                log_path=self._logs_dir / f"network-{owner}.log",
                pass_fds=(exit_read, ready_write),
            ),
            min_uptime=1.0,
        )
        process.start()
        if not await _readable(ready_read, SLIRP_READY_TIMEOUT):
            log.warning(
                "outbound network for %s's workspaces is not up after %gs: %s",
                owner,
                SLIRP_READY_TIMEOUT,
                process.failure or "slirp4netns did not report ready",
            )
        return process, (exit_read, exit_write, ready_read, ready_write)

    async def _remove(self, owner: str, namespace: _Namespace) -> None:
        if namespace.slirp is not None:
            await namespace.slirp.stop(grace=2.0)
        for fd in namespace.fds:
            os.close(fd)
        await namespace.stop_serving()
        with contextlib.suppress(FileNotFoundError):
            namespace.socket_path.unlink()
        assert self._ip is not None and namespace.network.netns is not None
        if namespace.network.resolv_conf is not None:
            shutil.rmtree(namespace.network.resolv_conf.parent, ignore_errors=True)
        try:
            await asyncio.to_thread(_run, self._ip, "netns", "delete", namespace.network.netns.name)
        except NetworkError as exc:
            log.warning("cannot remove %s's network namespace: %s", owner, exc)
        else:
            log.info("removed the network namespace of %s's workspaces", owner)
