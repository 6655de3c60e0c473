"""`kuberde doctor`: the runbook's daily health checks against a cluster, automated.

What it reads is `kuberde.observe`'s, the verdicts `kuberde.diagnosis`'s; this module only
runs them and prints ✅/❌ with what was measured and, for a ❌, the runbook's fix. Any ❌
exits 1; a cluster that cannot be read at all exits 2.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from kuberde.diagnosis import Finding

__all__ = ["doctor"]

EXIT_UNHEALTHY = 1
EXIT_UNREACHABLE = 2


class Output(StrEnum):
    TEXT = "text"
    JSON = "json"


def render(findings: list[Finding]) -> str:
    lines = []
    for finding in findings:
        lines.append(f"{'✅' if finding.ok else '❌'} {finding.check}: {finding.measured}")
        if not finding.ok and finding.fix:
            lines.append(f"   fix: {finding.fix}")
    failed = sum(1 for finding in findings if not finding.ok)
    lines.append(f"{len(findings)} checks, {failed} failed")
    return "\n".join(lines)


def doctor(
    kubeconfig: Annotated[
        Path | None,
        typer.Option(help="kubeconfig (default: $KUBECONFIG, in-cluster, ~/.kube/config)"),
    ] = None,
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", envvar="KUBERDE_NAMESPACE", help="Namespace")
    ] = "kuberde",
    gateway: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Gateway base URL to probe (/healthz); default: judge from the operator's log",
        ),
    ] = None,
    window: Annotated[
        float,
        typer.Option(metavar="SECONDS", help="Watch Deployments this long for flapping (0: skip)"),
    ] = 60.0,
    samples: Annotated[int, typer.Option(help="Deployment samples over the window")] = 3,
    ttl_interval: Annotated[
        float, typer.Option(metavar="SECONDS", help="The operator's TTL sweep interval")
    ] = 60.0,
    output: Annotated[Output, typer.Option("--output", "-o", help="text or json")] = Output.TEXT,
) -> None:
    """Run the runbook's daily checks: operator pod, gateway, agents, stability, TTL, timings.

    Examples:

    \b
      kuberde doctor
      kuberde doctor -n kuberde --window 90 -o json
    """
    from kuberde import aio
    from kuberde.diagnosis import diagnose
    from kuberde.observe import observe

    try:
        observation = aio.run(
            observe(
                kubeconfig,
                namespace,
                gateway=gateway,
                window=window,
                samples=samples,
                ttl_interval=ttl_interval,
            )
        )
    except Exception as exc:  # the cluster could not be read at all: say so, exit 2
        typer.echo(f"error: cannot read the cluster: {exc}", err=True)
        raise typer.Exit(EXIT_UNREACHABLE) from None
    findings = diagnose(observation)
    if output is Output.JSON:
        ok = all(finding.ok for finding in findings)
        document = {"ok": ok, "findings": [finding.as_dict() for finding in findings]}
        typer.echo(json.dumps(document, indent=2))
    else:
        typer.echo(render(findings))
    if not all(finding.ok for finding in findings):
        raise typer.Exit(EXIT_UNHEALTHY)
