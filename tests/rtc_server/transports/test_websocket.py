"""The WebSocket/fMP4 transport over loopback: real sockets, real ffprobe."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rtc_server.app import REGISTRY, WEBSOCKET
from rtc_server.clients.ws_client import WebSocketClient
from tests.conftest import RunningServer, make_config

INIT = {"curated_prompts": ["a red fox running through fresh snow"]}


def ffprobe_frames(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_frames", "-show_entries",
         "frame=pts,width,height", "-of", "json", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )
    return json.loads(result.stdout)["frames"]


async def test_segments_decode_with_ffprobe_alone_and_as_one_stream(start_server: Any, tmp_path: Path) -> None:
    server = await start_server(make_config(streaming={"generation_segment_cap": 3}))
    async with WebSocketClient(server.url, session_init=INIT) as client:
        await client.connect()
        assert (await client.wait_for_event("ltx2_stream_complete", timeout=20))["reason"] == "segment_cap"
        assert await client.wait_closed() == 1000
    segments = client.complete_segments
    assert [s.segment_idx for s in segments] == [0, 1, 2]
    assert client.binary_before_init == 0
    for segment in segments:
        assert segment.mime.startswith('video/mp4; codecs="avc1.')
        assert segment.complete is not None and segment.complete["chunks"] == len(segment.chunks)
        assert segment.complete["duration_ms"] == pytest.approx(1000.0)
        path = tmp_path / f"segment{segment.segment_idx}.mp4"
        path.write_bytes(segment.data)
        frames = ffprobe_frames(path)
        assert len(frames) == 24
        assert {(f["width"], f["height"]) for f in frames} == {(256, 256)}
    # The synthetic backend has sound: the timeline starts one frame in (the AAC lead, media/aac.py).
    lead_ms = 1000.0 / 24
    assert [s.complete["pts_base_ms"] for s in segments if s.complete] == pytest.approx(
        [lead_ms, 1000.0 + lead_ms, 2000.0 + lead_ms], abs=0.001
    )
    # What an MSE player appends, one segment after another, as one file.
    whole = tmp_path / "stream.mp4"
    whole.write_bytes(b"".join(s.data for s in segments))
    frames = ffprobe_frames(whole)
    assert len(frames) == 72
    pts = [f["pts"] for f in frames]
    steps = {b - a for a, b in zip(pts, pts[1:], strict=False)}
    assert len(steps) == 1 and steps.pop() > 0, "timestamps must continue evenly across segments"


@pytest.mark.parametrize(
    ("first", "fragment"),
    [
        ('{"type": "segment_prompt_source", "prompt": "hi"}', "must be session_init_v2"),
        ("not json at all", "not valid JSON"),
        ('{"type": "session_init_v2", "stream_mode": 7}', "stream_mode"),
        (b"\x00binary", "text frame"),
    ],
)
async def test_invalid_first_message_gets_an_error_and_close_1003(
    server: RunningServer, first: str | bytes, fragment: str
) -> None:
    async with WebSocketClient(server.url) as client:
        await client.connect(send_init=False)
        await client.send(first)
        error = await client.wait_for_event("error")
        assert error["code"] == "invalid_message" and fragment in error["message"]
        assert await client.wait_closed() == 1003
    await asyncio.sleep(0.1)
    assert len(server.app[REGISTRY]) == 0


async def test_full_server_sends_session_rejected_and_closes_1013(start_server: Any) -> None:
    server = await start_server(make_config(streaming={"max_sessions": 1}))
    async with WebSocketClient(server.url, session_init=INIT) as first:
        await first.connect()
        await first.wait_for_event("ltx2_segment_start")
        async with WebSocketClient(server.url, session_init=INIT) as second:
            await second.connect()
            error = await second.wait_for_event("error")
            assert error["code"] == "session_rejected" and error["retryable"] is False  # as the original
            assert await second.wait_closed() == 1013
        done = len(first.events_of("ltx2_segment_complete"))
        await first.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] >= done)


async def test_bad_messages_from_one_client_do_not_disturb_another(start_server: Any) -> None:
    server = await start_server(make_config(server={"max_message_bytes": 1024}))
    async with (
        WebSocketClient(server.url, session_init=INIT) as rude,
        WebSocketClient(server.url, session_init=INIT) as calm,
    ):
        await rude.connect()
        await calm.connect()
        await rude.wait_for_event("ltx2_segment_start")
        await rude.send(b"\x01\x02\x03")
        await rude.send(json.dumps({"type": "segment_prompt_source", "prompt": "x" * 1500}))
        errors = [await rude.wait_for_event("error", lambda e, i=i: rude.events_of("error").index(e) == i) for i in range(2)]
        assert "binary" in errors[0]["message"] and "exceeds" in errors[1]["message"]
        done = len(rude.events_of("ltx2_segment_complete"))
        await rude.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] >= done)
        # Past twice the limit the frame is not even read: the connection closes with 1009.
        await rude.send(json.dumps({"type": "segment_prompt_source", "prompt": "x" * 5000}))
        assert await rude.wait_closed() == 1009
        done = len(calm.events_of("ltx2_segment_complete"))
        await calm.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] >= done + 1)
        assert not calm.events_of("error")


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def test_a_client_that_stops_reading_is_bounded_told_and_recovers(start_server: Any) -> None:
    config = make_config(
        default_request={"sampling": {"width": 512, "height": 512}},
        websocket={"max_pending_segments": 2, "send_buffer_bytes": 16 * 1024, "crf": 12},
    )
    server = await start_server(config)
    async with WebSocketClient(server.url, session_init=INIT, receive_buffer_bytes=16 * 1024) as client:
        await client.connect()
        await client.wait_for_event("media_segment_complete")
        client.pause_reading()
        rss_before = rss_bytes()
        sink_peak = 0
        for _ in range(100):  # 10 s without reading while segments are produced
            await asyncio.sleep(0.1)
            controller = next(iter(server.app[REGISTRY]._controllers.values()))
            sink_peak = max(sink_peak, controller._sink._pending_segments)  # type: ignore[attr-defined]
        rss_growth = rss_bytes() - rss_before
        assert sink_peak <= 2
        # Skipping does not make generation race ahead: it keeps the stream's real-time pace.
        assert controller.segments_done <= 16, controller.segments_done
        assert rss_growth < 64 * 1024 * 1024, f"memory grew by {rss_growth / 2**20:.1f} MiB"
        client.resume_reading()
        skipped = await client.wait_for_event("media_segment_skipped", timeout=10)
        after = await client.wait_for_event(
            "media_segment_complete", lambda e: e["segment_idx"] > skipped["segment_idx"], timeout=10
        )
        # The media timeline stays gap-free across the skip: each segment starts where the last ended.
        completes = client.events_of("media_segment_complete")
        bases = [c["pts_base_ms"] for c in completes]
        # (It starts one frame in: the synthetic backend has sound, see media/aac.py.)
        assert bases == pytest.approx([1000.0 / 24 + 1000.0 * i for i in range(len(bases))], abs=0.001)
        assert after["segment_idx"] > skipped["segment_idx"]
        assert len(client.events_of("media_segment_skipped")) >= 3


async def test_shutdown_closes_sessions_with_1012_service_restart(start_server: Any) -> None:
    server = await start_server(make_config())
    async with WebSocketClient(server.url, session_init=INIT) as client:
        await client.connect()
        await client.wait_for_event("ltx2_segment_start")
        await server._server.close()  # type: ignore[attr-defined]
        assert await client.wait_closed() == 1012  # the session is not over: resume it elsewhere
        error = client.events_of("error")[-1]
        assert (error["code"], error["retryable"]) == ("gpu_unavailable", True)
    assert len(server.app[WEBSOCKET]) == 0


async def test_plain_http_get_on_the_stream_endpoint_is_refused(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/v1/stream") as response:
            assert response.status == 400


async def test_a_client_that_never_reads_again_is_disconnected_and_released(start_server: Any) -> None:
    config = make_config(
        default_request={"sampling": {"width": 512, "height": 512}},
        websocket={"max_pending_segments": 1, "send_buffer_bytes": 16 * 1024, "crf": 12, "stalled_client_timeout_seconds": 2},
    )
    server = await start_server(config)
    async with WebSocketClient(server.url, session_init=INIT, receive_buffer_bytes=16 * 1024) as client:
        await client.connect()
        await client.wait_for_event("media_segment_complete")
        client.pause_reading()
        for _ in range(100):
            if len(server.app[REGISTRY]) == 0:
                break
            await asyncio.sleep(0.1)
        assert len(server.app[REGISTRY]) == 0
        client.resume_reading()
        assert await client.wait_closed() in (1008, 1006)  # 1006 when the close frame did not fit


async def test_text_events_never_split_a_segments_media(server: RunningServer) -> None:
    async with WebSocketClient(server.url, session_init=INIT) as client:
        await client.connect()
        for _ in range(6):
            await client.send({"type": "segment_prompt_source", "prompt": "prompt while media flows"})
            await asyncio.sleep(0.15)
        await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 2)
        kinds = [e["type"] for e in client.events]
        for start in (i for i, kind in enumerate(kinds) if kind == "media_init"):
            assert kinds[start + 1] == "media_segment_complete", kinds[start : start + 3]
        assert client.binary_before_init == 0
        for segment in client.complete_segments:
            assert segment.init[4:8] == b"ftyp" and all(chunk[4:8] == b"moof" for chunk in segment.chunks)


async def test_events_piling_up_for_a_client_that_reads_nothing_end_it(start_server: Any) -> None:
    config = make_config(
        websocket={"send_buffer_bytes": 16 * 1024},
        limits={"max_queued_event_bytes": 64 * 1024, "messages_per_second": 10_000, "message_burst": 10_000},
    )
    server = await start_server(config)
    async with WebSocketClient(server.url, session_init=INIT, receive_buffer_bytes=16 * 1024) as client:
        await client.connect()
        await client.wait_for_event("media_segment_complete")
        client.pause_reading()
        for _ in range(2000):  # each is answered with an error event the client never reads
            await client.send(json.dumps({"type": "warp_drive"}))
        deadline = time.monotonic() + 10
        while len(server.app[REGISTRY]):
            assert time.monotonic() < deadline, "the session was kept for a client that reads nothing"
            await asyncio.sleep(0.05)


_GONE = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


async def _paused_session(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_str(json.dumps({"type": "session_init_v2", **INIT}))
    await ws.send_str(json.dumps({"type": "generation_paused_updated", "paused": True}))


async def test_heartbeat_pings_keep_a_paused_session_and_find_a_dead_peer(start_server: Any) -> None:
    server = await start_server(make_config(websocket={"heartbeat_seconds": 0.4}))
    async with aiohttp.ClientSession() as http:
        # autoping off: this client sees the server's pings and answers them only while "alive".
        async with http.ws_connect(f"{server.url}/v1/stream", protocols=("rtcvs",), autoping=False) as ws:
            await _paused_session(ws)
            pings = 0
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                with contextlib.suppress(asyncio.TimeoutError):
                    message = await ws.receive(timeout=0.5)
                    assert message.type not in _GONE, message
                    if message.type == aiohttp.WSMsgType.PING:
                        pings += 1
                        await ws.pong(message.data)
            assert pings >= 4, "the server must ping an idle (paused) session"
            assert len(server.app[REGISTRY]) == 1, "a peer that answers pings stays"
            # Now it stops answering, like a laptop whose lid closed: the server must notice.
            deadline = time.monotonic() + 5
            while len(server.app[REGISTRY]) and time.monotonic() < deadline:
                with contextlib.suppress(asyncio.TimeoutError):
                    if (await ws.receive(timeout=0.2)).type in _GONE:
                        break
            for _ in range(50):
                if not len(server.app[REGISTRY]):
                    break
                await asyncio.sleep(0.1)
            assert len(server.app[REGISTRY]) == 0, "a peer that stopped answering pings was kept"


async def test_heartbeat_can_be_turned_off(start_server: Any) -> None:
    server = await start_server(make_config(websocket={"heartbeat_seconds": None}))
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{server.url}/v1/stream", protocols=("rtcvs",), autoping=False) as ws:
            await _paused_session(ws)
            kinds = []
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                with contextlib.suppress(asyncio.TimeoutError):
                    kinds.append((await ws.receive(timeout=0.5)).type)
                    assert kinds[-1] not in _GONE
            assert aiohttp.WSMsgType.PING not in kinds
            assert len(server.app[REGISTRY]) == 1
