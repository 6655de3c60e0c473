"""The gateway over real sockets: users on /connect, workspace peers on /ws, operator on /mgmt."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kuberde.auth import (
    ALGORITHM,
    LOCAL_ISSUER,
    USER_AUDIENCE,
    SigningKey,
    TokenIssuer,
)
from kuberde.gateway.app import GatewaySettings
from kuberde.mux import Preamble, SessionClosed, SessionConfig, Stream, StreamReset
from tests.integration.conftest import (
    WAIT,
    GatewayFactory,
    RunningGateway,
    abort_connection,
    bearer,
    echo,
    exchange,
    next_message,
    read_bytes,
    receive_all,
    reset_with,
    send_payload,
    upgrade_headers,
)

BANNER = b"SSH-2.0-workspace\r\n"


def forged_token(key: SigningKey, *, kid: str | None = None, **claims: Any) -> str:
    """A token signed directly with PyJWT, for claims our issuer refuses to produce."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": LOCAL_ISSUER,
        "aud": USER_AUDIENCE,
        "sub": "alice",
        "iat": now,
        "exp": now + 3600,
        **claims,
    }
    return jwt.encode(
        payload, key.private_key, algorithm=ALGORITHM, headers={"kid": kid or key.kid}
    )


def auth_failures(metrics_text: str) -> dict[tuple[str, str], float]:
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "kuberde_auth_failures_total":
                counts[(sample.labels["endpoint"], sample.labels["reason"])] = sample.value
    return counts


def assert_error_body(body: str, reason: str, secret: str | None) -> None:
    document = json.loads(body)
    assert document["reason"] == reason, document
    assert isinstance(document["error"], str) and document["error"], document
    if secret:
        assert secret not in body
        for segment in secret.split("."):
            if len(segment) >= 8:
                assert segment not in body, "part of the refused token was echoed back"


# ---- /connect: the happy path ----------------------------------------------------------------


@pytest.mark.parametrize("reference", ["dev", "user-alice-dev"])
async def test_connect_relays_megabytes_with_preamble_banner_and_clean_close(
    gateway: RunningGateway, reference: str
) -> None:
    peer = await gateway.peer("alice", "dev", echo(BANNER))
    user = await gateway.connect(reference, gateway.user("alice"), port=22, kind="ssh")
    served = await peer.next_stream()
    assert served.preamble == Preamble(port=22, kind="ssh", user="alice")

    payload = os.urandom(6 * 1024 * 1024 + 123)
    received = await exchange(user, payload)

    assert received.data[: len(BANNER)] == BANNER
    assert hashlib.sha256(received.data[len(BANNER) :]).digest() == hashlib.sha256(payload).digest()
    assert len(received.data) == len(BANNER) + len(payload)
    assert received.events == [{"event": "eof"}]
    assert received.close_code == 1000
    assert peer.handler_errors == []


async def test_connect_without_port_or_kind_sends_null_port_and_tcp(
    gateway: RunningGateway,
) -> None:
    peer = await gateway.peer("alice", "dev")
    user = await gateway.connect("dev", gateway.user("alice"), port=None, kind=None)
    served = await peer.next_stream()
    assert served.preamble == Preamble(port=None, kind="tcp", user="alice")
    await user.close()


async def test_user_half_close_lets_the_workspace_answer_afterwards(
    gateway: RunningGateway,
) -> None:
    """The workspace sees EOF only after all bytes, and can still send after it."""

    async def digest_after_eof(preamble: Preamble, rest: bytes, stream: Stream) -> None:
        hasher = hashlib.sha256(rest)
        size = len(rest)
        while data := await stream.read():
            hasher.update(data)
            size += len(data)
        stream.write(f"{size} {hasher.hexdigest()}\n".encode())
        stream.close_write()
        await stream.wait_closed()

    await gateway.peer("alice", "dev", digest_after_eof)
    user = await gateway.connect("dev", gateway.user("alice"))
    payload = os.urandom(3 * 1024 * 1024)
    received = await exchange(user, payload)

    expected = f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()
    assert received.data == expected
    assert received.events == [{"event": "eof"}]
    assert received.close_code == 1000


async def test_workspace_half_close_lets_the_user_keep_sending(gateway: RunningGateway) -> None:
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def banner_then_read(preamble: Preamble, rest: bytes, stream: Stream) -> None:
        stream.write(BANNER)
        stream.close_write()
        data = bytearray(rest)
        while chunk := await stream.read():
            data.extend(chunk)
        got.set_result(bytes(data))
        await stream.wait_closed()

    await gateway.peer("alice", "dev", banner_then_read)
    user = await gateway.connect("dev", gateway.user("alice"))
    assert await read_bytes(user, len(BANNER)) == BANNER
    assert await next_message(user) == {"event": "eof"}

    payload = os.urandom(1024 * 1024)
    await asyncio.wait_for(send_payload(user, payload, eof=True), WAIT)
    assert await asyncio.wait_for(got, WAIT) == payload
    received = await receive_all(user)
    assert received.data == b""
    assert received.events == []
    assert received.close_code == 1000


