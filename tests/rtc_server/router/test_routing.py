"""Sessions through a real router in front of real replicas sharing a real Redis, with real clients, on loopback."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from rtc_server.app import REGISTRY
from rtc_server.clients.webrtc_client import WebRTCClient
from rtc_server.clients.ws_client import WebSocketClient
from tests.conftest import RunningServer
from tests.rtc_server.offers import real_offer_sdp
from tests.rtc_server.router.conftest import INIT, StartRouter, map_key, replica_config, wait_until

FTYP = b"ftyp"


async def get_json(url: str, method: str = "GET", **kwargs: Any) -> tuple[int, Any, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.request(method, url, **kwargs) as response:
        return response.status, await response.json(content_type=None), dict(response.headers)


async def open_webrtc(base_url: str) -> WebRTCClient:
    client = WebRTCClient(base_url, session_init=INIT)
    try:
        await client.connect()
    except BaseException:
        await client.close()
        raise
    return client


async def test_both_transports_stream_through_the_router_and_status_shows_both_replicas(
    replicas: tuple[RunningServer, RunningServer], start_router: StartRouter, fresh_redis_url: str, redis_client: Redis
) -> None:
    primary, secondary = replicas
    router = await start_router([primary.url, secondary.url], redis_url=fresh_redis_url)

    async with WebSocketClient(router.url, session_init=INIT) as ws:
        await ws.connect()
        await ws.wait_for_event("media_segment_complete", timeout=20)
        segment = ws.complete_segments[0]
        assert segment.init[4:8] == FTYP and segment.chunks, "fMP4 did not come through whole"
        assert ws.ws is not None and ws.ws.protocol is None  # offered none, answered none: as a replica does
        assert len(primary.app[REGISTRY]) == 1 and len(secondary.app[REGISTRY]) == 0  # the primary took it

    async with await open_webrtc(router.url) as rtc:
        assert rtc.session_id is not None
        await wait_until(lambda: rtc.frame_count >= 24, 15, "no WebRTC frames through the router")
        assert primary.app[REGISTRY].get(rtc.session_id) is not None
        assert await redis_client.get(map_key(rtc.session_id)) == primary.url.encode()
        assert 0 < await redis_client.pttl(map_key(rtc.session_id)) <= 86400 * 1000

    status, body, _ = await get_json(f"{router.url}/status")
    assert status == 200 and body["healthy_replicas"] == 2
    entries = {entry["url"]: entry for entry in body["replicas"]}
    assert entries.keys() == {primary.url, secondary.url}
    assert entries[primary.url]["role"] == "primary" and entries[secondary.url]["role"] == "secondary"
    for entry in entries.values():
        assert entry["state"] == "healthy" and entry["consecutive_failures"] == 0
        assert entry["last_probe_at"] is not None and entry["last_latency_ms"] is not None
        assert entry["session_capacity"] == 4 and isinstance(entry["free_slots"], int)
    assert router.metric("rtcvs_router_sessions_routed_total", transport="websocket") == 1
    assert router.metric("rtcvs_router_sessions_routed_total", transport="webrtc") == 1
    assert router.metric("rtcvs_router_probes_total", replica=primary.url, result="ok") >= 1
    async with aiohttp.ClientSession() as http, http.get(f"{router.url}/metrics") as response:
        text = await response.text()
    assert response.status == 200 and "rtcvs_router_bridged_streams" in text and "rtcvs_router_failovers" in text


async def test_a_full_primary_is_skipped_and_sessions_are_found_and_ended_on_their_replica(
    start_server: Any, start_router: StartRouter, fresh_redis_url: str, redis_client: Redis
) -> None:
    # The primary takes one session at a time: the second goes to the secondary.
    primary = await start_server(replica_config(streaming={"max_sessions": 1}))
    secondary = await start_server(replica_config())
    router = await start_router([primary.url, secondary.url], redis_url=fresh_redis_url)
    first = await open_webrtc(router.url)
    second: WebRTCClient | None = None
    try:
        await wait_until(lambda: first.frame_count > 0, 15, "the first session did not stream")
        replica_a = router.replicas.get(primary.url)
        assert replica_a is not None
        await wait_until(lambda: replica_a.free_slots == 0, 5, "the probe never saw the primary full")
        second = await open_webrtc(router.url)
        session_id = second.session_id
        assert session_id is not None and secondary.app[REGISTRY].get(session_id) is not None
        assert await redis_client.get(map_key(session_id)) == secondary.url.encode()
        await wait_until(lambda: second is not None and second.frame_count > 0, 15, "the second session did not stream")

        status, body, _ = await get_json(f"{router.url}/v1/sessions/{session_id}/frames")
        assert status == 200 and body["session_id"] == session_id and body["frames"]

        status, body, _ = await get_json(f"{router.url}/v1/sessions/{session_id}", method="DELETE")
        assert status == 200 and body["session_id"] == session_id
        complete = await second.wait_for_event("ltx2_stream_complete")
        assert complete["reason"] == "stop_requested"
        assert await redis_client.get(map_key(session_id)) is None
        assert first.session_id is not None and primary.app[REGISTRY].get(first.session_id) is not None  # untouched
        await wait_until(lambda: secondary.app[REGISTRY].get(session_id) is None, 10, "the session lingers")

        # Unknown to the map and to every replica: 404, as a replica answers.
        status, body, _ = await get_json(f"{router.url}/v1/sessions/{session_id}/frames")
        assert status == 404 and body["error"]["code"] == "invalid_message"
        status, _, _ = await get_json(f"{router.url}/v1/sessions/not..an..id/frames")
        assert status == 404
    finally:
        await first.close()
        if second is not None:
            await second.close()


async def test_two_routers_sharing_redis_act_as_one(
    replicas: tuple[RunningServer, RunningServer], start_router: StartRouter, fresh_redis_url: str, redis_client: Redis
) -> None:
    primary, secondary = replicas
    # The second router lists the replicas the other way round: only the map can say where a session is.
    one = await start_router([primary.url, secondary.url], redis_url=fresh_redis_url)
    other = await start_router([secondary.url, primary.url], redis_url=fresh_redis_url)
    async with await open_webrtc(one.url) as rtc:
        session_id = rtc.session_id
        assert session_id is not None and primary.app[REGISTRY].get(session_id) is not None
        await wait_until(lambda: rtc.frame_count > 0, 15, "no frames")
        status, body, _ = await get_json(f"{other.url}/v1/sessions/{session_id}/frames")
        assert status == 200 and body["session_id"] == session_id
        status, _, _ = await get_json(f"{other.url}/v1/sessions/{session_id}", method="DELETE")
        assert status == 200
        assert (await rtc.wait_for_event("ltx2_stream_complete"))["reason"] == "stop_requested"
        assert await redis_client.get(map_key(session_id)) is None
    # A session the map lost (its entry expired) is still found: the replicas are asked in turn.
    async with await open_webrtc(one.url) as rtc:
        assert rtc.session_id is not None
        await redis_client.delete(map_key(rtc.session_id))
        status, body, _ = await get_json(f"{other.url}/v1/sessions/{rtc.session_id}/frames")
        assert status == 200 and body["session_id"] == rtc.session_id
        assert await redis_client.get(map_key(rtc.session_id)) == primary.url.encode()


async def test_the_page_served_by_the_router_may_make_same_origin_offers(
    replicas: tuple[RunningServer, RunningServer], start_router: StartRouter
) -> None:
    primary, secondary = replicas
    router = await start_router([primary.url, secondary.url])
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{router.url}/") as response:
            assert response.status == 200 and "<html" in (await response.text()).lower()
        async with http.get(f"{router.url}/client/app.js") as response:
            assert response.status == 200
        offer = {"sdp": await real_offer_sdp(), "type": "offer", "session_init": INIT}
        # The page's origin is the router's: the replica sees the router's Host and accepts it.
        async with http.post(f"{router.url}/v1/webrtc/offer", json=offer, headers={"Origin": router.url}) as response:
            body = await response.json()
            assert response.status == 200, body
            assert response.headers["Access-Control-Allow-Origin"] == router.url
            session_id = body["session_id"]
        async with http.delete(f"{router.url}/v1/sessions/{session_id}") as response:
            assert response.status == 200
        foreign = {"Origin": "http://elsewhere.example"}
        async with http.post(f"{router.url}/v1/webrtc/offer", json=offer, headers=foreign) as response:
            assert response.status == 403 and (await response.json())["error"]["code"] == "unauthorized"
        # The WebSocket too: the page's origin passes, another site's is refused before the upgrade.
        ws = await http.ws_connect(router.url.replace("http://", "ws://") + "/v1/stream", origin=router.url)
        await ws.send_json(INIT)
        first = await ws.receive_json(timeout=10)
        assert first["type"] != "error", first
        await ws.close()
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(router.url.replace("http://", "ws://") + "/v1/stream", origin="http://elsewhere.example")
        assert refused.value.status == 403
        async with http.get(f"{router.url}/v1/webrtc/ice-servers", headers={"Origin": router.url}) as response:
            assert response.status == 200 and "ice_servers" in await response.json()
        preflight = {"Origin": router.url, "Access-Control-Request-Method": "POST"}
        async with http.options(f"{router.url}/v1/webrtc/offer", headers=preflight) as response:
            assert response.status == 204
        async with http.get(f"{router.url}/healthz") as response:
            assert response.status == 200 and (await response.json())["status"] == "ok"
        async with http.get(f"{router.url}/readyz") as response:
            assert response.status == 200 and (await response.json())["healthy_replicas"] == 2


async def test_status_and_metrics_need_the_admin_token_when_one_is_set(
    replicas: tuple[RunningServer, RunningServer], start_router: StartRouter
) -> None:
    primary, _ = replicas
    router = await start_router([primary.url], admin_token="router-operator")
    async with aiohttp.ClientSession() as http:
        for path in ("/status", "/metrics"):
            for headers in ({}, {"Authorization": "Bearer guess"}):
                async with http.get(f"{router.url}{path}", headers=headers) as response:
                    assert response.status == 401
            async with http.get(f"{router.url}{path}", headers={"Authorization": "Bearer router-operator"}) as response:
                assert response.status == 200
        async with http.get(f"{router.url}/readyz") as response:
            assert response.status == 200  # health stays open: load balancers ask it
