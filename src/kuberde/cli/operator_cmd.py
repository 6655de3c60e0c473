"""`kuberde operator`: run the Kubernetes operator (one replica; replicas elect a leader).

Mounted by the CLI as `app.command(name="operator")(operator)`. Every option has an
environment variable, so the Deployment configures it without arguments. The management
token is read from `KUBERDE_MGMT_TOKEN` (or a file), never from the command line, where
`ps` would show it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from kuberde.operator.defaults import DEFAULT_AGENT_IMAGE, DEFAULT_GATEWAY_URL
from kuberde.operator.settings import (
    DEFAULT_HEALTH_LISTEN,
    DEFAULT_LEASE_NAME,
    DEFAULT_NAMESPACE,
    OperatorSettings,
    SettingsError,
)

__all__ = ["operator"]

EXIT_CONFIG = 2
EXIT_LEADERSHIP_LOST = 1


async def _run(settings: OperatorSettings) -> None:
    import asyncio

    from kuberde import aio
    from kuberde.operator.main import run_operator

    stop = asyncio.Event()
    signals = asyncio.ensure_future(aio.wait_for_signal())
    signals.add_done_callback(lambda _: stop.set())
    try:
        await run_operator(settings, stop=stop)
    finally:
        signals.cancel()


def operator(
    namespace: Annotated[
        str, typer.Option(envvar="KUBERDE_NAMESPACE", help="Namespace of the RDEAgents")
    ] = DEFAULT_NAMESPACE,
    server_api: Annotated[
        str,
        typer.Option(envvar="KUBERDE_SERVER_API", help="Gateway base URL (GET /mgmt/agents)"),
    ] = DEFAULT_GATEWAY_URL,
    agent_server_url: Annotated[
        str | None,
        typer.Option(
            envvar="KUBERDE_AGENT_SERVER_URL",
            help="Gateway URL for agents, if they reach it by another address",
        ),
    ] = None,
    agent_image: Annotated[
        str, typer.Option(envvar="KUBERDE_AGENT_IMAGE", help="Image of the agent container")
    ] = DEFAULT_AGENT_IMAGE,
    kubeconfig: Annotated[
        Path | None,
        typer.Option(help="Kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)"),
    ] = None,
    signing_key_file: Annotated[
        Path | None,
        typer.Option(
            envvar="KUBERDE_SIGNING_KEY_FILE",
            help="PEM signing key shared with the gateway (agent credentials)",
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="KUBERDE_STATE_DIR", help="Directory holding signing-key.pem (alternative)"
        ),
    ] = None,
    mgmt_token_file: Annotated[
        Path | None,
        typer.Option(
            envvar="KUBERDE_MGMT_TOKEN_FILE",
            help="Token for /mgmt (default: $KUBERDE_MGMT_TOKEN, else minted with the key)",
        ),
    ] = None,
    listen: Annotated[
        str,
        typer.Option(
            envvar="KUBERDE_OPERATOR_LISTEN", help="HOST:PORT of /healthz, /readyz, /metrics"
        ),
    ] = DEFAULT_HEALTH_LISTEN,
    monitor_interval: Annotated[
        float, typer.Option(help="Seconds between GET /mgmt/agents")
    ] = 15.0,
    monitor_timeout: Annotated[float, typer.Option(help="Timeout of GET /mgmt/agents")] = 5.0,
    ttl_interval: Annotated[
        float, typer.Option(help="Seconds between logged TTL sweeps (deadlines are kept on time)")
    ] = 60.0,
    status_interval: Annotated[float, typer.Option(help="Seconds between status updates")] = 10.0,
    resync_interval: Annotated[
        float, typer.Option(help="Seconds between full reconciles of every agent")
    ] = 600.0,
    leader_election: Annotated[
        bool, typer.Option(help="Elect one acting replica with a Lease")
    ] = True,
    lease_name: Annotated[str, typer.Option(help="Name of the Lease")] = DEFAULT_LEASE_NAME,
) -> None:
    """Run the operator: Deployments for RDEAgents, status, scale to zero after the TTL, wake.

    Examples:

    \b
      kuberde operator --namespace kuberde
      kuberde operator --kubeconfig ~/.kube/config --no-leader-election
    """
    try:
        settings = OperatorSettings(
            namespace=namespace,
            server_api=server_api,
            agent_server_url=agent_server_url,
            agent_image=agent_image,
            kubeconfig=kubeconfig,
            signing_key_file=signing_key_file,
            state_dir=state_dir,
            mgmt_token=os.environ.get("KUBERDE_MGMT_TOKEN") or None,
            mgmt_token_file=mgmt_token_file,
            health_listen=listen,
            monitor_interval=monitor_interval,
            monitor_timeout=monitor_timeout,
            ttl_interval=ttl_interval,
            status_interval=status_interval,
            resync_interval=resync_interval,
            leader_election=leader_election,
            lease_name=lease_name,
        )
    except SettingsError as exc:
        typer.echo(f"kuberde: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # Kopf logs every handler call at INFO; our own lines say what happened.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    from kubernetes_asyncio.config import ConfigException

    from kuberde import aio
    from kuberde.operator.leader import LeadershipLost

    try:
        aio.run(_run(settings))
    except (SettingsError, ConfigException) as exc:
        typer.echo(f"kuberde: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    except LeadershipLost as exc:
        typer.echo(f"kuberde: {exc}", err=True)
        raise typer.Exit(EXIT_LEADERSHIP_LOST) from None