async def test_user_bytes_sent_before_connected_follow_the_preamble(
    gateway: RunningGateway,
) -> None:
    """A client may write as soon as the upgrade is done, before the stream to the agent exists."""
    peer = await gateway.peer("alice", "dev", echo(BANNER))
    user = await asyncio.wait_for(
        gateway.http.ws_connect(
            f"{gateway.ws_url}/connect/dev?port=22&kind=ssh", headers=bearer(gateway.user("alice"))
        ),
        WAIT,
    )
    await user.send_bytes(b"early ")
    await user.send_bytes(b"bytes")
    await user.send_str(json.dumps({"event": "eof"}))

    received = await receive_all(user)
    assert received.events == [{"event": "connected"}, {"event": "eof"}]
    assert received.data == BANNER + b"early bytes"
    assert received.close_code == 1000
    assert [served.preamble for served in peer.streams] == [Preamble(22, "ssh", "alice")]


@pytest.mark.parametrize("how", ["close-at-once", "abort-mid-stream"])
async def test_a_user_who_leaves_resets_the_workspace_stream(
    gateway: RunningGateway, how: str
) -> None:
    peer = await gateway.peer("alice", "dev", echo(BANNER))
    user = await asyncio.wait_for(
        gateway.http.ws_connect(
            f"{gateway.ws_url}/connect/dev?port=22", headers=bearer(gateway.user("alice"))
        ),
        WAIT,
    )
    if how == "close-at-once":
        await asyncio.wait_for(user.close(), WAIT)
    else:
        assert await next_message(user) == {"event": "connected"}
        assert await read_bytes(user, len(BANNER)) == BANNER
        abort_connection(user)

    async def stream_gone() -> None:
        while not (peer.accepted and peer.session.stream_count == 0 and peer.handler_errors):
            await peer.session.ping()

    await asyncio.wait_for(stream_gone(), WAIT)
    assert all(isinstance(error, StreamReset) for error in peer.handler_errors)
    idle = await gateway.wait_agent("user-alice-dev", lambda a: a["sessions"] == 0)
    assert idle["last_activity_source"] == "stream closed"
    assert idle["online"] is True


async def test_admin_reaches_another_users_agent_by_full_id_only(gateway: RunningGateway) -> None:
    peer = await gateway.peer("alice", "dev", echo(BANNER))
    root = gateway.user("root", admin=True)
    user = await gateway.connect("user-alice-dev", root, port=22, kind="ssh")
    served = await peer.next_stream()
    assert served.preamble == Preamble(port=22, kind="ssh", user="root")
    received = await exchange(user, b"hello")
    assert received.data == BANNER + b"hello"
    assert received.close_code == 1000

    # A short name always means one of the caller's own agents, even for an admin.
    status, body = await gateway.refused("/connect/dev?port=22", upgrade_headers(root))
    assert status == 404
    assert_error_body(body, "not_found", root)


# ---- refusals before the upgrade -------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    path: str
    authorization: Callable[[RunningGateway], str | None]
    status: int
    endpoint: str
    reason: str


def _header(token_of: Callable[[RunningGateway], str]) -> Callable[[RunningGateway], str]:
    return lambda gateway: f"Bearer {token_of(gateway)}"


