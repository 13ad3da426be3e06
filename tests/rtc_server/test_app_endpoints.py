"""Health, status and the page, against a real server on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from gpu.subprocess_pool import SubprocessGpuPool
from rtc_server.app import POOL
from rtc_server.clients.ws_client import WebSocketClient
from rtc_server.health import SERVICE_NAME
from tests.conftest import LOOPBACK, RunningServer, make_config
from tests.gpu.status_shape import ORIGINAL_STATUS_KEYS, STATUS_KEYS, WORKER_KEYS, check_original_worker_types

ADMIN = {"Authorization": "Bearer operator-secret"}
SLOT_KEYS = {"session_capacity", "free_slots"}  # beyond protocol.md: what the router reads
READYZ_KEYS = {  # the original's /readyz, field for field
    "status",
    "service",
    "ready_gpu_workers",
    "total_gpus",
    "available_gpus",
    "warmup_successful_gpus",
    "warmup_failed_gpus",
    "queue_size",
    "ts",
}
INIT = {"curated_prompts": ["a red fox running through fresh snow"]}
POOLS = {
    "inprocess": {"backend": "inprocess"},
    "subprocess": {"backend": "subprocess", "num_workers": 2, "restart_delay_seconds": 60},
}


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
    assert status == 200 and body == {
        "status": "ok",
        "sessions": 0,
        "stream_mode": "av_fmp4",
        "transports": ["webrtc", "websocket"],
    }
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
        public = {"gpu_id", "state", "ready", "available", "client_count", "process_alive", "warmup_enabled"}
        public |= {"warmup_success", "warmup_timings", "current_model_id"}  # the original's, no pids or error text
        assert [set(w) for w in body["gpu_status"].values()] == [public]
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


async def admin_status(url: str) -> dict[str, Any]:
    status, body = await get(f"{url}/status", ADMIN)
    assert status == 200
    return body


async def wait_for_status(url: str, done: Callable[[dict[str, Any]], bool], timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body = await admin_status(url)
        if done(body):
            return body
        assert time.monotonic() < deadline, f"/status never got there: {body}"
        await asyncio.sleep(0.05)


async def open_ws(server: RunningServer) -> WebSocketClient:
    client = WebSocketClient(server.url, session_init=INIT)
    await client.connect()
    return client


@pytest.mark.parametrize("pool", POOLS)
async def test_status_and_readyz_carry_the_originals_fields(start_server: Any, pool: str) -> None:
    config = make_config(server={"admin_token": "operator-secret"}, pool=POOLS[pool])
    server: RunningServer = await start_server(config)
    status, ready = await get(f"{server.url}/readyz")
    assert status == 200 and set(ready) == READYZ_KEYS and ready["queue_size"] == 0
    body = await wait_for_status(server.url, lambda b: b["warmup_successful_gpus"] == b["total_gpus"])
    assert ORIGINAL_STATUS_KEYS <= set(body) and body["queue_size"] == 0 and body["queued_segments"] == 0
    assert body["available_gpus"] == body["total_gpus"] and body["warmup_failed_gpus"] == 0
    assert all(isinstance(worker_id, str) for worker_id in body["gpu_status"])
    for worker in body["gpu_status"].values():
        assert set(worker) == WORKER_KEYS
        check_original_worker_types(worker)
        assert (worker["available"], worker["client_count"], worker["process_alive"]) == (True, 0, True)
        assert (worker["warmup_enabled"], worker["warmup_success"], worker["warmup_error"]) == (True, True, None)
        assert worker["warmup_timings"]["warmup_ms"] == worker["warmup_ms"] > 0
        assert worker["current_model_id"] == "synthetic"


@pytest.mark.parametrize("pool", POOLS)
async def test_client_count_and_available_follow_the_sessions_bound(start_server: Any, pool: str) -> None:
    config = make_config(server={"admin_token": "operator-secret"}, pool=POOLS[pool])
    server: RunningServer = await start_server(config)
    total = (await wait_for_status(server.url, lambda b: b["available_gpus"] == b["total_gpus"]))["total_gpus"]
    client = await open_ws(server)
    try:
        await client.wait_for_event("gpu_assigned")
        body = await admin_status(server.url)
        workers = body["gpu_status"].values()
        assert sorted(w["client_count"] for w in workers) == [0] * (total - 1) + [1]
        assert [w["available"] for w in workers] == [w["client_count"] == 0 for w in workers]
        assert body["available_gpus"] == total - 1
        _, ready = await get(f"{server.url}/readyz")
        assert ready["available_gpus"] == total - 1
    finally:
        await client.close()
    body = await wait_for_status(server.url, lambda b: b["available_gpus"] == total)
    assert all(w["client_count"] == 0 and w["available"] for w in body["gpu_status"].values())


async def test_queue_size_counts_the_sessions_waiting_for_admission(start_server: Any) -> None:
    config = make_config(server={"admin_token": "operator-secret"}, streaming={"max_sessions": 1, "max_queue": 2})
    server: RunningServer = await start_server(config)
    first = await open_ws(server)
    clients = [first]
    try:
        await first.wait_for_event("ltx2_segment_start")
        for expected in (1, 2):
            waiting = await open_ws(server)
            clients.append(waiting)
            await waiting.wait_for_event("queue_status", lambda e, n=expected: e["position"] == n)
            _, ready = await get(f"{server.url}/readyz")
            body = await admin_status(server.url)
            assert ready["queue_size"] == body["queue_size"] == expected
            assert body["gpu_status"]["inproc-0"]["client_count"] == 1  # the waiting ones are not bound
        await first.close()
        await clients[1].wait_for_event("ltx2_segment_start")
        body = await wait_for_status(server.url, lambda b: b["queue_size"] == 1)
        assert body["gpu_status"]["inproc-0"]["client_count"] == 1
    finally:
        for client in clients:
            await client.close()


async def test_a_killed_worker_reports_its_process_dead(start_server: Any) -> None:
    config = make_config(server={"admin_token": "operator-secret"}, pool=POOLS["subprocess"])
    server: RunningServer = await start_server(config)
    pool = server.app[POOL]
    assert isinstance(pool, SubprocessGpuPool)
    await wait_for_status(server.url, lambda b: b["available_gpus"] == 2)
    pool.kill_worker("gpu-1")
    body = await wait_for_status(server.url, lambda b: not b["gpu_status"]["gpu-1"]["process_alive"])
    dead, alive = body["gpu_status"]["gpu-1"], body["gpu_status"]["gpu-0"]
    assert (dead["available"], dead["ready"], dead["current_model_id"], dead["state"]) == (
        False,
        False,
        None,
        "restarting",
    )
    assert dead["warmup_success"] is True and dead["warmup_error"] is None  # it had warmed up before it died
    assert alive["process_alive"] and alive["available"]
    assert body["available_gpus"] == 1 and body["total_gpus"] == 2
    _, ready = await get(f"{server.url}/readyz")
    assert (ready["ready_gpu_workers"], ready["available_gpus"]) == (1, 1)


async def test_a_warm_up_that_overruns_the_boot_timeout_is_a_failed_warm_up(start_server: Any) -> None:
    pool = {**POOLS["subprocess"], "boot_timeout_seconds": 2, "worker_options": {1: {"step_delay_s": 5.0}}}
    server: RunningServer = await start_server(make_config(server={"admin_token": "operator-secret"}, pool=pool))
    body = await wait_for_status(server.url, lambda b: b["warmup_failed_gpus"] == 1)
    failed, good = body["gpu_status"]["gpu-1"], body["gpu_status"]["gpu-0"]
    check_original_worker_types(failed)
    assert (failed["warmup_success"], failed["warmup_timings"], failed["available"]) == (False, {}, False)
    assert "boot" in failed["warmup_error"] and failed["state"] == "failed"
    assert (good["warmup_success"], good["warmup_error"]) == (True, None)
    assert body["warmup_successful_gpus"] == 1
    _, ready = await get(f"{server.url}/readyz")
    assert (ready["warmup_successful_gpus"], ready["warmup_failed_gpus"], ready["status"]) == (1, 1, "ready")


@pytest.mark.parametrize("pool", POOLS)
async def test_a_worker_that_cannot_boot_reports_a_failed_warm_up(pool: str) -> None:
    from aiohttp.test_utils import TestServer

    from rtc_server.app import build_app

    config = make_config(
        server={"admin_token": "operator-secret"},
        pool=POOLS[pool],
        generator={"backend": "synthetic", "options": {"fail_on_start": True}},
    )
    server = TestServer(build_app(config), host=LOOPBACK, port=0)
    await server.start_server()
    try:
        url = str(server.make_url("/")).rstrip("/")
        body = await wait_for_status(url, lambda b: b["warmup_failed_gpus"] == b["total_gpus"])
        for worker in body["gpu_status"].values():
            check_original_worker_types(worker)
            assert (worker["warmup_success"], worker["available"], worker["warmup_timings"]) == (False, False, {})
            assert "fail_on_start" in worker["warmup_error"] and worker["current_model_id"] is None
        status, ready = await get(f"{url}/readyz")
        assert status == 503 and ready["status"] == "warming"
        assert (ready["warmup_successful_gpus"], ready["warmup_failed_gpus"]) == (0, body["total_gpus"])
    finally:
        await server.close()
