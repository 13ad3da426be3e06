"""Who may open sessions: tokens and JWTs on both transports, web origins, per-client shares, squatting.

Real servers and clients on loopback. Distinct clients without credentials are told apart by their
address: loopback is a /8, so a client bound to 127.0.0.2 is another client than one on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from rtc_server.app import REGISTRY
from rtc_server.clients.webrtc_client import WebRTCClient
from tests.conftest import RunningServer, make_config
from tests.rtc_server.offers import real_offer_sdp

INIT = {"type": "session_init_v2", "curated_prompts": ["a red fox running through fresh snow"]}
GOOD_TOKEN = "good-token-0123456789"
SECRET = "jwt-shared-secret-for-tests-0123456789"
AUDIENCE = "rtcvs"


def jwt_for(
    subject: str, *, key: Any = SECRET, algorithm: str = "HS256", expires_in_s: float = 300, **claims: Any
) -> str:
    now = int(time.time())
    payload = {"sub": subject, "aud": AUDIENCE, "iat": now, "exp": now + int(expires_in_s), **claims}
    return jwt.encode(payload, key, algorithm=algorithm)


async def offer(
    server: RunningServer,
    *,
    token: str | None = None,
    origin: str | None = None,
    content_type: str = "application/json",
    local_host: str = "127.0.0.1",
    session_init: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any], Any]:
    """POST a real offer as a given client; returns status, JSON body and headers."""
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if origin is not None:
        headers["Origin"] = origin
    body = json.dumps({"sdp": await real_offer_sdp(), "type": "offer", "session_init": session_init or INIT})
    connector = aiohttp.TCPConnector(local_addr=(local_host, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.post(f"{server.url}/v1/webrtc/offer", data=body, headers=headers) as response,
    ):
        return response.status, await response.json(content_type=None), response.headers


async def ws_open(server: RunningServer, *, token: str | None = None, via: str = "protocol") -> tuple[Any, list[Any]]:
    """Open /v1/stream with a token (as a subprotocol, or ``?token=``), send the init, and collect what comes back."""
    url = f"{server.url}/v1/stream"
    protocols: tuple[str, ...] = ("rtcvs",)
    if token is not None and via == "protocol":
        protocols = ("rtcvs", f"bearer.{token}")
    elif token is not None:
        url += f"?token={token}"
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(url, protocols=protocols)
    await ws.send_str(json.dumps(INIT))
    messages: list[Any] = []
    try:
        async with asyncio.timeout(5):
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    messages.append(json.loads(message.data))
                    if messages[-1]["type"] in ("ltx2_segment_start", "error"):
                        break
    finally:
        code = ws.close_code
        if code is None:
            await ws.close()
        await http.close()
    return (ws.close_code if code is None else code), messages


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTCVS_TEST_TOKEN", GOOD_TOKEN)
    monkeypatch.setenv("RTCVS_TEST_JWT_SECRET", SECRET)


async def delete_session(server: RunningServer, session_id: str, headers: dict[str, str]) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.delete(f"{server.url}/v1/sessions/{session_id}", headers=headers) as r,
    ):
        return r.status


# -- credentials ------------------------------------------------------------------------------


@pytest.mark.parametrize(("token", "fragment"), [(None, "required"), ("wrong", "not valid")])
async def test_token_mode_refuses_missing_and_wrong_tokens_on_both_transports(
    start_server: Any, token_env: None, token: str | None, fragment: str
) -> None:
    server = await start_server(make_config(auth={"mode": "token", "token_envs": ["RTCVS_TEST_TOKEN"]}))
    status, body, headers = await offer(server, token=token)
    assert status == 401 and body["error"]["code"] == "unauthorized" and fragment in body["error"]["message"]
    assert headers["WWW-Authenticate"].startswith("Bearer")
    code, messages = await ws_open(server, token=token)
    assert code == 4401 and messages[-1]["code"] == "unauthorized"
    assert len(server.app[REGISTRY]) == 0


async def test_token_mode_streams_with_a_good_token_on_both_transports(start_server: Any, token_env: None) -> None:
    server = await start_server(make_config(auth={"mode": "token", "token_envs": ["RTCVS_TEST_TOKEN"]}))
    client = WebRTCClient(server.url, session_init=INIT, auth_token=GOOD_TOKEN)
    try:
        await client.connect()
        await client.wait_for_event("ltx2_segment_complete", timeout=10)
    finally:
        await client.close()
    for via in ("protocol", "query"):
        _, messages = await ws_open(server, token=GOOD_TOKEN, via=via)
        assert messages[-1]["type"] == "ltx2_segment_start", messages


@pytest.mark.parametrize(
    ("make_token", "fragment"),
    [
        (lambda: jwt_for("alice", expires_in_s=-120), "expired"),
        (lambda: jwt_for("alice", key="another-secret-entirely-0123456789"), "not valid"),
        (lambda: jwt.encode({"sub": "alice", "aud": "elsewhere", "exp": int(time.time()) + 60}, SECRET), "not valid"),
        (lambda: jwt.encode({"aud": AUDIENCE, "exp": int(time.time()) + 60}, SECRET), "sub"),
    ],
    ids=["expired", "wrong-key", "wrong-audience", "no-subject"],
)
async def test_jwt_mode_refuses_bad_tokens(start_server: Any, token_env: None, make_token: Any, fragment: str) -> None:
    server = await start_server(
        make_config(auth={"mode": "jwt", "secret_env": "RTCVS_TEST_JWT_SECRET", "audience": AUDIENCE})
    )
    token = make_token()
    status, body, _ = await offer(server, token=token)
    assert status == 401 and fragment in body["error"]["message"]
    code, _ = await ws_open(server, token=token)
    assert code == 4401


async def test_jwt_max_sessions_claim_caps_that_client_on_both_transports(start_server: Any, token_env: None) -> None:
    server = await start_server(
        make_config(auth={"mode": "jwt", "secret_env": "RTCVS_TEST_JWT_SECRET", "audience": AUDIENCE})
    )
    token = jwt_for("bob", max_sessions=1)
    first = WebRTCClient(server.url, session_init=INIT, auth_token=token)
    try:
        await first.connect()
        status, body, headers = await offer(server, token=token)
        assert status == 429 and body["error"]["code"] == "rate_limited" and int(headers["Retry-After"]) >= 1
        code, messages = await ws_open(server, token=token)
        assert code == 4429 and messages[-1]["code"] == "rate_limited"
        # Another subject is not affected.
        status, body, _ = await offer(server, token=jwt_for("carol"))
        assert status == 200, body
    finally:
        await first.close()


async def test_rs256_tokens_are_checked_against_the_public_key(start_server: Any, tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "issuer.pem").write_bytes(public_pem)
    server = await start_server(
        make_config(auth={"mode": "jwt", "public_key_path": str(tmp_path / "issuer.pem"), "audience": AUDIENCE})
    )
    status, body, _ = await offer(server, token=jwt_for("dana", key=private, algorithm="RS256"))
    assert status == 200, body
    status, _, _ = await offer(server, token=jwt_for("dana"))  # HS256 with a secret the server does not use
    assert status == 401


# -- origins, media type, sessions of others --------------------------------------------------


async def test_offers_and_upgrades_from_web_origins_not_allowed_are_refused(start_server: Any) -> None:
    server = await start_server(make_config(server={"allowed_origins": ["https://app.example"]}))
    status, body, _ = await offer(server, origin="https://evil.example")
    assert status == 403 and "evil.example" in body["error"]["message"]
    status, body, headers = await offer(server, origin="https://app.example")
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://app.example"
    async with aiohttp.ClientSession() as http:
        preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        async with http.options(f"{server.url}/v1/webrtc/offer", headers=preflight) as response:
            assert response.status == 204
            assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
        async with http.options(
            f"{server.url}/v1/webrtc/offer", headers={"Origin": "https://evil.example"}
        ) as response:
            assert response.status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(f"{server.url}/v1/stream", headers={"Origin": "https://evil.example"})
        assert info.value.status == 403
    # The server's own page (same host and port) needs no listing.
    status, _, _ = await offer(server, origin=server.url)
    assert status == 200


async def test_an_offer_that_is_not_json_is_refused_before_it_is_read(server: RunningServer) -> None:
    status, body, _ = await offer(server, content_type="text/plain")
    assert status == 415 and "application/json" in body["error"]["message"]
    assert len(server.app[REGISTRY]) == 0


async def test_only_its_client_or_an_operator_may_end_a_session(start_server: Any) -> None:
    server = await start_server(make_config(server={"admin_token": "operator-secret"}))
    status, first, _ = await offer(server)
    status2, second, _ = await offer(server)
    assert status == status2 == 200
    other_client = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with (
        aiohttp.ClientSession(connector=other_client) as http,
        http.delete(f"{server.url}/v1/sessions/{first['session_id']}") as response,
    ):
        assert response.status == 403
    assert await delete_session(server, first["session_id"], {}) == 200
    assert await delete_session(server, second["session_id"], {"Authorization": "Bearer operator-secret"}) == 200


# -- per-client shares and squatting ------------------------------------------------------------


async def test_offers_beyond_a_clients_rate_get_429_with_retry_after(start_server: Any) -> None:
    server = await start_server(make_config(limits={"offers_per_minute": 3, "sessions_per_client": 10}))
    statuses = [(await offer(server))[0] for _ in range(3)]
    status, body, headers = await offer(server)
    assert statuses == [200, 200, 200]
    assert status == 429 and body["error"]["retryable"] is True and int(headers["Retry-After"]) >= 1
    status, _, _ = await offer(server, local_host="127.0.0.2")  # another client is not affected
    assert status == 200


async def test_websocket_session_starts_beyond_a_clients_rate_close_4429(start_server: Any) -> None:
    server = await start_server(make_config(limits={"offers_per_minute": 2, "sessions_per_client": 10}))
    for _ in range(2):
        _, messages = await ws_open(server)
        assert messages[-1]["type"] == "ltx2_segment_start", messages
    code, messages = await ws_open(server)
    assert code == 4429 and messages[-1]["code"] == "rate_limited" and messages[-1]["retryable"] is True
    assert "retry" in messages[-1]["message"].lower()


async def test_fifty_offers_that_never_connect_do_not_lock_another_client_out(start_server: Any) -> None:
    server = await start_server(make_config(streaming={"max_sessions": 2, "max_queue": 0}))
    statuses = [(await offer(server, local_host="127.0.0.2"))[0] for _ in range(50)]
    assert statuses.count(200) == 4 and set(statuses) == {200, 429}  # sessions_per_client
    started = time.monotonic()
    async with WebRTCClient(server.url, session_init=INIT) as client:
        await client.connect()
        await client.wait_for_event("ltx2_segment_complete", timeout=10)
    assert time.monotonic() - started < 5


# -- behind a proxy -----------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Real-IP"])
async def test_without_an_auth_section_forwarded_requests_are_refused(start_server: Any, header: str) -> None:
    # Behind a reverse proxy every visitor arrives from loopback: "this machine only" would mean anyone.
    server = await start_server(make_config())
    forwarded = {header: "for=203.0.113.9" if header == "Forwarded" else "203.0.113.9"}
    body = json.dumps({"sdp": await real_offer_sdp(), "type": "offer", "session_init": INIT})
    async with aiohttp.ClientSession() as http:
        headers = {"Content-Type": "application/json", **forwarded}
        async with http.post(f"{server.url}/v1/webrtc/offer", data=body, headers=headers) as response:
            assert response.status == 403
            assert "proxy" in (await response.json())["error"]["message"]
        async with http.get(f"{server.url}/v1/webrtc/ice-servers", headers=forwarded) as response:
            assert response.status == 403
        async with http.ws_connect(f"{server.url}/v1/stream", protocols=("rtcvs",), headers=forwarded) as ws:
            message = await ws.receive_json(timeout=5)
            assert message["type"] == "error" and message["code"] == "unauthorized"
            await ws.receive(timeout=5)
            assert ws.close_code == 4401
    assert len(server.app[REGISTRY]) == 0
    status, _, _ = await offer(server)  # the same machine, not forwarded: served
    assert status == 200


async def test_auth_mode_none_serves_forwarded_requests_knowingly(start_server: Any) -> None:
    server = await start_server(make_config(auth={"mode": "none"}))
    async with aiohttp.ClientSession() as http:
        headers = {"X-Forwarded-For": "203.0.113.9"}
        async with http.get(f"{server.url}/v1/webrtc/ice-servers", headers=headers) as response:
            assert response.status == 200