CONNECT = "/connect/dev?port=22&kind=ssh"
EXPIRED: dict[str, Any] = {"iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600}
AUTH_REFUSALS = {
    "connect-missing-header": Refusal(CONNECT, lambda g: None, 401, "user", "missing"),
    "connect-basic-scheme": Refusal(
        CONNECT, lambda g: "Basic YWxpY2U6c2VjcmV0", 401, "user", "malformed"
    ),
    "connect-bearer-without-token": Refusal(CONNECT, lambda g: "Bearer ", 401, "user", "missing"),
    "connect-token-with-spaces": Refusal(
        CONNECT, lambda g: "Bearer not a token", 401, "user", "malformed"
    ),
    "connect-garbage-token": Refusal(
        CONNECT, _header(lambda g: "bm90.YS5qd3Q.garbage"), 401, "user", "malformed"
    ),
    "connect-expired": Refusal(
        CONNECT, _header(lambda g: forged_token(g.key, **EXPIRED)), 401, "user", "expired"
    ),
    "connect-foreign-audience": Refusal(
        CONNECT,
        _header(lambda g: forged_token(g.key, aud="another-service")),
        401,
        "user",
        "bad_audience",
    ),
    "connect-agent-credential": Refusal(
        CONNECT, _header(lambda g: g.issuer.mint_agent("alice", "dev")), 401, "user", "wrong_kind"
    ),
    "connect-management-token": Refusal(
        CONNECT, _header(lambda g: g.issuer.mint_management()), 401, "user", "wrong_kind"
    ),
    "connect-other-signing-key": Refusal(
        CONNECT,
        _header(lambda g: TokenIssuer(SigningKey.generate()).mint_user("alice")),
        401,
        "user",
        "unknown_key",
    ),
    "connect-other-key-claiming-our-kid": Refusal(
        CONNECT,
        _header(lambda g: forged_token(SigningKey.generate(), kid=g.key.kid)),
        401,
        "user",
        "bad_signature",
    ),
    "ws-missing-header": Refusal("/ws", lambda g: None, 401, "agent", "missing"),
    "ws-user-token": Refusal("/ws", _header(lambda g: g.user("alice")), 401, "agent", "wrong_kind"),
    "ws-expired-agent-credential": Refusal(
        "/ws",
        _header(
            lambda g: forged_token(
                g.key, aud="kuberde-agent", sub="user-alice-dev", owner="alice", **EXPIRED
            )
        ),
        401,
        "agent",
        "expired",
    ),
    "mgmt-missing-header": Refusal("/mgmt/agents", lambda g: None, 401, "management", "missing"),
    "mgmt-user-token": Refusal(
        "/mgmt/agents", _header(lambda g: g.user("alice")), 401, "management", "wrong_kind"
    ),
    "mgmt-agent-credential": Refusal(
        "/mgmt/agents/user-alice-dev",
        _header(lambda g: g.issuer.mint_agent("alice", "dev")),
        401,
        "management",
        "wrong_kind",
    ),
}


@pytest.mark.parametrize("case", AUTH_REFUSALS.values(), ids=AUTH_REFUSALS.keys())
async def test_bad_credentials_are_refused_before_upgrade_and_counted(
    gateway: RunningGateway, case: Refusal
) -> None:
    peer = await gateway.peer("alice", "dev")
    authorization = case.authorization(gateway)
    headers = upgrade_headers()
    if authorization is not None:
        headers["Authorization"] = authorization

    status, body = await gateway.refused(case.path, headers)

    assert status == case.status
    secret = authorization.partition(" ")[2] if authorization else None
    assert_error_body(body, case.reason, secret)
    assert auth_failures(await gateway.metrics()) == {(case.endpoint, case.reason): 1.0}
    assert peer.streams == []


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/connect/user-alice-dev?port=22", 404, "not_found"),
        ("/connect/nothing-here?port=22", 404, "not_found"),
        ("/connect/user-bob-nothing?port=22", 404, "not_found"),
        ("/connect/dev?port=0", 400, "bad_port"),
        ("/connect/dev?port=70000", 400, "bad_port"),
        ("/connect/dev?port=abc", 400, "bad_port"),
        ("/connect/dev?port=-1", 400, "bad_port"),
        ("/connect/dev?port=22&kind=telnet", 400, "bad_kind"),
    ],
)
async def test_bad_requests_from_a_valid_user_are_refused_before_upgrade(
    gateway: RunningGateway, path: str, status: int, reason: str
) -> None:
    alice = await gateway.peer("alice", "dev")
    bob = await gateway.peer("bob", "dev")
    token = gateway.user("bob")

    got_status, body = await gateway.refused(path, upgrade_headers(token))

    assert got_status == status
    assert_error_body(body, reason, token)
    assert alice.streams == [] and bob.streams == []
    assert auth_failures(await gateway.metrics()) == {}


@pytest.mark.parametrize("reference", ["user-alice-smith-dev", "smith-dev"])
async def test_owner_is_never_matched_by_prefix(gateway: RunningGateway, reference: str) -> None:
    """`alice` must not reach `alice-smith`'s agent `dev`, whose ID starts with `user-alice-`."""
    other = await gateway.peer("alice-smith", "dev")
    token = gateway.user("alice")

    status, body = await gateway.refused(f"/connect/{reference}?port=22", upgrade_headers(token))

    assert status == 404
    assert_error_body(body, "not_found", token)
    assert other.streams == []


