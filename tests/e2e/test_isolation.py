"""Owners stay apart under `kuberde up`: real accounts, real processes, the real CLI.

As root, each owner's workloads and agents run as an account of their own and start from a
clean environment; a workload that tries every way in (state directory, another owner's
home, any agent's credential) gets nowhere. Not as root, only the machine user and admins
define workloads. And a workspace's home keeps its files through every lifecycle step.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from kuberde.auth.users import USERS_FILE, set_user
from kuberde.local.accounts import Account, account_name
from kuberde.local.netns import NETNS_ETC_DIR, SLIRP_DNS, installation_tag, netns_name
from tests.e2e.up_fixtures import (
    ISOLATED,
    UP_PYTHON,
    WAIT,
    WORKLOAD_PYTHON,
    KubeRDE,
    descendants,
    echo_command,
    free_port,
    user_token,
    wait_until,
    workspace,
    write_documents,
)

CANARY = "KUBERDE_E2E_CANARY"
#: What a workload's environment may hold besides its spec's `env`.
ALLOWED = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TZ", "TERM", "KUBERDE_RUN"}

#: Tries each way at what a workload must not read, prints one line per attempt and its
#: environment as JSON, then stays up. argv: state dir, alice's home, the owners' uids.
_PROBE = r"""
import json, os, sys, time
state, alice_home, uids = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
def attempt(label, path):
    try:
        with open(path, "rb") as file:
            file.read()
        print("PROBE", label, "READ", path, flush=True)
    except OSError as exc:
        print("PROBE", label, "denied", type(exc).__name__, flush=True)
attempt("signing-key", os.path.join(state, "signing-key.pem"))
attempt("database", os.path.join(state, "state.db"))
attempt("users", os.path.join(state, "users.yaml"))
attempt("alice-log", os.path.join(state, "logs", "alice-ws.log"))
attempt("alice-home", os.path.join(alice_home, "secret"))
try:
    os.listdir(state)
    print("PROBE state-listing READ", flush=True)
except OSError as exc:
    print("PROBE state-listing denied", type(exc).__name__, flush=True)
