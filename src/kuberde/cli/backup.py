"""`kuberde backup` and `kuberde restore`: the RDEAgents of a namespace, saved and re-created.

Thin I/O around `kuberde.backup`: list, or read the file, look at what exists, then write.
They talk to the Kubernetes API with the user's own kubeconfig, as kubectl does.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kuberde import __version__
from kuberde.cli.base import USAGE_ERROR, command, fail

if TYPE_CHECKING:
    from kuberde.backup import Step
    from kuberde.kube import KubeApi, Paths

__all__ = ["register"]

_TIMEOUT = 30.0

NamespaceOption = Annotated[
    str,
    typer.Option(
        "--namespace", "-n", metavar="NAMESPACE", envvar="KUBERDE_NAMESPACE", help="Namespace."
    ),
]
KubeconfigOption = Annotated[
    Path | None,
    typer.Option(
        metavar="FILE", help="Kubeconfig (default: $KUBECONFIG, in-cluster, ~/.kube/config)."
    ),
]


async def _connect(kubeconfig: Path | None) -> KubeApi:
    from kubernetes_asyncio.config import ConfigException

    from kuberde.kube import KubeApi, load_configuration

    try:
        configuration = await load_configuration(kubeconfig)
    except ConfigException as exc:
        fail(str(exc), USAGE_ERROR)
    return KubeApi.connect(configuration, timeout=_TIMEOUT, user_agent=f"kuberde-cli/{__version__}")


async def _backup(namespace: str, kubeconfig: Path | None) -> dict[str, Any]:
    from kuberde.backup import backup_list
    from kuberde.kube import Paths

    api = await _connect(kubeconfig)
    try:
        return backup_list(await api.list(Paths(namespace).agents))
    finally:
        await api.close()


def backup(
    namespace: NamespaceOption = "kuberde",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="FILE", help="Write here instead of stdout."),
    ] = None,
    kubeconfig: KubeconfigOption = None,
) -> None:
    """Save every RDEAgent of the namespace as YAML, for `kuberde restore`.

    Status and what the API server sets (uid, resourceVersion, creationTimestamp, managed
    fields) are left out; lifecycle annotations are kept, so a scaled-down workspace stays
    scaled down. Volumes are not copied: they stay in the cluster.

    Examples:

    \b
      kuberde backup -o rdeagents.yaml
    """
    import yaml

    from kuberde import aio
    from kuberde.kube import ApiError

    try:
        document = aio.run(_backup(namespace, kubeconfig))
    except ApiError as exc:
        fail(f"cannot list RDEAgents in {namespace}: {exc}")
    text = yaml.safe_dump(document, sort_keys=False)
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text)
    count = len(document["items"])
    typer.echo(f"saved {count} RDEAgent{'s' if count != 1 else ''} to {output}", err=True)


async def _restore(path: Path, namespace: str, kubeconfig: Path | None, dry_run: bool) -> int:
    """Restore what may be restored; the number of refused RDEAgents."""
    from kuberde.backup import plan_restore
    from kuberde.kube import Paths
    from kuberde.resource import load_documents

    loaded = load_documents(path.read_text(), str(path))
    errors = [result.error for result in loaded if result.error is not None]
    if errors:
        fail("nothing restored:\n  " + "\n  ".join(errors), USAGE_ERROR)
    agents = [result.agent for result in loaded if result.agent is not None]
    api = await _connect(kubeconfig)
    paths = Paths(namespace)
    try:
        existing = {item["metadata"]["name"]: item for item in await api.list(paths.agents)}
        claims = {item["metadata"]["name"]: item for item in await api.list(paths.pvcs)}
        steps = plan_restore(agents, namespace=namespace, existing=existing, claims=claims)
        for step in steps:
            await _apply(api, paths, step, dry_run)
    finally:
        await api.close()
    return sum(step.action == "refuse" for step in steps)


async def _apply(api: KubeApi, paths: Paths, step: Step, dry_run: bool) -> None:
    suffix = " (dry run)" if dry_run else ""
    if step.action == "refuse":
        typer.echo(f"refused rdeagent/{step.name}: {step.reason}", err=True)
    elif step.action == "keep":
        typer.echo(f"unchanged rdeagent/{step.name}: {step.reason}{suffix}")
    elif step.body is not None:
        if not dry_run:
            await api.create(paths.agents, step.body)
        typer.echo(f"created rdeagent/{step.name}{suffix}")


def restore(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A backup (or kubectl -o yaml).")],
    namespace: NamespaceOption = "kuberde",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be done; change nothing.")
    ] = False,
    kubeconfig: KubeconfigOption = None,
) -> None:
    """Re-create the RDEAgents of a backup that are missing, with their own volumes.

    An RDEAgent that exists is left as it is. One whose volume (PVC user-OWNER-NAME-home)
    belongs to another owner or RDEAgent is refused, and the command exits 1; the others are
    restored. A file with any invalid document restores nothing.

    Examples:

    \b
      kuberde restore rdeagents.yaml
      kuberde restore --dry-run frpagent_backup_20260101.yaml
    """
    from kuberde import aio
    from kuberde.kube import ApiError

    if not file.is_file():
        fail(f"no such file: {file}", USAGE_ERROR)
    try:
        refused = aio.run(_restore(file, namespace, kubeconfig, dry_run))
    except ApiError as exc:
        fail(f"restore stopped: {exc}")
    if refused:
        fail(f"{refused} RDEAgent{'s' if refused != 1 else ''} not restored (see above)")


def register(app: typer.Typer) -> None:
    command(app, "backup")(backup)
    command(app, "restore")(restore)
