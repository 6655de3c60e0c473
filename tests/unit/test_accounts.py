"""Which account and environment local workloads get, and who may define workloads."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kuberde.agent.config import ConfigError
from kuberde.agent.privileges import parse_run_as
from kuberde.auth import Principal
from kuberde.auth.users import UsersFile, UsersFileError, set_user
from kuberde.local.accounts import (
    Account,
    AccountError,
    Accounts,
    account_name,
    clean_environment,
    run_as_argv,
)
from kuberde.local.api import workload_refusal
from kuberde.naming import is_os_user_name
from kuberde.resource import Workload

BOB = Account("kuberde-bob", 1001, 1002, Path("/home/kuberde-bob"), "/bin/bash")
OWNERS = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)


def test_a_short_owner_gets_its_name_with_the_prefix() -> None:
    assert account_name("alice") == "kuberde-alice"
    assert account_name("a" * 24) == "kuberde-" + "a" * 24


@given(OWNERS)
def test_every_owner_gets_a_name_useradd_accepts(owner: str) -> None:
    name = account_name(owner)
    assert name.startswith("kuberde-")
    assert is_os_user_name(name), name


@given(OWNERS, OWNERS)
def test_different_owners_get_different_accounts(first: str, second: str) -> None:
    assert (account_name(first) == account_name(second)) == (first == second)


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        *[("alice", True), ("_svc", True), ("a-b_c", True), ("Alice", False), ("1abc", False)],
        *[("a" * 32, True), ("a" * 33, False), ("", False), ("a b", False), ("a/b", False)],
    ],
)
def test_os_user_names(name: str, valid: bool) -> None:
    assert is_os_user_name(name) is valid


def test_the_environment_keeps_only_the_allow_list() -> None:
    inherited = {
        "PATH": "/opt/bin:/usr/bin",
        "HOME": "/root",
        "USER": "root",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "LC_": "x",
        "TZ": "UTC",
        "TERM": "xterm",
        "KUBERDE_TOKEN": "secret",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AGENT_TOKEN": "secret",
        "PYTHONPATH": "/somewhere",
        "LD_PRELOAD": "/evil.so",
    }
    assert clean_environment(BOB, inherited) == {
        "PATH": "/opt/bin:/usr/bin",
        "HOME": "/home/kuberde-bob",
        "USER": "kuberde-bob",
        "LOGNAME": "kuberde-bob",
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "TERM": "xterm",
    }


def test_a_missing_path_gets_a_default_and_later_layers_win() -> None:
    env = clean_environment(BOB, {}, {"HOME": "/work", "A": "1"}, {"A": "2"})
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert (env["HOME"], env["A"]) == ("/work", "2")


def test_setpriv_switches_to_the_account_and_its_groups() -> None:
    assert run_as_argv(BOB, ["sshd", "-D"], terminal_group=None) == [
        "setpriv",
        "--reuid=1001",
        "--regid=1002",
        "--init-groups",
        "--",
        "sshd",
        "-D",
    ]


def test_the_terminal_group_is_added_to_the_accounts_own_groups() -> None:
    argv = run_as_argv(BOB, ["sshd", "-D"], terminal_group=5)
    assert argv[:3] == ["setpriv", "--reuid=1001", "--regid=1002"]
    assert argv[4:] == ["--", "sshd", "-D"]
    option, _, listed = argv[3].partition("=")
    assert option == "--groups"
    assert {1002, 5} <= {int(gid) for gid in listed.split(",")}


def test_run_as_is_parsed_and_root_refused() -> None:
    assert parse_run_as("1001:1002") == (1001, 1002)
    for value in ("1001", "a:b", "1001:", ":1", "-1:2"):
        with pytest.raises(ConfigError, match="must be UID:GID"):
            parse_run_as(value)
    for value in ("0:1002", "1001:0"):
        with pytest.raises(ConfigError, match="names root"):
            parse_run_as(value)


# ---- who may define workloads --------------------------------------------------------------

SLEEP = Workload.model_validate({"command": ["sleep", "60"]})
OTHER = Workload.model_validate({"command": ["sleep", "61"]})


def _user(name: str, admin: bool = False) -> Principal:
    return Principal(kind="user", name=name, admin=admin)


@pytest.mark.parametrize(
    ("user", "isolated", "new", "current", "allowed"),
    [
        (_user("bob"), False, SLEEP, None, False),  # creating one
        (_user("bob"), False, OTHER, SLEEP, False),  # changing one
        (_user("bob"), False, None, SLEEP, False),  # removing one
        (_user("bob"), False, SLEEP, SLEEP, True),  # the same one again (a TTL change)
        (_user("bob"), False, None, None, True),  # agent only
        (_user("carol"), False, SLEEP, None, True),  # the machine user
        (_user("admin", admin=True), False, SLEEP, None, True),
        (_user("bob"), True, SLEEP, None, True),  # root: bob's own account runs it
    ],
)
def test_without_root_only_the_machine_user_and_admins_define_workloads(
    user: Principal, isolated: bool, new: Workload | None, current: Workload | None, allowed: bool
) -> None:
    refusal = workload_refusal(user, "carol", isolated, new, current)
    assert (refusal is None) is allowed
    if refusal is not None:
        assert "only 'carol' and admins may create or change workloads" in refusal
        assert "not running as root" in refusal


# ---- which account -------------------------------------------------------------------------


def _isolated(tmp_path: Path, mapping: dict[str, str]) -> Accounts:
    return Accounts(isolated=True, homes_dir=tmp_path, current=BOB, mapped=mapping.get)


def test_without_root_every_owner_runs_as_the_current_account(tmp_path: Path) -> None:
    accounts = Accounts(isolated=False, homes_dir=tmp_path, current=BOB)
    assert accounts.for_owner("alice") is BOB
    assert not list(tmp_path.iterdir())


def test_a_mapping_to_a_missing_account_or_to_root_is_refused(tmp_path: Path) -> None:
    accounts = _isolated(tmp_path, {"alice": "no-such-account-here", "eve": "root"})
    with pytest.raises(AccountError, match="maps 'alice' to 'no-such-account-here': no such"):
        accounts.for_owner("alice")
    with pytest.raises(AccountError, match="maps 'eve' to 'root', which is root"):
        accounts.for_owner("eve")


def test_a_mapped_account_must_have_a_home_of_its_own(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    accounts = _isolated(tmp_path, {"alice": "nobody"})
    if os.path.isdir(nobody.pw_dir):
        pytest.skip(f"nobody has a home here ({nobody.pw_dir})")
    with pytest.raises(AccountError, match=f"home {nobody.pw_dir} of nobody"):
        accounts.for_owner("alice")
    assert not os.path.exists(nobody.pw_dir)


# ---- the users file maps owners to accounts ------------------------------------------------


def test_the_users_file_maps_an_owner_to_an_account(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    set_user(path, "alice", "pass-word")
    text = path.read_text().replace("admin: false", "admin: false\n    account: alice-os")
    path.write_text(text)
    users = UsersFile(path)
    user = users.get("alice")
    assert user is not None and user.account == "alice-os"
    set_user(path, "alice", "new-pass-word")
    again = UsersFile(path).get("alice")
    assert again is not None and again.account == "alice-os"


@pytest.mark.parametrize("account", ["Alice", "a b", "42", "[x]", "x" * 33])
def test_an_account_that_is_not_a_user_name_is_refused(tmp_path: Path, account: str) -> None:
    path = tmp_path / "users.yaml"
    set_user(path, "alice", "pass-word")
    path.write_text(
        path.read_text().replace("admin: false", f"admin: false\n    account: {account}")
    )
    with pytest.raises(UsersFileError, match="'account' must be an OS user name"):
        UsersFile(path).get("alice")
