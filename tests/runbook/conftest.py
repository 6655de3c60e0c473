"""The runbook as a test suite: one installed cluster per module, and the table it prints.

Every runbook command is a row: its section, the command as run, and whether what the runbook
says about it holds, or why it cannot apply here. `make runbook` prints the table at the end.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from kuberde.testing.cluster import Cluster, CommandResult, installed_cluster, kubectl_path

#: Upper bound of any wait in these tests; a healthy run needs a small fraction of it.
WAIT = 60.0


@dataclass(frozen=True)
class Row:
    section: str
    command: str
    verdict: str


ROWS: list[Row] = []


def record(section: str, command: str, verdict: str) -> None:
    ROWS.append(Row(section, " ".join(command.split()), verdict))


def not_applicable(section: str, command: str, why: str) -> None:
    """A runbook command that cannot apply to this system, and why (one line)."""
    record(section, command, f"n/a: {why}")


Check = Callable[[CommandResult], None]


class Runbook:
    """Runs runbook commands against the cluster and records each one's verdict."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def run(
        self,
        section: str,
        command: str,
        check: Check,
        *,
        stop_after: float | None = None,
        note: str = "",
        cwd: Path | None = None,
        typed: bytes | None = None,
    ) -> CommandResult:
        """Run `command` verbatim (`typed` into it); `check` raises AssertionError if the
        runbook is wrong."""
        if stop_after is None:
            result = await self.cluster.sh(command, cwd=cwd, typed=typed)
        else:
            result = await self.cluster.sh(command, stop_after=stop_after, cwd=cwd, typed=typed)
        try:
            check(result)
        except AssertionError as exc:
            record(section, command, f"FAILS: {str(exc).splitlines()[0] if str(exc) else ''}")
            raise AssertionError(
                f"{command}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
            ) from exc
        record(section, command, f"holds{f' ({note})' if note else ''}")
        return result

    async def run_history(self, section: str, command: str, check: Check) -> CommandResult:
        """A runbook `kubectl logs -l … | grep …`: with a selector kubectl prints only the last
        10 lines of each pod, so the command runs verbatim (it must work) and what the runbook
        expects it to find is looked for in the whole log (`--tail=-1`)."""
        verbatim = await self.cluster.sh(command)
        assert "error" not in verbatim.stderr.lower(), verbatim.stderr
        selector = " -l app=kuberde-operator"
        assert selector in command
        whole = command.replace(selector, f"{selector} --tail=-1", 1)
        result = await self.cluster.sh(whole)
        try:
            check(result)
        except AssertionError as exc:
            record(section, command, f"FAILS: {str(exc).splitlines()[0] if str(exc) else ''}")
            raise AssertionError(f"{whole}\n--- stdout\n{result.stdout}") from exc
        record(
            section,
            command,
            "holds with --tail=-1 (with -l, kubectl logs prints only 10 lines per pod)",
        )
        return result

    async def until(
        self,
        section: str,
        command: str,
        check: Check,
        *,
        within: float = WAIT,
        note: str = "",
    ) -> CommandResult:
        """Run `command` until `check` passes (the runbook's "within N seconds")."""
        failure = "never ran"
        try:
            async with asyncio.timeout(within):
                while True:
                    result = await self.cluster.sh(command)
                    try:
                        check(result)
                    except AssertionError as exc:
                        failure = f"{exc}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
                        await asyncio.sleep(0.5)
                        continue
                    record(section, command, f"holds{f' ({note})' if note else ''}")
                    return result
        except TimeoutError:
            record(section, command, f"FAILS: not within {within:g} s")
            raise AssertionError(f"{command}: not within {within:g} s: {failure}") from None


async def eventually(probe: Callable[[], Awaitable[bool]], what: str, within: float = WAIT) -> None:
    try:
        async with asyncio.timeout(within):
            while True:
                if await probe():
                    return
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    if kubectl_path() is None:
        pytest.skip("kubectl is not installed (scripts/system-deps.sh --tests installs it)")
    async with installed_cluster(tmp_path_factory.mktemp("cluster")) as installed:
        yield installed


@pytest.fixture
def runbook(cluster: Cluster) -> Runbook:
    return Runbook(cluster)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROWS:
        return
    width = max(len(row.section) for row in ROWS)
    terminalreporter.section("runbook: section | command | holds / why not")
    for row in ROWS:
        command = textwrap.shorten(row.command, 110, placeholder=" …")
        terminalreporter.write_line(f"{row.section:<{width}}  {command}")
        terminalreporter.write_line(f"{'':<{width}}    -> {row.verdict}")
    holds = sum(1 for row in ROWS if row.verdict.startswith("holds"))
    fails = sum(1 for row in ROWS if row.verdict.startswith("FAILS"))
    terminalreporter.write_line(
        f"{len(ROWS)} commands: {holds} hold, {fails} fail, {len(ROWS) - holds - fails} n/a"
    )
