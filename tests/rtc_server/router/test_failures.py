"""What clients see through the router when replicas are missing, full, dying or refusing them."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from rtc_server.app import REGISTRY, build_app
from rtc_server.clients.webrtc_client import OfferRejected, WebRTCClient
from rtc_server.clients.ws_client import WebSocketClient
from rtc_server.router.app import BRIDGES
from rtc_server.router.registry import ReplicaState
from tests.conftest import LOOPBACK, RunningServer, make_config
from tests.processes import free_port
from tests.rtc_server.offers import real_offer_sdp
from tests.rtc_server.router.conftest import (
    INIT,
    ProcessHandle,
    StartRouter,
    replica_config,
    replica_process_config,
    wait_until,
)

TOKEN_ENV = "RTCVS_ROUTER_TEST_TOKEN"
TOKEN = "router-test-token"


async def websocket_refusal(url: str, protocols: tuple[str, ...] = ("rtcvs",)) -> tuple[dict[str, Any], int | None, str | None]:
    """Open /v1/stream at ``url``: the first message, the close code, the answered subprotocol."""
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url.replace("http://", "ws://") + "/v1/stream", protocols=protocols)
        message = await ws.receive(timeout=10)
        assert message.type is aiohttp.WSMsgType.TEXT, message
        closing = await ws.receive(timeout=10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), closing
        await ws.close()
        return json.loads(message.data), ws.close_code, ws.protocol


async def test_with_no_healthy_replica_sessions_are_refused_retryably(start_router: StartRouter) -> None:
    nobody = f"http://{LOOPBACK}:{free_port(LOOPBACK)}"  # nothing listens there
    router = await start_router([nobody], wait_healthy=False)
    replica = router.replicas.get(nobody)
    assert replica is not None
    await wait_until(lambda: replica.state is ReplicaState.UNHEALTHY, 10, "the dead replica never went unhealthy")

    error, code, protocol = await websocket_refusal(router.url)
    assert error == {"type": "error", "code": "gpu_unavailable", "message": error["message"], "retryable": True}
    assert code == 1013 and protocol == "rtcvs"  # a browser that offered rtcvs needs it answered

    offer = {"sdp": await real_offer_sdp(), "type": "offer", "session_init": INIT}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{router.url}/v1/webrtc/offer", json=offer) as response:
            body = await response.json()
            assert response.status == 503 and response.headers["Retry-After"] == "1"
            assert body["error"]["code"] == "gpu_unavailable" and body["error"]["retryable"] is True
        async with http.get(f"{router.url}/v1/webrtc/ice-servers") as response:
            assert response.status == 503 and "Retry-After" in response.headers
        async with http.get(f"{router.url}/readyz") as response:
            assert response.status == 503 and (await response.json())["status"] == "unavailable"
        async with http.get(f"{router.url}/healthz") as response:
            assert response.status == 200  # the router itself is alive
        async with http.get(f"{router.url}/status") as response:
            (entry,) = (await response.json())["replicas"]
            assert entry["state"] == "unhealthy" and entry["consecutive_failures"] >= 2 and entry["last_error"]
    assert router.metric("rtcvs_router_refusals_total", code="gpu_unavailable") == 3


async def test_when_every_healthy_replica_is_full_new_sessions_are_rejected_retryably(
    start_server: Any, start_router: StartRouter
) -> None:
    replica: RunningServer = await start_server(replica_config(streaming={"max_sessions": 1}))
    router = await start_router([replica.url])
    async with WebSocketClient(router.url, session_init=INIT) as first:
        await first.connect()
        await first.wait_for_event("ltx2_segment_start", timeout=20)
        entry = router.replicas.get(replica.url)
        assert entry is not None
        await wait_until(lambda: entry.free_slots == 0, 5, "the probe never saw the replica full")
        error, code, _ = await websocket_refusal(router.url)
        assert error["code"] == "session_rejected" and error["retryable"] is False and code == 1013
        with pytest.raises(OfferRejected) as refused:
            async with WebRTCClient(router.url, session_init=INIT) as client:
                await client.connect()
        assert refused.value.status == 503 and refused.value.body["error"]["code"] == "session_rejected"
        assert "Retry-After" in refused.value.headers


async def test_a_replica_killed_mid_stream_fails_the_websocket_with_worker_failed_and_1011(
    start_process: Any, start_router: StartRouter
) -> None:
    replica: ProcessHandle = await start_process("rtc_server", replica_process_config())
    router = await start_router([replica.url])
    async with WebSocketClient(router.url, session_init=INIT) as client:
        await client.connect()
        await client.wait_for_event("media_segment_complete", timeout=20)
        replica.process.kill()  # SIGKILL: no close frame, no goodbye
        code = await client.wait_closed(timeout=10)
        error = client.events_of("error")
        assert error and error[-1]["code"] == "worker_failed" and error[-1]["retryable"] is True, client.events
        assert code == 1011
    await wait_until(
        lambda: router.metric("rtcvs_router_bridge_errors_total", side="replica") == 1, 5, "the bridge error was not counted"
    )
    entry = router.replicas.get(replica.url)
    assert entry is not None and entry.consecutive_failures >= 1  # counted before any probe noticed


async def test_a_dead_primary_not_yet_noticed_by_probes_is_passed_over_at_once(
    start_server: Any, start_router: StartRouter
) -> None:
    primary = TestServer(build_app(make_config()), host=LOOPBACK, port=0)
    await primary.start_server()
    try:
        await RunningServer(primary).wait_ready()
        primary_url = str(primary.make_url("/")).rstrip("/")
        secondary: RunningServer = await start_server(replica_config())
        # Probes every minute: only the first round runs during the test.
        router = await start_router([primary_url, secondary.url], health_check_interval_seconds=60)
    finally:
        await primary.close()  # the primary dies; the router still believes it healthy
    dead = router.replicas.get(primary_url)
    assert dead is not None and dead.is_healthy

    async with WebRTCClient(router.url, session_init=INIT) as rtc:
        session_id = await rtc.connect()
        assert secondary.app[REGISTRY].get(session_id) is not None
        await wait_until(lambda: rtc.frame_count > 0, 15, "the session placed on the secondary did not stream")
    assert router.metric("rtcvs_router_failovers_total", reason="unreachable") == 1
    assert dead.consecutive_failures == 1 and dead.is_healthy  # one failure: under the threshold (2)

    async with WebSocketClient(router.url, session_init=INIT) as ws:
        await ws.connect()
        await ws.wait_for_event("ltx2_segment_start", timeout=20)
        assert len(secondary.app[REGISTRY]) >= 1
    assert router.metric("rtcvs_router_failovers_total", reason="unreachable") == 2
    assert dead.state is ReplicaState.UNHEALTHY  # the second failure in a row crossed the threshold


async def test_close_codes_travel_both_ways(replicas: tuple[RunningServer, RunningServer], start_router: StartRouter) -> None:
    primary, _ = replicas
    router = await start_router([primary.url])
    # The replica's code reaches the client: an invalid first message is closed with 1003.
    async with WebSocketClient(router.url) as client:
        await client.connect(send_init=False)
        await client.send({"type": "snapshot_state"})
        assert await client.wait_closed() == 1003
        assert client.events_of("error")[0]["code"] == "invalid_message"
    # The client's close reaches the replica: its session ends.
    async with WebSocketClient(router.url, session_init=INIT) as client:
        await client.connect()
        await client.wait_for_event("ltx2_segment_start", timeout=20)
        assert len(primary.app[REGISTRY]) == 1
    await wait_until(lambda: len(primary.app[REGISTRY]) == 0, 10, "the replica kept the session of a client that left")
    await wait_until(lambda: not router.app[BRIDGES], 5, "a bridge outlived both its sides")
    assert router.metric("rtcvs_router_bridge_errors_total", side="replica") == 0


async def test_credentials_and_subprotocols_reach_the_replica_unchanged(
    start_server: Any, start_router: StartRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    replica: RunningServer = await start_server(make_config(auth={"mode": "token", "token_envs": [TOKEN_ENV]}))
    router = await start_router([replica.url])

    async with WebSocketClient(router.url, session_init=INIT, auth_token=TOKEN) as client:
        await client.connect()
        await client.wait_for_event("ltx2_segment_start", timeout=20)
        assert client.ws is not None and client.ws.protocol == "rtcvs"
    error, code, _ = await websocket_refusal(router.url)
    assert error["code"] == "unauthorized" and code == 4401
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(router.url.replace("http://", "ws://") + f"/v1/stream?token={TOKEN}")
        await ws.send_str(json.dumps(INIT))
        message = await ws.receive(timeout=10)
        assert json.loads(message.data)["type"] != "error", message.data
        await ws.close()

    async with WebRTCClient(router.url, session_init=INIT, auth_token=TOKEN) as rtc:
        assert await rtc.connect()
    with pytest.raises(OfferRejected) as refused:
        async with WebRTCClient(router.url, session_init=INIT) as rtc:
            await rtc.connect()
    assert refused.value.status == 401 and refused.value.headers["WWW-Authenticate"].startswith("Bearer")
