"""TURN with short-lived credentials, against a real coturn on loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import socket
import time
from typing import Any

import aiohttp
import aioice.stun
import pytest
from aiortc import RTCSessionDescription

from rtc_server.clients.webrtc_client import IceGatheringFailed, WebRTCClient, fetch_ice_servers
from rtc_server.config import WebRTCConfig
from rtc_server.transports.ice import restrict_host_candidates
from rtc_server.transports.turn_credentials import IceServerList, TurnSetupError, turn_credential
from tests.conftest import make_config
from tests.turn_fixture import TurnServer

SECRET_ENV = "RTCVS_TEST_TURN_SECRET"
INIT = {"curated_prompts": ["a red fox running through fresh snow"]}


def turn_config(turn: TurnServer, **turn_options: Any) -> dict[str, Any]:
    return {"turn": {"urls": [turn.url], "secret_env": SECRET_ENV, "ttl_seconds": 600, **turn_options}}


@pytest.fixture
def turn(turn_server: TurnServer, monkeypatch: pytest.MonkeyPatch) -> TurnServer:
    monkeypatch.setenv(SECRET_ENV, turn_server.secret)
    return turn_server


def test_credentials_follow_the_turn_rest_scheme_and_expire_after_the_ttl() -> None:
    config = WebRTCConfig.model_validate(
        {"turn": {"urls": ["turn:t.example:3478"], "secret_env": "S", "ttl_seconds": 900}}
    )
    servers = IceServerList(config, environ={"S": "sekrit"}, clock=lambda: 1_000_000.0)
    issued = servers.issue()
    expiry, _, ident = issued.username.partition(":")
    assert int(expiry) == issued.expires_at == 1_000_900 and len(ident) == 16
    expected = base64.b64encode(hmac.new(b"sekrit", issued.username.encode(), hashlib.sha1).digest()).decode()
    assert issued.credential == expected == turn_credential(b"sekrit", issued.username)
    assert servers.issue().username != issued.username, "every call hands out a new username"


def test_a_missing_or_empty_secret_variable_is_an_error_naming_it() -> None:
    config = WebRTCConfig.model_validate({"turn": {"urls": ["turn:t.example"], "secret_env": "RTCVS_NOPE"}})
    for environ in ({}, {"RTCVS_NOPE": ""}):
        with pytest.raises(TurnSetupError, match="RTCVS_NOPE"):
            IceServerList(config, environ=environ)


def test_turn_urls_must_be_turn_urls() -> None:
    with pytest.raises(ValueError, match="turn: or turns:"):
        WebRTCConfig.model_validate({"turn": {"urls": ["stun:t.example"], "secret_env": "S"}})


async def test_the_endpoint_hands_out_fresh_credentials_never_the_secret(turn: TurnServer, start_server: Any) -> None:
    stun = {"urls": ["stun:stun.example.org:3478"]}
    server = await start_server(make_config(webrtc={**turn_config(turn), "client_ice_servers": [stun]}))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/v1/webrtc/ice-servers") as response:
            assert response.status == 200
            assert response.headers["Cache-Control"] == "no-store"
            raw = await response.text()
        second, ttl = await fetch_ice_servers(server.url, http=http)
    assert turn.secret not in raw
    first, _ = await fetch_ice_servers(server.url)
    assert ttl == 600
    assert first[0]["urls"] == [turn.url] and first[1] == stun
    assert first[0]["username"] != second[0]["username"]
    expiry = int(first[0]["username"].split(":")[0])
    assert time.time() + 590 < expiry <= time.time() + 601
    assert first[0]["credential"] == turn_credential(turn.secret.encode(), first[0]["username"])


async def test_without_turn_the_endpoint_returns_the_static_client_list(start_server: Any) -> None:
    static = [{"urls": "stun:stun.example.org:3478"}]
    server = await start_server(make_config(webrtc={"ice_servers": [], "client_ice_servers": static}))
    servers, ttl = await fetch_ice_servers(server.url)
    assert servers == static and ttl == 24 * 3600


async def test_the_endpoint_needs_the_same_credentials_as_an_offer(
    turn: TurnServer, start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTCVS_TEST_TOKEN", "let-me-in")
    config = make_config(webrtc=turn_config(turn), auth={"mode": "token", "token_envs": ["RTCVS_TEST_TOKEN"]})
    server = await start_server(config)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/v1/webrtc/ice-servers") as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "unauthorized"
        headers = {"Origin": "https://evil.example"}
        async with http.get(f"{server.url}/v1/webrtc/ice-servers", headers=headers) as response:
            assert response.status == 403
    servers, _ = await fetch_ice_servers(server.url, auth_token="let-me-in")
    assert servers[0]["username"]


async def wait_for_segments(client: WebRTCClient, count: int) -> None:
    await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == count - 1, timeout=30)
    deadline = time.monotonic() + 15
    while {f.marker.segment_idx for f in client.frames if f.marker} < set(range(count)):
        assert time.monotonic() < deadline, "frames of every segment must arrive"
        await asyncio.sleep(0.05)


async def test_a_relay_only_client_streams_two_segments_through_coturn(turn: TurnServer, start_server: Any) -> None:
    server = await start_server(make_config(webrtc=turn_config(turn)))
    ice_servers, _ = await fetch_ice_servers(server.url)
    async with WebRTCClient(server.url, session_init=INIT, ice_servers=ice_servers, relay_only=True) as client:
        await client.connect()
        offer = client.pc.localDescription.sdp
        candidates = [line for line in offer.splitlines() if line.startswith("a=candidate")]
        assert candidates and all(" typ relay " in line for line in candidates), candidates
        await wait_for_segments(client, 2)
    username = ice_servers[0]["username"]
    assert f"user <{username}>: incoming packet ALLOCATE processed, success" in turn.log_text()


async def test_the_server_side_gathers_relay_candidates_when_asked(turn: TurnServer, start_server: Any) -> None:
    server = await start_server(make_config(webrtc=turn_config(turn, server_side=True)))
    ice_servers, _ = await fetch_ice_servers(server.url)
    async with WebRTCClient(server.url, session_init=INIT, ice_servers=ice_servers, relay_only=True) as client:
        await client.connect()
        answer = client.pc.remoteDescription.sdp
        assert " typ relay " in answer and " typ host" in answer
        await wait_for_segments(client, 1)


async def test_a_check_the_relay_dropped_is_resent_when_the_peer_checks(
    turn: TurnServer, start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server's first check reaches the client's relay before the client has opened it (coturn
    # drops it). The client's own check arriving is the cue to resend at once; without that, the
    # session waits for the retransmission timer, stretched here to a minute so it could not start.
    monkeypatch.setattr(aioice.stun, "RETRY_RTO", 60.0)
    server = await start_server(make_config(webrtc=turn_config(turn)))
    ice_servers, _ = await fetch_ice_servers(server.url)
    async with WebRTCClient(server.url, session_init=INIT, ice_servers=ice_servers, relay_only=True) as client:
        await client.connect()
        await wait_for_segments(client, 1)


@pytest.mark.parametrize("spoil", ["expired", "forged"])
async def test_spoiled_credentials_are_refused_by_coturn_and_the_client_says_so(
    spoil: str, turn: TurnServer, start_server: Any
) -> None:
    server = await start_server(make_config(webrtc=turn_config(turn)))
    if spoil == "expired":
        # Issued by the right secret, but two hours ago with a one-hour lifetime.
        config = WebRTCConfig.model_validate(turn_config(turn, ttl_seconds=3600))
        old = IceServerList(config, environ={SECRET_ENV: turn.secret}, clock=lambda: time.time() - 7200)
        ice_servers = old.for_clients()
    else:
        ice_servers, _ = await fetch_ice_servers(server.url)
        ice_servers[0]["credential"] = turn_credential(b"not the secret", ice_servers[0]["username"])
    client = WebRTCClient(server.url, session_init=INIT, ice_servers=ice_servers, relay_only=True)
    async with client:
        with pytest.raises(IceGatheringFailed, match="TURN allocation") as refused:
            await client.connect()
    assert "401" in str(refused.value) or "Unauthorized" in str(refused.value)
    assert client.session_id is None, "no offer is sent without a way to connect"


async def test_gathering_waits_for_a_silent_turn_server_no_longer_than_configured(
    turn: TurnServer, start_server: Any
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # takes TURN requests, answers none
        silent.bind(("127.0.0.1", 0))
        url = f"turn:127.0.0.1:{silent.getsockname()[1]}?transport=udp"
        webrtc = {"turn": {"urls": [url], "secret_env": SECRET_ENV, "server_side": True}, "gather_timeout_seconds": 1.0}
        server = await start_server(make_config(webrtc=webrtc))
        async with WebRTCClient(server.url, session_init=INIT) as client:
            started = time.monotonic()
            await client.connect()
            answered_in = time.monotonic() - started
            assert 0.9 <= answered_in < 3.5, answered_in  # aioice alone would wait 5 s
            answer = client.pc.remoteDescription.sdp
            assert " typ host" in answer and " typ relay" not in answer
            await wait_for_segments(client, 1)
        assert silent.recv(2048)[:2] == b"\x00\x03", "the server did ask it for an allocation"


async def test_the_connect_timeout_counts_from_the_answer_not_from_the_offer(
    turn: TurnServer, start_server: Any
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        url = f"turn:127.0.0.1:{silent.getsockname()[1]}?transport=udp"
        webrtc = {
            "turn": {"urls": [url], "secret_env": SECRET_ENV, "server_side": True},
            "gather_timeout_seconds": 2.5,  # longer than the whole connect timeout
            "connect_timeout_seconds": 2.0,
        }
        server = await start_server(make_config(webrtc=webrtc))
        async with WebRTCClient(server.url, session_init=INIT) as client:
            client.pc.addTransceiver("video", direction="recvonly")
            restrict_host_candidates(client.pc, ["127.0.0.1"])
            await client.pc.setLocalDescription(await client.pc.createOffer())
            body = {"sdp": client.pc.localDescription.sdp, "type": "offer", "session_init": INIT}
            async with aiohttp.ClientSession() as http, http.post(f"{server.url}/v1/webrtc/offer", json=body) as response:
                answer = await response.json()
            await asyncio.sleep(1.0)  # a far-away client: the answer takes its time to arrive and apply
            await client.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            await client.wait_channel_open(timeout=10)
            await wait_for_segments(client, 1)
