"""The gateway forgets the activity of workspaces its directory no longer has."""

from __future__ import annotations

from pathlib import Path

from kuberde.auth import LocalTokenVerifier, load_or_create_signing_key
from kuberde.gateway.app import GATEWAY_KEY, GatewaySettings, create_app
from kuberde.gateway.directory import AgentRecord
from tests.oidc_provider.gateway import StaticDirectory


async def test_a_deleted_workspace_is_no_longer_reported(tmp_path: Path) -> None:
    kept = AgentRecord("user-alice-kept", "alice", "kept")
    gone = AgentRecord("user-alice-gone", "alice", "gone")
    directory = StaticDirectory(kept, gone)
    verifier = LocalTokenVerifier.from_signing_key(load_or_create_signing_key(tmp_path))
    gateway = create_app(verifier, GatewaySettings(), directory)[GATEWAY_KEY]
    for record in (kept, gone):
        gateway.activity.stream_opened(record.agent_id)
        gateway.activity.stream_closed(record.agent_id)
    gateway.activity.stream_opened("user-alice-busy")  # open streams are never forgotten
    assert {"user-alice-kept", "user-alice-gone"} <= set(gateway.report().agents)

    del directory.by_id[gone.agent_id]

    reported = gateway.report().agents
    assert "user-alice-gone" not in reported
    assert gateway.activity.get("user-alice-gone") is None
    assert reported["user-alice-kept"].last_activity is not None
    assert reported["user-alice-busy"].sessions == 1
