"""A worker killed mid-segment: its session recovers on a restarted worker, the other session never stalls."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gpu.subprocess_pool import SubprocessGpuPool
from rtc_server.app import POOL
from rtc_server.clients.webrtc_client import WebRTCClient
from tests.conftest import make_config

INIT = {"type": "session_init_v2", "curated_prompts": ["a red fox running through fresh snow"]}


async def test_killed_worker_session_continues_and_other_session_keeps_streaming(start_server: Any) -> None:
    config = make_config(
        pool={"backend": "subprocess", "num_workers": 2, "sessions_per_worker": 1, "restart_delay_seconds": 0.2},
        generator={"backend": "synthetic", "options": {"step_delay_s": 0.15}},
        streaming={"max_sessions": 2},
    )
    server = await start_server(config)
    pool = server.app[POOL]
    assert isinstance(pool, SubprocessGpuPool)
    async with WebRTCClient(server.url, session_init=INIT) as victim, WebRTCClient(server.url, session_init=INIT) as bystander:
        await victim.connect()
        await bystander.connect()
        await victim.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 1, timeout=15)
        await bystander.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 1, timeout=15)
        victim_worker = pool.binding(victim.session_id or "")
        assert victim_worker is not None and victim_worker != pool.binding(bystander.session_id or "")

        # Kill while the victim's worker is inside a segment.
        deadline = time.monotonic() + 10
        while not pool.status().gpu_status[victim_worker].busy:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        in_flight = victim.events_of("ltx2_segment_start")[-1]["segment_idx"]
        frames_before = max(f.marker.frame_number for f in victim.frames if f.marker)
        killed_at = time.monotonic()
        pool.kill_worker(victim_worker)

        error = await victim.wait_for_event("error", timeout=5)
        assert time.monotonic() - killed_at < 2.0
        assert error["code"] == "worker_failed" and error["retryable"] is True
        done = await victim.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == in_flight, timeout=15)
        assert done["segment_idx"] == in_flight
        assert len(victim.events_of("gpu_assigned")) == 2
        await victim.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == in_flight + 1, timeout=15)
        after = [f.marker.frame_number for f in victim.frames if f.marker and f.received_at > killed_at]
        assert after and min(after) > frames_before - 48 and max(after) > frames_before

        window = [f.received_at for f in bystander.frames if killed_at - 1 <= f.received_at <= time.monotonic()]
        gaps = [b - a for a, b in zip(window, window[1:], strict=False)]
        assert window and max(gaps) < 1.0, f"bystander stalled for {max(gaps):.2f}s"
        assert not bystander.events_of("error")

    deadline = time.monotonic() + 10
    while not pool.status().gpu_status[victim_worker].ready:
        assert time.monotonic() < deadline, "worker was not restarted"
        await asyncio.sleep(0.05)
    assert pool.status().gpu_status[victim_worker].restarts == 1