@pytest.mark.parametrize("path", ["/connect/{}?port=22", "/api/agents/{}"])
async def test_someone_elses_workspace_looks_the_same_as_a_missing_one(
    gateway: RunningGateway, path: str
) -> None:
    """Status and body say nothing of whether `user-bob-dev` exists, nor who owns it."""
    bob = await gateway.peer("bob", "dev")
    headers = upgrade_headers(gateway.user("alice"))

    answers = []
    for agent in ("user-bob-dev", "user-bob-ved"):
        status, body = await gateway.refused(path.format(agent), headers)
        answers.append((status, json.loads(body.replace(agent, "NAME"))))

    assert answers[0] == answers[1]
    assert answers[0][0] == 404
    assert answers[0][1]["error"].startswith("no workspace named 'NAME'")
    assert "bob" not in json.dumps(answers[0][1]).replace("user-bob", "")
    assert bob.streams == []


async def test_a_colliding_credential_of_another_owner_cannot_take_over_a_session(
    gateway: RunningGateway,
) -> None:
    """`alice`/`smith-dev` and `alice-smith`/`dev` share the ID `user-alice-smith-dev`.

    With no directory to say which is real, the one that is online must keep the ID: a
    credential of another owner replacing it would route alice-smith's users to alice.
    """
    victim = await gateway.peer("alice-smith", "dev", echo(b"victim\n"))
    try:
        impostor = await gateway.peer("alice", "smith-dev", echo(b"impostor\n"))
    except aiohttp.WSServerHandshakeError as refused:
        assert refused.status in (403, 409)
    else:
        await asyncio.wait_for(impostor.session.ping(), WAIT)
    # Control frames are ordered: a go-away to the victim would arrive before this pong.
    with contextlib.suppress(SessionClosed):
        await asyncio.wait_for(victim.session.ping(), WAIT)
    assert not victim.session.peer_going_away, "another owner's credential replaced the session"
    assert not victim.session.is_closed

    user = await gateway.connect("dev", gateway.user("alice-smith"))
    assert await read_bytes(user, len(b"victim\n")) == b"victim\n"
    await user.close()


# ---- health, metrics and the management API --------------------------------------------------


async def test_health_endpoints_respond(gateway: RunningGateway) -> None:
    for path in ("/healthz", "/readyz"):
        async with asyncio.timeout(WAIT), gateway.http.get(gateway.url + path) as response:
            assert response.status == 200
            assert isinstance(await response.json(), dict)
    metrics = await gateway.metrics()
    assert "kuberde_agents_online" in metrics
    assert "kuberde_event_loop_lag_seconds" in metrics


async def test_management_api_reports_sessions_and_activity(gateway: RunningGateway) -> None:
    assert (await gateway.mgmt())["agents"] == []
    await gateway.peer("alice", "dev")
    connected = (await gateway.agents())["user-alice-dev"]
    assert connected["online"] is True
    assert connected["owner"] == "alice"
    assert connected["sessions"] == 0
    # Connecting is not use: a gateway restart reconnects every agent.
    assert (connected["last_activity"], connected["last_activity_source"]) == (None, None)
    since = datetime.fromisoformat(connected["connected_since"])
    assert since.tzinfo is not None

    user = await gateway.connect("dev", gateway.user("alice"))
    busy = await gateway.mgmt("/mgmt/agents/user-alice-dev")
    assert busy["sessions"] == 1
    assert busy["last_activity_source"] in ("stream opened", "bytes")
    assert busy["connected_since"] == connected["connected_since"]

    received = await exchange(user, b"ping")
    assert received.data == b"ping"
    idle = await gateway.wait_agent("user-alice-dev", lambda a: a["sessions"] == 0)
    assert idle["last_activity_source"] == "stream closed"
    assert idle["online"] is True
    assert datetime.fromisoformat(idle["last_activity"]) >= datetime.fromisoformat(
        busy["last_activity"]
    )

    listing = await gateway.mgmt()
    assert datetime.fromisoformat(listing["generated_at"]).tzinfo is not None
    assert [agent["id"] for agent in listing["agents"]] == ["user-alice-dev"]
    assert set(listing["agents"][0]) >= {
        "online",
        "sessions",
        "last_activity",
        "last_activity_source",
        "connected_since",
    }


async def test_management_api_requires_a_management_token(gateway: RunningGateway) -> None:
    for headers in ({}, bearer(gateway.user("alice", admin=True))):
        status, body = await gateway.refused("/mgmt/agents", headers)
        assert status == 401, body
    mgmt = bearer(gateway.issuer.mint_management())
    async with (
        asyncio.timeout(WAIT),
        gateway.http.get(gateway.url + "/mgmt/agents/user-nobody-dev", headers=mgmt) as response,
    ):
        assert response.status == 404
        assert_error_body(await response.text(), "not_found", None)


