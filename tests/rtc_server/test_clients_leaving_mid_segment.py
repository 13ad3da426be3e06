"""Clients leaving mid-segment, the most ordinary event there is, never wedge a worker.

With one subprocess worker (synthetic, slow steps), three sessions each leave right after their
first ltx2_segment_start; a fresh session must then stream, over either transport.
"""

from __future__ import annotations

from typing import Any

import pytest

from rtc_server.clients.webrtc_client import WebRTCClient
from rtc_server.clients.ws_client import WebSocketClient
from tests.conftest import make_config

INIT = {"type": "session_init_v2", "curated_prompts": ["a red fox running through fresh snow"]}


def one_slow_worker() -> Any:
    return make_config(
        pool={"backend": "subprocess", "num_workers": 1, "sessions_per_worker": 4},
        generator={"backend": "synthetic", "options": {"step_delay_s": 0.1}},
        default_request={"sampling": {"num_inference_steps": 4}},
    )


async def open_client(transport: str, url: str) -> WebRTCClient | WebSocketClient:
    client: WebRTCClient | WebSocketClient
    if transport == "webrtc":
        client = WebRTCClient(url, session_init=INIT)
    else:
        client = WebSocketClient(url, session_init=INIT)
    await client.connect()
    return client


@pytest.mark.parametrize("transport", ["webrtc", "websocket"])
async def test_three_sessions_leaving_mid_segment_leave_the_worker_serving(transport: str, start_server: Any) -> None:
    server = await start_server(one_slow_worker())
    for _ in range(3):
        leaver = await open_client(transport, server.url)
        await leaver.wait_for_event("ltx2_segment_start", timeout=10)
        await leaver.close()  # mid-segment: its steps take 0.4 s
    fresh = await open_client(transport, server.url)
    try:
        await fresh.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 1, timeout=15)
    finally:
        await fresh.close()
