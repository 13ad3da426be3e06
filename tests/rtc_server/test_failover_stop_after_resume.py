"""A session resumed on another replica can still be ended: DELETE through the router, and it stops."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from rtc_server.clients.resuming import ResumingSession
from tests.cluster import Cluster
from tests.rtc_server.test_failover_through_router import INIT, playing, router_sees_healthy, sessions_on, start_cluster

pytestmark = pytest.mark.slow



@pytest.mark.parametrize("transport", ["webrtc", "websocket"])
async def test_a_resumed_session_ends_on_delete_through_the_router(cluster: Cluster, transport: str) -> None:
    a, b, router = start_cluster(cluster)
    deadline = time.monotonic() + 10
    while not router_sees_healthy(router, 2):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    async with ResumingSession(router.url, transport=transport, session_init=INIT) as session:  # type: ignore[arg-type]
        await session.start()
        await playing(session, 1)
        a.kill()
        deadline = time.monotonic() + 10
        while not session.reconnects or sessions_on(b) != 1:
            assert time.monotonic() < deadline, "not resumed on B"
            await asyncio.sleep(0.05)
        await playing(session, max(1, session.events_of("ltx2_segment_start")[-1]["segment_idx"]))
        url = f"{router.url}/v1/sessions/{session.session_id}"
        async with aiohttp.ClientSession() as http, asyncio.timeout(10), http.delete(url) as response:
            assert response.status == 200, await response.text()
        event = await session.wait_for_event(
            "ltx2_stream_complete", lambda e: e.get("reason") == "stop_requested", timeout=10
        )
        assert event["reason"] == "stop_requested"
        deadline = time.monotonic() + 10
        while sessions_on(b):
            assert time.monotonic() < deadline, "the resumed session was kept after DELETE"
            await asyncio.sleep(0.05)
