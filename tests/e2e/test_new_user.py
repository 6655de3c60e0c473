"""A new user, an empty home without SSH keys: every command `make run` (that is,
`kuberde up`) prints, then every command of the README's quick start, run in order as real
processes through bash, must succeed as printed.

The only changes made to what is printed: `kuberde up` listens on a free port (not 8080),
`port-forward` uses a free port (not 2022) and runs in the background, and each interactive
`ssh` gets `-o BatchMode=yes` (so a prompt fails instead of waiting; host keys stay checked)
and the command `echo ok`. OpenSSH reads the ssh config of the account's real home (it asks
getpwuid, not $HOME), so each plain `ssh` also gets `-F`: the config `kuberde config-ssh
--write` wrote into the test's home, or none for the line that names its files itself.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kuberde.local.accounts import account_name
from tests.e2e.up_fixtures import (
    CLI_TIMEOUT,
    ISOLATED,
    KubeRDE,
    current_owner,
    free_port,
    wait_for_text,
)

README = Path(__file__).resolve().parents[2] / "README.md"
QUICK_START = "<!-- quick-start:"


def printed_by_up(stderr: str) -> list[str]:
    """The indented command lines `kuberde up` prints, comments dropped."""
    return [
        shlex.join(shlex.split(line, comments=True))
        for line in stderr.splitlines()
        if line.startswith("  ") and line.strip()
    ]


def quick_start(readme: str) -> list[str]:
    """The commands of the README's bash blocks from the quick-start marker to the next
    heading, continuation lines joined and comments dropped."""
    section = readme[readme.index(QUICK_START) :]
    section = section[: section.index("\n#")]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(" ".join(line.split("#")[0].split()))
    return commands


@pytest.fixture
def newcomer(tmp_path: Path) -> Iterator[KubeRDE]:
    installation = KubeRDE(tmp_path, default_paths=True)
    try:
        with installation:
            yield installation
    finally:
        print(installation.diagnostics())


class Session:
    """Runs printed lines the way a user pastes them into bash, with the changes above."""

    def __init__(self, rde: KubeRDE) -> None:
        self.rde = rde
        self.forward_port: int | None = None

    def bash(self, line: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["bash", "-c", line],
            env=self.rde.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT * 2,
        )
        assert result.returncode == 0, f"{line!r} failed ({result.returncode}): {result.stderr}"
        return result

    def run(self, line: str) -> None:
        words = shlex.split(line)
        if words[1:3] == ["port-forward", "demo"]:
            raise AssertionError("port-forward is started by `forwarding`")
        if words[0] == "ssh":
            self._plain_ssh(line)
        elif words[1:2] == ["ssh"]:
            assert _lines(self.bash(f"{line} -- -tt -o BatchMode=yes {_ON_A_TERMINAL}")) == ["ok"]
        else:
            self.bash(line)

    def _plain_ssh(self, line: str) -> None:
        """`ssh ...` as printed, with the changes above made to the text, so that bash still
        expands what it would (`$USER`, `$HOME`)."""
        if " -p 2022 " in line:
            assert self.forward_port is not None, "plain ssh -p needs the port-forward running"
            line = line.replace(" -p 2022 ", f" -p {self.forward_port} ")
            config = "/dev/null"
        else:
            config = shlex.quote(str(self.rde.home / ".ssh" / "config"))
        assert line.startswith("ssh ")
        if ISOLATED:
            # As the README says: as root, the demo's sshd runs as (and admits) kuberde-$USER.
            line = line.replace("$USER@", f"{account_name(current_owner())}@")
        line = f"ssh -F {config} -tt -o BatchMode=yes {line[4:]} {_ON_A_TERMINAL}"
        assert _lines(self.bash(line)) == ["ok"]


#: Run remotely with a terminal, as a user's interactive `ssh` is: sshd must hand its pty over.
_ON_A_TERMINAL = shlex.quote("test -t 0 && echo ok")


def _lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """What the remote command printed; a terminal ends each line with CR LF."""
    return result.stdout.replace("\r\n", "\n").splitlines()


def _forward_line(lines: list[str]) -> str:
    [line] = [line for line in lines if " port-forward demo 2022:22" in line]
    return line


@pytest.mark.timeout(400)  # some twenty CLI processes; each takes seconds on a loaded machine
def test_a_new_user_runs_every_printed_command(newcomer: KubeRDE, tmp_path: Path) -> None:
    assert not (newcomer.home / ".ssh").exists()
    newcomer.start_up()
    newcomer.wait_phase("demo", "Running")
    printed = printed_by_up(newcomer.up_stderr())
    readme = quick_start(README.read_text())
    assert any(line.startswith("ssh -p 2022 ") for line in printed), printed
    assert "kuberde port-forward demo 2022:22" in readme

    session = Session(newcomer)
    for lines in (printed, readme):
        forward = _forward_line(lines)
        for line in lines:
            if line == forward:
                continue
            if line.startswith("ssh -p 2022 "):
                port = free_port()
                argv = shlex.split(forward.replace("2022:22", f"{port}:22"))
                log = tmp_path / f"forward-{port}.log"
                with newcomer.client(argv, log):
                    wait_for_text(log, "Forwarding from")
                    session.forward_port = port
                    session.run(line)
                session.forward_port = None
                continue
            session.run(line)

    # Nothing was needed from the account's real ~/.ssh: the key is the managed one.
    managed = newcomer.home / ".config" / "kuberde" / "ssh" / "id_ed25519"
    assert managed.is_file()
    known = (managed.parent / "known_hosts").read_text()
    assert known.startswith("demo.kuberde ssh-ed25519 ")
    assert not (newcomer.home / ".ssh" / "id_ed25519").exists()
