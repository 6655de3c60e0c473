"""`kuberde doctor`: the runbook's daily health checks, automated, against a cluster or
against a local `kuberde up`.

What it reads is `kuberde.observe`'s (a cluster) or `kuberde.cli.doctor_local`'s (the
gateway of the CLI config, when that is a local `kuberde up`); the verdicts are
`kuberde.diagnosis`'s. This module only picks one, runs it and prints ✅/❌ with what was
measured and, for a ❌, the fix. Any ❌ exits 1; a cluster that cannot be read exits 2.
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kuberde.cli.base import USAGE_ERROR, Gateway, fail
from kuberde.cli.config import ClientSettings, ConfigError, resolve

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


def _local_findings(gateway: Gateway, *, required: bool) -> list[Finding] | None:
    """The local checks, if the configured gateway is a local `kuberde up` (or one on this
    machine that does not answer); None to check a cluster instead. `required`: `--local`."""
    from kuberde import aio
    from kuberde.cli.doctor_local import NotLocal, is_loopback, observe_local
    from kuberde.diagnosis import diagnose_local

    settings: ClientSettings | None = None
    try:
        settings = resolve(gateway.server, gateway.token, os.environ, ca_file_flag=gateway.ca_file)
    except ConfigError as exc:
        if required:
            fail(str(exc), USAGE_ERROR)
    if settings is None:
        return None
    try:
        observation = aio.run(observe_local(settings))
    except NotLocal:
        if required:
            fail(f"{settings.server} is not a local `kuberde up` (it has no /api/runtime)")
        return None
    if not observation.gateway[0] and not required and not is_loopback(settings.server):
        return None
    return diagnose_local(observation)


def doctor(
    gateway: Gateway,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Check the local `kuberde up` of the CLI config (the default when the "
            "configured gateway is one, unless --kubeconfig or --gateway is given).",
        ),
    ] = False,
    kubeconfig: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE", help="kubeconfig (default: $KUBECONFIG, in-cluster, ~/.kube/config)"
        ),
    ] = None,
    namespace: Annotated[
        str,
        typer.Option(
            "--namespace", "-n", metavar="NAMESPACE", envvar="KUBERDE_NAMESPACE", help="Namespace"
        ),
    ] = "kuberde",
    probe: Annotated[
        str | None,
        typer.Option(
            "--gateway",
            metavar="URL",
            help="A cluster's gateway URL to probe (/healthz); default: judge from the "
            "operator's log",
        ),
    ] = None,
    window: Annotated[
        float,
        typer.Option(metavar="SECONDS", help="Watch Deployments this long for flapping (0: skip)"),
    ] = 60.0,
    samples: Annotated[
        int, typer.Option(metavar="N", help="Deployment samples over the window")
    ] = 3,
    ttl_interval: Annotated[
        float, typer.Option(metavar="SECONDS", help="The operator's TTL sweep interval")
    ] = 60.0,
    output: Annotated[Output, typer.Option("--output", "-o", help="text or json")] = Output.TEXT,
) -> None:
    """Run the runbook's daily checks: operator pod, gateway, agents, stability, TTL, timings.

    Against a local `kuberde up` (the CLI config's gateway) the checks that apply there run,
    and the cluster-only ones say "n/a locally".

    Examples:

    \b
      kuberde doctor                 # the local `kuberde up`, if that is the configured gateway
      kuberde doctor --local -o json
      kuberde doctor -n kuberde --window 90 -o json
    """
    from kuberde import aio
    from kuberde.diagnosis import diagnose
    from kuberde.observe import observe

    cluster_asked = kubeconfig is not None or probe is not None
    findings = None if cluster_asked and not local else _local_findings(gateway, required=local)
    if findings is None:
        try:
            observation = aio.run(
                observe(
                    kubeconfig,
                    namespace,
                    gateway=probe,
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