# ---- agent sessions come and go --------------------------------------------------------------


async def test_second_session_replaces_the_first_and_lets_its_streams_finish(
    gateway: RunningGateway,
) -> None:
    first = await gateway.peer("alice", "dev", echo(b"first\n"))
    before = (await gateway.agents())["user-alice-dev"]["connected_since"]
    old_user = await gateway.connect("dev", gateway.user("alice"))
    assert await read_bytes(old_user, 6) == b"first\n"

    second = await gateway.peer("alice", "dev", echo(b"second\n"))

    await asyncio.wait_for(first.session.wait_peer_going_away(), WAIT)
    assert not first.session.is_closed

    # The stream on the replaced session keeps working in both directions.
    await old_user.send_bytes(b"still here")
    assert await read_bytes(old_user, 10) == b"still here"

    # New users reach the new session.
    new_user = await gateway.connect("dev", gateway.user("alice"))
    served = await second.next_stream()
    assert served.preamble.user == "alice"
    assert await read_bytes(new_user, 7) == b"second\n"
    assert len(first.streams) == 1

    payload = os.urandom(512 * 1024)
    old_received = await exchange(old_user, payload)
    assert old_received.data == payload
    assert old_received.close_code == 1000

    # With its last stream done, the replaced session is closed by the gateway.
    await asyncio.wait_for(first.session.wait_closed(), WAIT)
    new_received = await exchange(new_user, b"on the new session")
    assert new_received.data == b"on the new session"
    assert new_received.close_code == 1000
    listing = (await gateway.agents())["user-alice-dev"]
    assert listing["online"] is True
    assert datetime.fromisoformat(listing["connected_since"]) > datetime.fromisoformat(before)
    assert first.handler_errors == [] and second.handler_errors == []


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_agent_vanishing_mid_stream_closes_the_user_with_4500(
    gateway: RunningGateway, how: str
) -> None:
    peer = await gateway.peer("alice", "dev", echo(BANNER))
    user = await gateway.connect("dev", gateway.user("alice"))
    assert await read_bytes(user, len(BANNER)) == BANNER

    if how == "close":
        await asyncio.wait_for(peer.session.close("workspace stopping"), WAIT)
    else:
        peer.abort()

    received = await receive_all(user)
    assert received.close_code == 4500
    assert received.close_reason
    assert received.events == [{"event": "error", "message": received.close_reason}]

    await gateway.wait_agent("user-alice-dev", lambda a: not a["online"] and a["sessions"] == 0)
    token = gateway.user("alice")
    status, body = await gateway.refused("/connect/dev?port=22", upgrade_headers(token))
    assert status == 404
    assert_error_body(body, "not_found", token)


async def test_agent_reset_reason_reaches_the_user_as_close_4500(
    gateway: RunningGateway,
) -> None:
    reason = "port 5432 is not allowed for this agent"
    peer = await gateway.peer("alice", "dev", reset_with(reason))
    user = await gateway.connect("dev", gateway.user("alice"), port=5432, kind="tcp")
    served = await peer.next_stream()
    assert served.preamble == Preamble(port=5432, kind="tcp", user="alice")

    received = await receive_all(user)
    assert received.close_code == 4500
    assert received.close_reason == reason
    assert received.events == [{"event": "error", "message": reason}]
    assert received.data == b""
    await gateway.wait_agent("user-alice-dev", lambda a: a["sessions"] == 0 and a["online"])


async def test_agent_dropping_its_tcp_connection_is_marked_offline(
    gateway: RunningGateway,
) -> None:
    peer = await gateway.peer("alice", "dev")
    peer.abort()
    offline = await gateway.wait_agent("user-alice-dev", lambda a: not a["online"])
    assert offline["sessions"] == 0


async def test_silent_agent_is_declared_dead_by_keepalive(
    start_gateway: GatewayFactory,
) -> None:
    """A peer whose connection stays up but never answers pings (a frozen pod) goes offline."""
    settings = GatewaySettings(
        mux=SessionConfig(accept_backlog=0, keepalive_interval=0.1, keepalive_timeout=0.3)
    )
    gateway = await start_gateway(settings)
    silent = await gateway.agent_socket(gateway.issuer.mint_agent("alice", "dev"))
    # Listed only once registered, and still listed offline; connecting was no activity.
    dead = await gateway.wait_agent("user-alice-dev", lambda a: not a["online"])
    assert dead["last_activity"] is None

    async def closed() -> None:
        while (await silent.receive()).type not in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
        ):
            pass

    await asyncio.wait_for(closed(), WAIT)
