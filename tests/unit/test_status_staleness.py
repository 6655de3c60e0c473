"""ONLINE follows the gateway only while its data is fresh (runbook §3: a gateway outage)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kuberde.operator.status import PodView, StatusFacts, build_status
from kuberde.policy import ActivitySnapshot

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
POD = PodView("user-testuser-ssh-server-7c445d9b55-dn7ff", True, NOW - timedelta(hours=1))
ONLINE = ActivitySnapshot(True, 0, None, None, NOW - timedelta(seconds=90))


def facts(*, fresh: bool) -> StatusFacts:
    return StatusFacts(
        generation=1,
        replicas=1,
        ttl=timedelta(minutes=5),
        pod=POD,
        snapshot=ONLINE,
        fresh=fresh,
        seen_online_at=NOW - timedelta(minutes=30),
    )


def test_fresh_data_shows_the_agent_online() -> None:
    status = build_status(facts(fresh=True), {}, NOW)
    assert (status["phase"], status["online"]) == ("Running", True)


def test_stale_data_is_not_online_and_says_why() -> None:
    """The last report said online 90 s ago; the gateway has not answered since."""
    status = build_status(facts(fresh=False), {"phase": "Running", "pod": POD.name}, NOW)
    assert status["online"] is False
    assert "no fresh activity data from the gateway: ONLINE unknown" in status["message"]
    connected = next(c for c in status["conditions"] if c["type"] == "Connected")
    assert (connected["status"], connected["reason"]) == ("Unknown", "GatewayUnreachable")
