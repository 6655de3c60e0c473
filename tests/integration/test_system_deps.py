"""`scripts/system-deps.sh`, which `make run` and `make test` call: with fake apt-get,
dpkg-query and id on PATH, so what it would do to the machine is recorded, not done."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "system-deps.sh"

#: Packages these cases are not about (the local isolation's useradd, setpriv, nsenter, ip
#: and slirp4netns).
ALWAYS_INSTALLED = "passwd util-linux iproute2 slirp4netns"

FAKES = {
    # Reports the packages listed in $INSTALLED as installed, at version 1:9.2p1-2.
    "dpkg-query": """
pkg="${@: -1}"
case " $INSTALLED " in *" $pkg "*) ;; *) exit 1;; esac
case "$*" in *Status*) printf 'install ok installed';; *Version*) printf '1:9.2p1-2';; esac
""",
    # Lists the versions in $ARCHIVE as the archive's, the way `apt-cache madison` does.
    "apt-cache": """
for version in $ARCHIVE; do
  printf ' %s | %s | http://deb.debian.org/debian bookworm/main amd64 Packages\\n' "$2" "$version"
done
""",
    "id": 'echo "$FAKE_UID"',
    "apt-get": """
policy=absent
[ -x "$KUBERDE_POLICY_RC_D" ] && policy="$(sh "$KUBERDE_POLICY_RC_D"; echo $?)"
echo "apt-get $* (policy-rc.d: $policy)" >> "$LOG"
""",
    "deb-systemd-helper": 'echo "deb-systemd-helper $*" >> "$LOG"',
    "update-rc.d": 'echo "update-rc.d $*" >> "$LOG"',
    "sudo": "exit 1",
}


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    for name, body in FAKES.items():
        path = directory / name
        path.write_text(f"#!/bin/bash\n{body}")
        path.chmod(0o755)
    return directory


def _run(
    fake_bin: Path, tmp_path: Path, *, installed: str, uid: str, archive: str = "1:9.2p1-2"
) -> tuple[str, list[str]]:
    log = tmp_path / "log"
    log.touch()
    result = subprocess.run(
        ["bash", str(SCRIPT)],
        env={
            "PATH": f"{fake_bin}:/usr/bin:/bin",
            "INSTALLED": f"{installed} {ALWAYS_INSTALLED}",
            "FAKE_UID": uid,
            "ARCHIVE": archive,
            "LOG": str(log),
            "KUBERDE_POLICY_RC_D": str(tmp_path / "policy-rc.d"),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr, log.read_text().splitlines()


def test_nothing_missing_installs_nothing_and_says_nothing(fake_bin, tmp_path):
    stderr, calls = _run(fake_bin, tmp_path, installed="openssh-client openssh-server", uid="0")
    assert (stderr, calls) == ("", [])


def test_a_missing_server_is_announced_then_installed_pinned_without_services(fake_bin, tmp_path):
    stderr, calls = _run(fake_bin, tmp_path, installed="openssh-client", uid="0")
    assert stderr.splitlines()[:2] == [
        "system-deps: missing Debian packages: openssh-server=1:9.2p1-2 (for the SSH demo)",
        "system-deps: installing them with apt-get: nothing installed is upgraded, no service "
        "is started or enabled",
    ]
    assert calls == [
        "apt-get update -qq (policy-rc.d: 101)",
        "apt-get install -y -qq --no-install-recommends --no-upgrade openssh-server=1:9.2p1-2"
        " (policy-rc.d: 101)",
        "deb-systemd-helper disable ssh.service ssh.socket",
        "update-rc.d ssh disable",
    ]
    assert not (tmp_path / "policy-rc.d").exists()
    assert "not running or enabled" in stderr


def test_a_client_version_gone_from_the_archive_brings_the_server_at_the_archives_version(
    fake_bin, tmp_path
):
    stderr, calls = _run(
        fake_bin, tmp_path, installed="openssh-client", uid="0", archive="1:9.2p1-2+deb12u7"
    )
    assert (
        "system-deps: the one exception: openssh-client 1:9.2p1-2 is no longer in the archive, "
        "so openssh-server comes at the archive's version and openssh-client is upgraded to match"
    ) in stderr.splitlines()
    assert calls == [
        "apt-get update -qq (policy-rc.d: 101)",
        "apt-get install -y -qq --no-install-recommends openssh-server (policy-rc.d: 101)",
        "deb-systemd-helper disable ssh.service ssh.socket",
        "update-rc.d ssh disable",
    ]
    assert not (tmp_path / "policy-rc.d").exists()


def test_an_existing_policy_rc_d_is_left_alone(fake_bin, tmp_path):
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 0\n")
    policy.chmod(0o755)
    _, calls = _run(fake_bin, tmp_path, installed="", uid="0")
    assert "openssh-client openssh-server (policy-rc.d: 0)" in calls[1]
    assert policy.read_text() == "#!/bin/sh\nexit 0\n"


def test_without_root_it_prints_the_command_and_installs_nothing(fake_bin, tmp_path):
    stderr, calls = _run(fake_bin, tmp_path, installed="openssh-server", uid="1000")
    assert calls == []
    assert stderr.splitlines() == [
        "system-deps: missing Debian packages: openssh-client (for the SSH demo)",
        "system-deps: not root and no passwordless sudo; install them with:",
        "system-deps:   sudo apt-get install --no-install-recommends --no-upgrade openssh-client",
    ]
