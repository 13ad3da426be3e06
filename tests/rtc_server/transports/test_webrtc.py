"""End-to-end over loopback: a real aiortc peer against the real server."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from gpu.frame_marker import prompt_tag
from rtc_server.app import REGISTRY, WEBRTC
from rtc_server.clients.webrtc_client import OfferRejected, WebRTCClient
from tests.conftest import RunningServer, make_config
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[3]
INIT = {"type": "session_init_v2", "curated_prompts": ["a red fox running through fresh snow"]}


async def open_client(server: RunningServer, init: dict[str, Any] | None = INIT) -> WebRTCClient:
    client = WebRTCClient(server.url, session_init=init)
    try:
        await client.connect()
    except BaseException:
        await client.close()
        raise
    return client


async def test_offer_streams_frames_at_the_configured_fps_with_a_contiguous_counter(server: RunningServer) -> None:
    async with await open_client(server) as client:
        await wait_until(lambda: client.first_frame_at is not None, 10, "no frame arrived")
        start_count = client.frame_count
        await asyncio.sleep(5.0)
        fps = (client.frame_count - start_count) / 5.0
        assert 24 * 0.9 <= fps <= 24 * 1.1, fps
        readable = [(i, f.marker.frame_number) for i, f in enumerate(client.frames) if f.marker is not None]
        assert len(readable) >= 0.95 * len(client.frames)
        # One more per decoded frame: no frame lost, repeated or reordered. A frame whose marker
        # is unreadable (decoder concealment after a lost packet) still counts in the position.
        first_index, first_number = readable[0]
        offsets = {number - first_number - (index - first_index) for index, number in readable}
        assert offsets == {0}, f"frame counter drifts from the decoded frame count by {sorted(offsets)}"
        assert {f.width for f in client.frames} == {256}


def mean_thumb(client: WebRTCClient, segment_idx: int) -> np.ndarray:
    thumbs = [f.thumb.astype(np.float32) for f in client.frames if f.marker and f.marker.segment_idx == segment_idx]
    assert thumbs, f"no frames of segment {segment_idx}"
    return np.mean(thumbs, axis=0)


async def test_new_prompt_is_acknowledged_and_drives_the_next_segment(server: RunningServer) -> None:
    async with await open_client(server) as client:
        await client.wait_channel_open()
        await wait_until(lambda: any(f.marker and f.marker.segment_idx == 1 for f in client.frames), 10, "no segment 1")
        await client.send({"type": "segment_prompt_source", "prompt": "neon city skyline at night, rain", "seed": 3})
        ack = await client.wait_for_event("prompt_received")
        assert ack["prompt"] == ack["prompt_used"] == "neon city skyline at night, rain"
        assert ack["source"] == "user" and ack["enhanced"] is False
        start = await client.wait_for_event("ltx2_segment_start", lambda e: e["prompt"].startswith("neon"))
        assert start["segment_idx"] == ack["segment_idx"] >= 2
        new_idx = start["segment_idx"]
        await wait_until(
            lambda: any(f.marker and f.marker.segment_idx == new_idx + 1 for f in client.frames),
            10,
            "the new prompt's segment was not shown",
        )
        before = mean_thumb(client, new_idx - 1)
        after = mean_thumb(client, new_idx)
        same_prompt = np.abs(mean_thumb(client, new_idx - 1) - mean_thumb(client, new_idx - 2)).mean()
        changed = np.abs(after - before).mean()
        assert changed > 15 and changed > 3 * same_prompt, (changed, same_prompt)


async def test_a_new_prompt_replaces_the_queued_segment_and_the_stream_stays_continuous(
    server: RunningServer,
) -> None:
    """The look-ahead segment made for the old prompt is never shown: the new prompt's frames come
    right after the segment that was playing, and the frame counter runs on without a gap."""
    old_tag, new_tag = prompt_tag(INIT["curated_prompts"][0]), prompt_tag("a lighthouse in a storm")
    async with await open_client(server) as client:
        await client.wait_channel_open()
        # Segment 1 is queued behind segment 0 (which plays for a second) once it is complete.
        await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 1)
        await client.send({"type": "segment_prompt_source", "prompt": "a lighthouse in a storm"})
        ack = await client.wait_for_event("prompt_received")
        switch = ack["segment_idx"]
        await wait_until(
            lambda: any(f.marker and f.marker.segment_idx == switch + 1 for f in client.frames), 10, "no later frames"
        )
        starts = [e for e in client.events_of("ltx2_segment_start") if e["segment_idx"] == switch]
        assert starts[-1]["prompt"] == "a lighthouse in a storm"
        assert switch == 1 and len(starts) == 2, "the queued segment 1 should have been made again"
        shown = [f.marker for f in client.frames if f.marker is not None]
        assert {m.prompt_tag for m in shown if m.segment_idx < switch} == {old_tag}
        assert {m.prompt_tag for m in shown if m.segment_idx >= switch} == {new_tag}
        numbers = [m.frame_number for m in shown]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
        assert numbers[-1] - numbers[0] + 1 - len(numbers) <= 0.05 * len(numbers), "frames missing at the switch"


async def test_pause_stops_new_segments_and_resume_continues(server: RunningServer) -> None:
    async with await open_client(server) as client:
        await client.wait_channel_open()
        await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 0)
        await client.send({"type": "generation_paused_updated", "paused": True})
        await asyncio.sleep(0.5)  # a segment already being generated may finish
        paused_starts = len(client.events_of("ltx2_segment_start"))
        await asyncio.sleep(2.5)
        assert len(client.events_of("ltx2_segment_start")) == paused_starts
        frames_while_paused = client.frame_count
        await asyncio.sleep(0.5)
        assert client.frame_count > frames_while_paused, "the track should hold the last frame, not stop"
        await client.send({"type": "generation_paused_updated", "paused": False})
        await client.wait_for_event("ltx2_segment_start", lambda e: e["segment_idx"] == paused_starts, timeout=5)


async def test_segment_cap_ends_the_stream_and_releases_the_session(start_server: Any) -> None:
    server = await start_server(make_config(streaming={"generation_segment_cap": 2}))
    async with await open_client(server) as client:
        done = await client.wait_for_event("ltx2_stream_complete", timeout=15)
        assert done["reason"] == "segment_cap"
        assert [e["segment_idx"] for e in client.events_of("ltx2_segment_complete")] == [0, 1]
        assert {f.marker.segment_idx for f in client.frames if f.marker} == {0, 1}
        await wait_until(lambda: len(server.app[REGISTRY]) == 0, 5, "session not released")
        await wait_until(lambda: len(server.app[WEBRTC]) == 0, 5, "peer not released")


async def test_invalid_control_message_does_not_interrupt_the_video(server: RunningServer) -> None:
    async with await open_client(server) as client:
        await client.wait_channel_open()
        await client.wait_for_event("ltx2_segment_start")
        await client.send("{this is not json")
        await client.wait_for_event("error")
        frames_then = client.frame_count
        await asyncio.sleep(1.0)
        assert client.frame_count > frames_then + 15


async def test_second_session_init_is_refused_without_ending_the_session(server: RunningServer) -> None:
    async with await open_client(server) as client:
        await client.wait_channel_open()
        await client.send({"type": "session_init_v2"})
        error = await client.wait_for_event("error")
        assert "already" in error["message"]
        await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 1)


async def test_session_init_over_the_data_channel_starts_the_stream(server: RunningServer) -> None:
    async with await open_client(server, init=None) as client:
        await client.wait_channel_open()
        await client.send({"type": "segment_prompt_source", "prompt": "too early"})
        error = await client.wait_for_event("error")
        assert "session_init_v2" in error["message"]
        await client.send({"type": "session_init_v2", "curated_prompts": ["desert dunes at dawn"]})
        start = await client.wait_for_event("ltx2_segment_start")
        assert start["prompt"] == "desert dunes at dawn"


async def post_offer(server: RunningServer, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as http:
        headers = {"Content-Type": "application/json", **(headers or {})}
        async with http.post(f"{server.url}/v1/webrtc/offer", data=data, headers=headers) as response:
            assert response.content_type == "application/json"
            return response.status, await response.json(), response.headers


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{nope", 400, "not valid JSON"),
        (b'{"type": "offer"}', 400, "sdp"),
        (b'{"sdp": "v=0", "type": "answer"}', 400, "type"),
        (b'{"sdp": "this is not sdp", "type": "offer"}', 400, "video"),
        (b'{"sdp": "v=0\\r\\nm=video notaport RTP/AVP 96\\r\\n", "type": "offer"}', 400, "SDP"),
        (b'{"sdp": "x", "type": "offer", "session_init": {"stream_mode": 5}}', 400, "session_init"),
    ],
)
async def test_bad_offers_get_a_json_400(server: RunningServer, body: bytes, status: int, fragment: str) -> None:
    got, payload, _ = await post_offer(server, body, {"Content-Type": "application/json"})
    assert got == status
    assert payload["error"]["code"] == "invalid_message" and fragment in payload["error"]["message"]
    assert len(server.app[REGISTRY]) == 0 and len(server.app[WEBRTC]) == 0


async def test_oversized_offer_gets_413(start_server: Any) -> None:
    server = await start_server(make_config(server={"max_body_bytes": 4096}))
    status, payload, _ = await post_offer(server, b'{"sdp": "' + b"a" * 5000 + b'", "type": "offer"}')
    assert status == 413 and payload["error"]["code"] == "invalid_message"


async def test_full_server_answers_503_with_retry_after(start_server: Any) -> None:
    server = await start_server(make_config(streaming={"max_sessions": 1}))
    async with await open_client(server) as first:
        await wait_until(lambda: first.frame_count > 0, 10, "no frame")
        with pytest.raises(OfferRejected) as info:
            await open_client(server)
        assert info.value.status == 503
        assert info.value.body["error"]["code"] == "session_rejected"
        assert info.value.body["error"]["retryable"] is False  # a full server, as the original
        assert int(info.value.headers["Retry-After"]) > 0
    await wait_until(lambda: len(server.app[REGISTRY]) == 0, 5, "session not released")


async def test_delete_ends_a_session_with_stop_requested(server: RunningServer) -> None:
    async with await open_client(server) as client:
        await client.wait_for_event("ltx2_segment_start")
        async with aiohttp.ClientSession() as http:
            async with http.delete(f"{server.url}/v1/sessions/{client.session_id}") as response:
                assert response.status == 200
            async with http.delete(f"{server.url}/v1/sessions/{client.session_id}") as response:
                assert response.status == 404
                assert (await response.json())["error"]["code"] == "invalid_message"
        done = await client.wait_for_event("ltx2_stream_complete")
        assert done["reason"] == "stop_requested"
    assert len(server.app[REGISTRY]) == 0


async def test_idle_session_gets_session_timeout_then_ends(start_server: Any) -> None:
    server = await start_server(make_config(streaming={"session_timeout_seconds": 1}))
    async with await open_client(server) as client:
        await client.wait_channel_open()
        await client.send({"type": "generation_paused_updated", "paused": True})
        timeout = await client.wait_for_event("session_timeout", timeout=10)
        assert timeout["timeout_seconds"] == 1
        await wait_until(lambda: len(server.app[REGISTRY]) == 0, 5, "timed-out session not released")


async def test_connect_disconnect_cycles_leave_nothing_behind(server: RunningServer) -> None:
    async def cycle() -> None:
        async with await open_client(server) as client:
            await wait_until(lambda: client.frame_count > 0, 10, "no frame")

    await cycle()
    await wait_until(lambda: len(server.app[REGISTRY]) == 0, 10, "first session not released")
    await asyncio.sleep(0.5)
    baseline = len(asyncio.all_tasks())
    for _ in range(20):
        await cycle()
    await wait_until(
        lambda: len(server.app[REGISTRY]) == 0 and len(server.app[WEBRTC]) == 0, 10, "sessions or peers left over"
    )
    await asyncio.sleep(1.0)
    assert len(asyncio.all_tasks()) <= baseline


async def test_a_peer_that_never_connects_is_released(start_server: Any) -> None:
    server = await start_server(make_config(webrtc={"connect_timeout_seconds": 1.0}))
    client = WebRTCClient(server.url, session_init=INIT)
    # An offer whose peer vanishes before ICE completes: the answer is never applied.
    client.pc.addTransceiver("video", direction="recvonly")
    await client.pc.setLocalDescription(await client.pc.createOffer())
    async with aiohttp.ClientSession() as http:
        body = {"sdp": client.pc.localDescription.sdp, "type": "offer", "session_init": INIT}
        async with http.post(f"{server.url}/v1/webrtc/offer", json=body) as response:
            assert response.status == 200
    await client.close()
    assert len(server.app[REGISTRY]) == 1
    await wait_until(lambda: len(server.app[REGISTRY]) == 0 and len(server.app[WEBRTC]) == 0, 5, "not released")


async def test_a_client_killed_without_closing_is_released_within_10s(server: RunningServer) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.rtc_server.transports.vanishing_client", server.url,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        session_id = line.decode().strip()
        assert server.app[REGISTRY].get(session_id) is not None
    finally:
        process.kill()
        await process.wait()
    killed_at = time.monotonic()
    await wait_until(lambda: len(server.app[REGISTRY]) == 0 and len(server.app[WEBRTC]) == 0, 10, "not released")
    assert time.monotonic() - killed_at < 10


async def test_a_peer_that_stops_reading_its_control_channel_is_ended_not_fed(start_server: Any) -> None:
    from aiortc.rtcsctptransport import DataChunk

    server = await start_server(
        make_config(limits={"max_queued_event_bytes": 64 * 1024, "messages_per_second": 10_000, "message_burst": 10_000})
    )
    async with await open_client(server) as client:
        await client.wait_channel_open()
        await client.wait_for_event("ltx2_segment_start")
        sctp = client.pc.sctp
        original = sctp._receive_chunk

        async def deaf(chunk: Any) -> None:  # takes no data in, so acknowledges none: its window stays shut
            if not isinstance(chunk, DataChunk):
                await original(chunk)

        sctp._receive_chunk = deaf
        for _ in range(2000):  # each answered with an error event that cannot be delivered
            client.channel.send('{"type": "warp_drive"}')
        await wait_until(lambda: len(server.app[REGISTRY]) == 0, 15, "a peer that reads nothing was kept")
