"""A WebSocket session placed through one router is found, moved and ended through another (needs ``session_info``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from rtc_server.clients.ws_client import WebSocketClient
from tests.conftest import RunningServer
from tests.rtc_server.router.conftest import INIT, ProcessHandle, StartRouter, map_key, replica_process_config


async def value_becomes(redis_client: Redis, key: str, expected: bytes | None, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while (value := await redis_client.get(key)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{key} is {value!r}, not {expected!r}")
        await asyncio.sleep(0.02)


async def test_a_websocket_session_moves_to_another_replica_through_another_router(
    start_process: Any, start_router: StartRouter, fresh_redis_url: str, redis_client: Redis
) -> None:
    # Processes: the first is SIGKILLed, and their Redis-backed stores stay out of this test's loop.
    config = {**replica_process_config(), "store": {"backend": "redis", "redis_url": fresh_redis_url}}
    first: ProcessHandle = await start_process("rtc_server", config)
    second: ProcessHandle = await start_process("rtc_server", config)
    one = await start_router([first.url, second.url], redis_url=fresh_redis_url)
    other = await start_router([first.url, second.url], redis_url=fresh_redis_url, health_check_interval_seconds=60)

    async with WebSocketClient(one.url, session_init=INIT) as client:
        await client.connect()
        await client.wait_for_event("ltx2_segment_complete", timeout=20)
        infos = client.events_of("session_info")
        if not infos:
            pytest.skip("the replicas do not send session_info yet: nothing names a WebSocket session")
        session_id, token = infos[0]["session_id"], infos[0]["resume_token"]
        await value_becomes(redis_client, map_key(session_id), first.url.encode())
        async with aiohttp.ClientSession() as http, http.get(f"{other.url}/v1/sessions/{session_id}/frames") as found:
            assert found.status == 200
        shown = max(e["segment_idx"] for e in client.events_of("ltx2_segment_complete"))
        first.process.kill()
        assert await client.wait_closed(timeout=10) == 1011
        assert client.events_of("error")[-1]["code"] == "worker_failed"

    # Resumed through the other router, which still believes the first replica healthy.
    resume = {**INIT, "resume_session": {"session_id": session_id, "resume_token": token}}
    async with WebSocketClient(other.url, session_init=resume) as resumed:
        await resumed.connect()
        start = await resumed.wait_for_event("ltx2_segment_start", timeout=20)
        assert start["segment_idx"] > shown
        await value_becomes(redis_client, map_key(session_id), second.url.encode())
        # Found by the first router where the other put it.
        async with aiohttp.ClientSession() as http, http.get(f"{one.url}/v1/sessions/{session_id}/frames") as found:
            assert found.status == 200 and (await found.json())["session_id"] == session_id
    await value_becomes(redis_client, map_key(session_id), None)  # ended normally (close 1000): forgotten


async def test_a_bridged_session_is_recorded_from_session_info_and_forgotten_when_it_ends_normally(
    replicas: tuple[RunningServer, RunningServer], start_router: StartRouter, fresh_redis_url: str, redis_client: Redis
) -> None:
    primary, _ = replicas
    router = await start_router([primary.url], redis_url=fresh_redis_url)
    async with WebSocketClient(router.url, session_init=INIT) as client:
        await client.connect()
        await client.wait_for_event("ltx2_segment_start", timeout=20)
        infos = client.events_of("session_info")
        if not infos:
            pytest.skip("the replicas do not send session_info yet: nothing names a WebSocket session")
        session_id = infos[0]["session_id"]
        await value_becomes(redis_client, map_key(session_id), primary.url.encode())
        async with aiohttp.ClientSession() as http, http.get(f"{router.url}/v1/sessions/{session_id}/frames") as found:
            assert found.status == 200
    # The client closed with 1000: the session is over, and so is its entry.
    await value_becomes(redis_client, map_key(session_id), None)