def agents():
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                if b"\0-m\0kuberde.agent\0" not in file.read():
                    continue
            with open(f"/proc/{pid}/status") as file:
                uid = next(line.split()[1] for line in file if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if uid in uids:
            found.append(pid)
    return found
deadline = time.monotonic() + 20
while len(seen := agents()) < len(uids) and time.monotonic() < deadline:
    time.sleep(0.1)
for pid in seen:
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError as exc:
        print("PROBE agent-fds denied", type(exc).__name__, flush=True)
        continue
    for fd in descriptors:
        attempt("agent-fd", f"/proc/{pid}/fd/{fd}")
print("PROBE agents-seen", len(seen), flush=True)
print("ENV", json.dumps(dict(os.environ)), flush=True)
print("PROBE done", flush=True)
time.sleep(3600)
"""


def _uid(pid: int) -> int:
    """The real uid of a process (its /proc directory is root's when it is non-dumpable)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))


def _as(
    rde: KubeRDE, token: str, *args: str, input: str | None = None, timeout: float = WAIT
) -> subprocess.CompletedProcess[str]:
    """`kuberde ARGS` with another user's token."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("kuberde")), *args],
        env=rde.env | {"KUBERDE_TOKEN": token},
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _probe_output(rde: KubeRDE, token: str, name: str) -> str:
    """A probe workload's log (`kuberde logs` as its owner), once it says `PROBE done`."""

    def logs() -> str:
        result = _as(rde, token, "logs", name)
        assert result.returncode == 0, result.stderr
        return result.stdout

    wait_until(lambda: "PROBE done" in logs(), f"{name}'s probe finishing")
    return logs()


def _probe_lines(output: str) -> dict[str, list[str]]:
    lines: dict[str, list[str]] = {}
    for line in output.splitlines():
        if line.startswith("PROBE "):
            label, _, rest = line[len("PROBE ") :].partition(" ")
            lines.setdefault(label, []).append(rest)
    return lines


@pytest.mark.skipif(not ISOLATED, reason="owners get accounts of their own only under root")
@pytest.mark.timeout(120)
def test_a_workload_reads_nothing_of_the_gateway_or_other_owners(
    rde: KubeRDE, tmp_path: Path
) -> None:
    alice_port = free_port()
    echo = shlex.join(echo_command(alice_port, "alice"))
    # World-readable on purpose: only the home's 0700 keeps bob out.
    keeper = [
        "sh",
        "-c",
        f'echo alice-secret > "$HOME/secret"; chmod 644 "$HOME/secret"; exec {echo}',
    ]
    file = write_documents(
        tmp_path / "alice.yaml",
        [
            workspace("alice-ws", keeper, local_port=alice_port, owner="alice"),
            workspace("carol-ws", ["sleep", "600"], owner="carol"),
        ],
    )
    # Bad input: carol is mapped to an account this machine does not have.
    users = rde.state_dir / USERS_FILE
    set_user(users, "carol", "carols-password")
    users.write_text(
        users.read_text().replace("admin: false", "admin: false\n    account: kde-nobody-here")
    )
    rde.start_up(file, extra_env={CANARY: "canary-value-never-shown"})
    rde.env = rde.env | {"KUBERDE_TOKEN": user_token(rde, "admin", admin=True)}
    rde.wait_phase("alice-ws", "Running")
    carol = rde.wait_phase("carol-ws", "Error")
    assert carol["message"] == (
        "cannot run as its OS account: the users file maps 'carol' to 'kde-nobody-here': "
        "no such account"
    )
    alice, bob = rde.account("alice"), rde.account("bob")
    wait_until(lambda: (alice.home / "secret").exists(), "alice's workload writing her home")
    bob_token = user_token(rde, "bob")

    uids = f"{alice.uid},{bob.uid}"
    probe = [WORKLOAD_PYTHON, "-u", "-c", _PROBE, str(rde.state_dir), str(alice.home), uids]
    bob_file = write_documents(
        tmp_path / "bob.yaml",
        [workspace("bob-probe", probe, local_port=free_port(), owner="bob")],
    )
    applied = _as(rde, bob_token, "apply", "-f", str(bob_file))
    assert applied.returncode == 0, applied.stderr

    output = _probe_output(rde, bob_token, "bob-probe")
    probes = _probe_lines(output)
    for label in ("signing-key", "database", "users", "alice-log", "alice-home", "state-listing"):
        assert probes.get(label) and all(r.startswith("denied") for r in probes[label]), output
    # Every agent (alice's and bob's own) is seen, and not one descriptor of theirs opens.
    seen = int(probes["agents-seen"][0])
    assert seen >= 2 and len(probes.get("agent-fds", [])) == seen, output
    assert not any(r.startswith("READ") for r in probes.get("agent-fd", [])), output

    env = json.loads(next(line for line in output.splitlines() if line.startswith("ENV "))[4:])
    assert set(env) - ALLOWED == set(), env
    assert "canary-value-never-shown" not in output
    assert env["USER"] == account_name("bob") and env["HOME"] == str(bob.home)
    # Each owner's processes run as that owner's account, the agents included.
    for name, account in (("alice-ws", alice), ("bob-probe", bob)):
        row = rde.wait_phase(name, "Running")
        assert _uid(int(row["pod"])) == account.uid
        assert _uid(rde.wait_agent(row["agent_id"]).pid) == account.uid
    for account in (alice, bob):
        info = account.home.stat()
        assert (info.st_uid, info.st_mode & 0o777) == (account.uid, 0o700)
    # Logs are their owner's (and admins') only.
    foreign = _as(rde, bob_token, "logs", "alice-ws")
    assert foreign.returncode == 1 and "no workspace named 'alice-ws'" in foreign.stderr


def _home_of(rde: KubeRDE) -> Path:
    return rde.account().home if rde.isolated else rde.home


@pytest.mark.timeout(120)
def test_files_in_a_workspace_home_survive_stop_wake_ttl_and_restart(
    rde: KubeRDE, tmp_path: Path
) -> None:
    port = free_port()
    echo = shlex.join(echo_command(port, "keeper"))
    starts = ["sh", "-c", f'echo "run $$" >> "$HOME/runs"; exec {echo}']
    file = write_documents(
        tmp_path / "keeper.yaml", [workspace("keeper", starts, ttl="3s", local_port=port)]
    )
    rde.start_up(file)
    runs = _home_of(rde) / "runs"

    def lines() -> list[str]:
        return runs.read_text().splitlines() if runs.exists() else []

    wait_until(lambda: len(lines()) == 1, "the first run writing its home")
    first = lines()[0]
    rde.ok("stop", "keeper")
    rde.wait_phase("keeper", "ScaledDown")
    rde.ok("wake", "keeper")
    wait_until(lambda: len(lines()) == 2, "the woken run writing its home")
    rde.wait_phase("keeper", "ScaledDown")  # by TTL, after that run
    rde.stop_up()
    rde.start_up(file)
    reply = rde.kuberde("connect", "keeper", input="after a restart\n")
    assert reply.returncode == 0, reply.stderr
    assert reply.stdout == "after a restart\n"

    wait_until(lambda: len(lines()) == 3, "the run woken after a restart writing its home")
    assert lines()[0] == first


# ---- not as root ---------------------------------------------------------------------------

_MACHINE_USER = "kde-e2e-up"


def _machine_account(root: Path) -> Account:
    """An unprivileged account to run `kuberde up` as, created once on this machine."""
    try:
        entry = pwd.getpwnam(_MACHINE_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", _MACHINE_USER],
            check=False,
            capture_output=True,
            timeout=WAIT,
        )
        entry = pwd.getpwnam(_MACHINE_USER)
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, root / "home", "/bin/sh")


@pytest.fixture
def unprivileged() -> Iterator[KubeRDE]:
    if not ISOLATED:
        pytest.skip("creating the account to run kuberde up as needs root")
    if UP_PYTHON is None:
        pytest.skip("no Python of this version here that an unprivileged account may run")
    base = Path("/var/lib/kuberde-e2e")
    base.mkdir(mode=0o755, exist_ok=True)
    # Not under pytest's 0700 temporary directories: the account must reach its files.
    root = Path(tempfile.mkdtemp(prefix="up-", dir=base))
    root.chmod(0o755)
    installation = KubeRDE(root, run_as=_machine_account(root))
    try:
        with installation:
            yield installation
    finally:
        print(installation.diagnostics())
        shutil.rmtree(root, ignore_errors=True)


def _post(url: str, token: str, body: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url + "/api/workspaces",
        data=body.encode(),
        headers={"Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.timeout(120)
def test_without_root_only_the_machine_user_and_admins_define_workloads(
    unprivileged: KubeRDE, tmp_path: Path
) -> None:
    rde = unprivileged
    url = rde.start_up(write_documents(rde.root / "none.yaml", []))
    assert rde.up_stderr().count("not running as root: every workload runs as you") == 1
    bob = user_token(rde, "bob")
    admin = user_token(rde, "admin", admin=True)
    rde.env = rde.env | {"KUBERDE_TOKEN": admin}
    port = free_port()
    document = workspace("bobs", echo_command(port, "bobs"), local_port=port, owner="bob")
    path = write_documents(rde.root / "bobs.yaml", [document])

    refused = _as(rde, bob, "apply", "-f", str(path))
    status, body = _post(url, bob, path.read_text())

    assert refused.returncode == 1
    assert f"only '{_MACHINE_USER}' and admins may create or change workloads" in refused.stderr
    assert "not running as root" in refused.stderr
    assert status == 403 and body["reason"] == "forbidden", body
    assert "bobs" not in rde.ls()

    created = _as(rde, admin, "apply", "-f", str(path))
    assert created.returncode == 0, created.stderr
    rde.wait_phase("bobs", "Running")
    reply = _as(rde, bob, "connect", "bobs", input="made for bob\n")
    assert reply.returncode == 0, reply.stderr
    assert reply.stdout == "made for bob\n"
    assert _as(rde, bob, "stop", "bobs").returncode == 0
    rde.wait_phase("bobs", "ScaledDown")
    assert _as(rde, bob, "wake", "bobs").returncode == 0
    rde.wait_phase("bobs", "Running")
    # Re-applying the same workload (a TTL change, say) is not defining one.
    document["spec"]["ttl"] = "1h"
    write_documents(path, [document])
    again = _as(rde, bob, "apply", "-f", str(path))
    assert again.returncode == 0, again.stderr
    assert rde.run_as is not None
    assert _uid(int(rde.wait_phase("bobs", "Running")["pod"])) == rde.run_as.uid


# ---- networks ------------------------------------------------------------------------------

#: From a workload: connects to each HOST:PORT given, prints one line per attempt (the
#: first bytes read, or why not), then stays up. argv: [label=host:port ...].
_NET_PROBE = r"""
import socket, sys, time
for item in sys.argv[1:]:
    label, _, address = item.partition("=")
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.settimeout(5)
            print("PROBE", label, "READ", conn.recv(64).decode(errors="replace"), flush=True)
    except OSError as exc:
        print("PROBE", label, "denied", type(exc).__name__, exc, flush=True)
for label, path in (("alice-socket", "@ALICE@"), ("own-socket-mgmt", "@BOB@")):
    try:
        with socket.socket(socket.AF_UNIX) as unix:
            unix.settimeout(5)
            unix.connect(path)
            unix.sendall(b"GET /mgmt/agents HTTP/1.0\r\n\r\n")
            print("PROBE", label, "READ", unix.recv(64).decode().splitlines()[0], flush=True)
    except OSError as exc:
        print("PROBE", label, "denied", type(exc).__name__, flush=True)
print("PROBE done", flush=True)
time.sleep(3600)
"""


def _outward_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


@contextlib.contextmanager
def _greeter(host: str, text: bytes) -> Iterator[int]:
    """A host-side TCP listener on `host` that sends `text` to every connection."""
    server = socket.create_server((host, 0))
    server.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                conn, _ = server.accept()
                with conn:
                    conn.sendall(text)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        done.set()
        thread.join(timeout=WAIT)
        server.close()


def _netns_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def _ours(tag: str) -> list[str]:
    netns = Path("/run/netns")
    return sorted(p.name for p in netns.iterdir() if p.name.startswith(f"kuberde-{tag}-"))


@pytest.mark.skipif(
    not ISOLATED, reason="owners get network namespaces of their own only under root"
)
@pytest.mark.timeout(180)
def test_owners_workloads_cannot_reach_each_other_over_the_network(
    rde: KubeRDE, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    alice_port = free_port()
    alice_file = write_documents(
        tmp_path / "alice.yaml",
        [
            workspace(
                "alice-ws", echo_command(alice_port, "alice"), local_port=alice_port, owner="alice"
            )
        ],
    )
    url = rde.start_up(alice_file)
    rde.env = rde.env | {"KUBERDE_TOKEN": user_token(rde, "admin", admin=True)}
    alice_pid = int(rde.wait_phase("alice-ws", "Running")["pod"])
    # Running means its agent connected, from inside alice's namespace: over her socket.
    assert "agent user-alice-alice-ws connected from a Unix socket" in rde.up_stderr()
    tag = installation_tag(rde.state_dir)
    slirp = shutil.which("slirp4netns", path="/usr/sbin:/sbin:/usr/bin:/bin") is not None
    if slirp:
        assert "outbound through slirp4netns" in rde.up_stderr()
    else:
        assert "slirp4netns is not installed" in rde.up_stderr()
    gateway_port = int(url.rsplit(":", 1)[1])
    outward = _outward_address()
    bob_token = user_token(rde, "bob")
    pool = ThreadPoolExecutor(max_workers=1)
    request.addfinalizer(pool.shutdown)
    with _greeter(outward or "127.0.0.1", b"outbound-ok") as greeter_port:
        targets = [
            f"alice=127.0.0.1:{alice_port}",
            f"gateway=127.0.0.1:{gateway_port}",
            f"gateway-via-slirp=10.0.2.2:{gateway_port}",
        ]
        if outward is not None:
            targets.append(f"outbound={outward}:{greeter_port}")
        probe = [
            WORKLOAD_PYTHON,
            "-u",
            "-c",
            _NET_PROBE.replace("@ALICE@", f"/run/kuberde/{tag}/alice.sock").replace(
                "@BOB@", f"/run/kuberde/{tag}/bob.sock"
            ),
            *targets,
        ]
        bob_file = write_documents(
            tmp_path / "bob.yaml",
            [
                workspace("bob-probe", probe, local_port=free_port(), owner="bob"),
                # Bad input: bob points his workspace at alice's port.
                workspace("bob-steal", ["sleep", "600"], workspace_port=alice_port, owner="bob"),
            ],
        )
        applied = _as(rde, bob_token, "apply", "-f", str(bob_file))
        assert applied.returncode == 0, applied.stderr
        rde.wait_phase("bob-steal", "Running")
        # The agent retries a refused dial for its patience (30 s, for a workload that is
        # still starting): the other checks run meanwhile.
        stealing = pool.submit(
            _as, rde, bob_token, "connect", "bob-steal", input="steal\n", timeout=WAIT + 40
        )
        output = _probe_output(rde, bob_token, "bob-probe")
    probes = _probe_lines(output)
    bob_pid = int(rde.wait_phase("bob-probe", "Running")["pod"])
    assert len({_netns_of(pid) for pid in (os.getpid(), alice_pid, bob_pid)}) == 3
    for label in ("alice", "gateway", "gateway-via-slirp", "alice-socket"):
        assert probes.get(label) and probes[label][0].startswith("denied"), output
    # Bob's own socket serves his agent's endpoint, and nothing else of the gateway's.
    assert re.fullmatch(r"READ HTTP/1\.[01] 404 Not Found", probes["own-socket-mgmt"][0]), output
    if outward is not None:
        expected = "READ outbound-ok" if slirp else "denied"
        assert probes["outbound"][0].startswith(expected), output
    # Alice still reaches her own workload through the gateway.
    alice_token = user_token(rde, "alice")
    reply = _as(rde, alice_token, "connect", "alice-ws", input="alice's own\n")
    assert reply.returncode == 0, reply.stderr
    assert reply.stdout == "alice's own\n"
    stolen = stealing.result(timeout=WAIT + 60)
    assert stolen.returncode != 0
    assert f"connection refused by 127.0.0.1:{alice_port} in the workspace" in stolen.stderr
    assert "steal" not in stolen.stdout
    assert _ours(tag) == [f"kuberde-{tag}-alice", f"kuberde-{tag}-bob"]

    # Bob's last workspace deleted: his namespace goes, alice's stays.
    for name in ("bob-probe", "bob-steal"):
        assert _as(rde, bob_token, "delete", name).returncode == 0
    wait_until(lambda: _ours(tag) == [f"kuberde-{tag}-alice"], "bob's namespace removed")
    # A crash leaves alice's namespace behind (its slirp4netns exits by itself); the next
    # start removes it, and the normal exit removes the new one.
    slirps = {p for p in descendants(rde.up_pid) if "slirp4netns" in p.describe()}
    assert len(slirps) == (1 if slirp else 0)
    left = rde.crash_up()
    wait_until(lambda: not any(p.alive for p in slirps), "slirp4netns exiting after the crash")
    # Alice's orphaned workload and agent: still in her namespace, until the next start.
    orphans = {p for p in left if p.alive}
    assert len(orphans) == 2, [p.describe() for p in orphans]
    assert _ours(tag) == [f"kuberde-{tag}-alice"]
    url = rde.start_up(write_documents(tmp_path / "none.yaml", []))
    rde.env = rde.env | {"KUBERDE_TOKEN": user_token(rde, "admin", admin=True)}
    assert (
        f"removing network namespace kuberde-{tag}-alice left by a previous run, and the 2 "
        "process(es) still in it"
    ) in rde.up_stderr()
    wait_until(lambda: not any(p.alive for p in orphans), "the orphans killed")
    row = rde.wait_phase("alice-ws", "Running")
    assert _netns_of(int(row["pod"])) == _netns_of(rde.wait_agent(row["agent_id"]).pid)
    again = _as(rde, user_token(rde, "alice"), "connect", "alice-ws", input="again\n")
    assert (again.returncode, again.stdout) == (0, "again\n"), again.stderr
    rde.stop_up()
    assert _ours(tag) == []
    assert not Path(f"/run/kuberde/{tag}").exists()


@pytest.mark.skipif(not ISOLATED, reason="only root can be denied CAP_SYS_ADMIN")
@pytest.mark.timeout(120)
def test_without_cap_sys_admin_owners_share_the_network_and_are_told_so(tmp_path: Path) -> None:
    # Like a container without CAP_SYS_ADMIN: root, but no namespaces.
    wrapper = ["setpriv", "--bounding-set", "-sys_admin", "--"]
    with KubeRDE(tmp_path / "kuberde", wrapper=wrapper) as rde:
        try:
            port = free_port()
            file = write_documents(
                tmp_path / "alice.yaml",
                [
                    workspace(
                        "alice-ws", echo_command(port, "alice"), local_port=port, owner="alice"
                    )
                ],
            )
            rde.start_up(file)
            rde.env = rde.env | {"KUBERDE_TOKEN": user_token(rde, "admin", admin=True)}
            row = rde.wait_phase("alice-ws", "Running")
            reply = _as(rde, user_token(rde, "alice"), "connect", "alice-ws", input="hi\n")
            assert (reply.returncode, reply.stdout) == (0, "hi\n"), reply.stderr
            stderr = rde.up_stderr()
            assert stderr.count("cannot give owners network namespaces of their own") == 1, stderr
            assert "one owner's workload can connect to another's ports on 127.0.0.1" in stderr
            # As it says: the workload is on this machine's network, its account still its own.
            assert _netns_of(int(row["pod"])) == _netns_of(os.getpid())
            assert _uid(int(row["pod"])) == rde.account("alice").uid
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as conn:
                conn.sendall(b"direct")
                assert conn.recv(64) == b"direct"
            assert _ours(installation_tag(rde.state_dir)) == []
        finally:
            print(rde.diagnostics())


@pytest.mark.skipif(
    not ISOLATED, reason="owners get network namespaces of their own only under root"
)
@pytest.mark.timeout(120)
def test_a_namespace_that_cannot_be_made_is_the_workspaces_error_until_it_can(
    rde: KubeRDE, tmp_path: Path
) -> None:
    rde.start_up(write_documents(tmp_path / "none.yaml", []))
    rde.env = rde.env | {"KUBERDE_TOKEN": user_token(rde, "admin", admin=True)}
    # Bad state: something else holds carol's namespace name.
    blocker = Path("/run/netns") / f"kuberde-{installation_tag(rde.state_dir)}-carol"
    blocker.touch()
    try:
        port = free_port()
        file = write_documents(
            tmp_path / "carol.yaml",
            [workspace("carol-ws", echo_command(port, "carol"), local_port=port, owner="carol")],
        )
        rde.ok("apply", "-f", str(file))
        row = rde.wait_phase("carol-ws", "Error")
        assert row["message"].startswith(
            f"cannot set up its network: netns add {blocker.name}: Cannot create namespace file"
        ), row
        assert row["pod"] is None
    finally:
        blocker.unlink()
    # Nothing else was lost, and the next sweep gets it going.
    rde.wait_phase("carol-ws", "Running")
    reply = _as(rde, user_token(rde, "carol"), "connect", "carol-ws", input="fine now\n")
    assert (reply.returncode, reply.stdout) == (0, "fine now\n"), reply.stderr


#: Prints the nameservers it sees and what a name resolves to, then stays up.
_DNS_PROBE = r"""
import socket, time
servers = [line.split()[1] for line in open("/etc/resolv.conf") if line.startswith("nameserver")]
print("PROBE nameservers", *servers, flush=True)
try:
    print("PROBE lookup", socket.gethostbyname("probe.kuberde.test"), flush=True)
except OSError as exc:
    print("PROBE lookup failed", exc, flush=True)
print("PROBE done", flush=True)
time.sleep(3600)
"""


@contextlib.contextmanager
def _resolver(host: str, answer: str) -> Iterator[list[str]]:
    """A DNS server on UDP `host`:53 answering every A query with `answer`; yields the names
    asked, as they arrive."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((host, 53))
    server.settimeout(0.2)
    asked: list[str] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                query, peer = server.recvfrom(512)
            except (TimeoutError, OSError):
                continue
            end = query.index(b"\0", 12) + 5
            labels, at = [], 12
            while query[at]:
                labels.append(query[at + 1 : at + 1 + query[at]].decode())
                at += 1 + query[at]
            asked.append(".".join(labels))
            is_a = query[end - 4 : end - 2] == b"\0\x01"
            head = query[:2] + struct.pack("!HHHHH", 0x8180, 1, int(is_a), 0, 0)
            reply = head + query[12:end]
            if is_a:
                reply += struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(answer)
            server.sendto(reply, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield asked
    finally:
        done.set()
        thread.join(timeout=WAIT)
        server.close()


@pytest.mark.skipif(
    not ISOLATED or shutil.which("slirp4netns", path="/usr/sbin:/sbin:/usr/bin:/bin") is None,
    reason="owners get network namespaces with outbound DNS only under root, with slirp4netns",
)
@pytest.mark.timeout(120)
def test_a_resolver_on_the_hosts_loopback_serves_workloads_through_slirp4netns(
    tmp_path: Path,
) -> None:
    """Like systemd-resolved's 127.0.0.53: inside an owner's namespace that address is the
    namespace's own loopback, where nothing listens, so the workload is given slirp4netns's
    forwarder, which asks the host's resolver for it."""
    host_resolv_conf = Path("/etc/resolv.conf").read_text()
    stub = tmp_path / "stub-resolv.conf"
    stub.write_text("nameserver 127.0.0.77\noptions edns0\n")
    stub.chmod(0o644)
    # `kuberde up` sees the stub as /etc/resolv.conf, in a mount namespace of its own.
    wrapper = [
        *("unshare", "--mount", "--propagation", "private", "--"),
        *("sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(stub)),
    ]
    with (
        _resolver("127.0.0.77", "192.0.2.7") as asked,
        KubeRDE(tmp_path / "kuberde", wrapper=wrapper) as rde,
    ):
        try:
            probe = [WORKLOAD_PYTHON, "-u", "-c", _DNS_PROBE]
            file = write_documents(
                tmp_path / "alice.yaml",
                [workspace("alice-dns", probe, local_port=free_port(), owner="alice")],
            )
            rde.start_up(file)
            probes = _probe_lines(_probe_output(rde, user_token(rde, "alice"), "alice-dns"))
            assert probes["nameservers"] == [SLIRP_DNS]
            assert probes["lookup"] == ["192.0.2.7"]
            assert "probe.kuberde.test" in asked
            etc = NETNS_ETC_DIR / netns_name(installation_tag(rde.state_dir), "alice")
            assert "the host's resolver is on its loopback" in rde.up_stderr()
            assert (etc / "resolv.conf").read_text() == f"options edns0\nnameserver {SLIRP_DNS}\n"
            rde.stop_up()
            assert not etc.exists()
        finally:
            print(rde.diagnostics())
    assert Path("/etc/resolv.conf").read_text() == host_resolv_conf
