"""Health, status and the page, against a real server on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from rtc_server.health import SERVICE_NAME
from tests.conftest import LOOPBACK, RunningServer, make_config
from tests.gpu.status_shape import STATUS_KEYS, WORKER_KEYS

ADMIN = {"Authorization": "Bearer operator-secret"}
SLOT_KEYS = {"session_capacity", "free_slots"}  # beyond protocol.md: what the router reads


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers or {}) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def test_health_endpoints_report_a_ready_pool(start_server: Any) -> None:
    server: RunningServer = await start_server(make_config(server={"admin_token": "operator-secret"}))
    status, body = await get(f"{server.url}/healthz")
    assert status == 200 and body["status"] == "ok" and body["service"] == SERVICE_NAME and body["ts"]
    status, body = await get(f"{server.url}/readyz")
    assert status == 200 and body["status"] == "ready" and body["ready_gpu_workers"] == 1
    status, body = await get(f"{server.url}/health")
    assert status == 200 and body == {"status": "ok", "sessions": 0, "stream_mode": "av_fmp4", "transports": ["webrtc", "websocket"]}
    status, body = await get(f"{server.url}/status", ADMIN)
    assert status == 200 and body.keys() == STATUS_KEYS | SLOT_KEYS
    assert body["session_capacity"] == body["free_slots"] == 4  # make_config: 4 sessions, no queue, none open
    worker = next(iter(body["gpu_status"].values()))
    assert worker.keys() == WORKER_KEYS
    assert worker["ready"] is True and worker["state"] == "ready" and worker["warmup_ms"] is not None


async def test_status_shows_strangers_counts_and_states_but_no_process_details(start_server: Any) -> None:
    server: RunningServer = await start_server(
        make_config(server={"admin_token": "operator-secret"}, pool={"backend": "subprocess", "num_workers": 1})
    )
    for headers in (None, {"Authorization": "Bearer guess"}):
        status, body = await get(f"{server.url}/status", headers)
        assert status == 200 and body.keys() == STATUS_KEYS | SLOT_KEYS and body["total_gpus"] == 1
        assert [set(w) for w in body["gpu_status"].values()] == [{"gpu_id", "state", "ready"}]
    status, body = await get(f"{server.url}/status", ADMIN)
    assert next(iter(body["gpu_status"].values()))["pid"] > 0


async def test_metrics_and_admin_endpoints_need_the_admin_token(start_server: Any) -> None:
    for config in (make_config(), make_config(server={"admin_token": "operator-secret"})):
        server: RunningServer = await start_server(config)
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"Authorization": "Bearer guess"}):
                async with http.get(f"{server.url}/metrics", headers=headers) as response:
                    assert response.status == 401 and (await response.json())["error"]["code"] == "unauthorized"
                async with http.post(f"{server.url}/v1/admin/prompts/reload", headers=headers) as response:
                    assert response.status == 401
        if config.server.admin_token is not None:
            status, body = await get(f"{server.url}/metrics", ADMIN)
            assert status == 200 and "rtcvs_sessions_active" in body


async def test_readyz_is_503_and_offers_are_refused_while_warming() -> None:
    from aiohttp.test_utils import TestServer

    from rtc_server.app import build_app

    config = make_config(generator={"backend": "synthetic", "options": {"step_delay_s": 0.5}})
    server = TestServer(build_app(config), host=LOOPBACK, port=0)
    await server.start_server()
    try:
        url = str(server.make_url("/")).rstrip("/")
        status, body = await get(f"{url}/readyz")
        assert status == 503 and body["status"] == "warming" and body["ready_gpu_workers"] == 0
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/v1/webrtc/offer", json={"sdp": "v=0", "type": "offer"}) as response:
                assert response.status == 503
                error = (await response.json())["error"]
                assert error["code"] == "gpu_unavailable" and error["retryable"] is True
                assert "Retry-After" in response.headers
        for _ in range(100):
            status, _ = await get(f"{url}/readyz")
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200
    finally:
        await server.close()


async def test_page_and_ice_servers_are_served(start_server: Any) -> None:
    server = await start_server(make_config(webrtc={"ice_servers": [{"urls": "stun:127.0.0.1:3478"}]}))
    status, body = await get(f"{server.url}/")
    assert status == 200 and "<video" in body and "/client/app.js" in body
    status, body = await get(f"{server.url}/client/webrtc_player.js")
    assert status == 200 and "v1/webrtc/offer" in body
    status, body = await get(f"{server.url}/v1/webrtc/ice-servers")
    assert body == {"ice_servers": [{"urls": "stun:127.0.0.1:3478"}], "ttl_seconds": 24 * 3600}
