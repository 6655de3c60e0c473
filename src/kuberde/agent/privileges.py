"""Dropping root before the agent does anything, for the local runtime's isolated workspaces.

A root `kuberde up` starts each agent as root with `AGENT_RUN_AS=UID:GID`, and the agent
becomes that account before it reads its configuration or credential. Changing identity
this way leaves the process non-dumpable, so from its first unprivileged moment no workload
of the same account can ptrace it or open its `/proc/PID/fd` (where the credential
descriptor is). It also lets the agent run from a Python installation the account itself
cannot read: everything is imported before the switch. Without `AGENT_RUN_AS` the agent
still makes itself non-dumpable, as early as it can.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Mapping

from kuberde.agent.config import ConfigError

__all__ = ["RUN_AS_ENV", "drop_privileges", "parse_run_as"]

RUN_AS_ENV = "AGENT_RUN_AS"
_PR_SET_DUMPABLE = 4


def parse_run_as(value: str) -> tuple[int, int]:
    """`UID:GID` as two numbers; root is refused, since the point is not to be root."""
    uid, colon, gid = value.partition(":")
    if not colon or not uid.isdigit() or not gid.isdigit():
        raise ConfigError(f"{RUN_AS_ENV} {value!r} must be UID:GID (numbers)")
    if int(uid) == 0 or int(gid) == 0:
        raise ConfigError(f"{RUN_AS_ENV} {value!r} names root; the agent must not run as root")
    return int(uid), int(gid)


def _non_dumpable() -> None:
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def drop_privileges(environ: Mapping[str, str]) -> None:
    """Become `AGENT_RUN_AS` (when root) for good; ConfigError if that is impossible."""
    value = environ.get(RUN_AS_ENV, "").strip()
    if value:
        uid, gid = parse_run_as(value)
        if os.geteuid() == 0:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
            raise ConfigError(f"{RUN_AS_ENV} is {value} but the agent runs as uid {os.getuid()}")
    _non_dumpable()
