"""fMP4 viewers of a session over loopback: real sockets, real ffprobe, owner on WebSocket and WebRTC."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from rtc_server.app import REGISTRY
from rtc_server.clients.watch_client import WatchClient
from rtc_server.clients.webrtc_client import WebRTCClient
from rtc_server.clients.ws_client import ReceivedSegment, WebSocketClient
from tests.conftest import RunningServer, make_config

INIT = {"curated_prompts": ["a red fox running through fresh snow"]}
CAP = 4  # segments per session


def config(**streaming: Any) -> Any:
    return make_config(streaming={"generation_segment_cap": CAP, **streaming})


def ffprobe_frames(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_frames", "-show_entries", "frame=pts",
         "-of", "json", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )
    return json.loads(result.stdout)["frames"]


def assert_plays(segments: list[ReceivedSegment], path: Path) -> None:
    """Appended one after another, as an MSE player does: 24 frames a segment, evenly timed."""
    path.write_bytes(b"".join(s.data for s in segments))
    frames = ffprobe_frames(path)
    assert len(frames) == 24 * len(segments)
    pts = [f["pts"] for f in frames]
    assert len({b - a for a, b in itertools.pairwise(pts)}) == 1


@contextlib.asynccontextmanager
async def watchers(server: RunningServer, session_id: str, token: str, count: int) -> AsyncIterator[list[WatchClient]]:
    clients = [WatchClient(server.url, session_id=session_id, watch_token=token) for _ in range(count)]
    try:
        for client in clients:
            await client.watch()
        yield clients
    finally:
        for client in clients:
            await client.close()


def assert_in_protocol_order(watcher: WatchClient) -> None:
    kinds = [e["type"] for e in watcher.events]
    first = kinds.index("ltx2_segment_start")
    idx = watcher.events[first]["segment_idx"]
    expected: list[str] = []
    for _ in range(idx, CAP):
        expected += ["ltx2_segment_start", "media_init", "media_segment_complete", "ltx2_segment_complete"]
    assert kinds[first:] == [*expected, "ltx2_stream_complete"]
    assert watcher.binary_before_init == 0


async def test_three_viewers_of_a_websocket_owner_get_its_very_bytes_and_end_with_it(
    start_server: Any, tmp_path: Path
) -> None:
    server = await start_server(config())
    async with WebSocketClient(server.url, session_init=INIT) as owner:
        await owner.connect()
        info = await owner.wait_for_event("session_info", timeout=20)
        async with watchers(server, info["session_id"], info["watch_token"], 3) as viewers:
            await owner.wait_for_event("ltx2_stream_complete", timeout=30)
            for viewer in viewers:
                assert await viewer.wait_closed() == 1000
        assert await owner.wait_closed() == 1000
    mine = {s.segment_idx: s for s in owner.complete_segments}
    assert sorted(mine) == list(range(CAP))
    for n, viewer in enumerate(viewers):
        got = viewer.complete_segments
        assert len(got) >= CAP - 1, "a viewer starts at the next segment"
        assert [s.segment_idx for s in got] == list(range(got[0].segment_idx, CAP))
        for segment in got:
            assert segment.data == mine[segment.segment_idx].data  # encoded once: the same bytes
        assert_in_protocol_order(viewer)
        assert viewer.events_of("ltx2_stream_complete")[-1]["reason"] in ("stop_requested", "segment_cap")
        assert_plays(got, tmp_path / f"viewer{n}.mp4")


async def test_three_viewers_of_a_webrtc_owner_share_one_fmp4_encoding(start_server: Any, tmp_path: Path) -> None:
    server = await start_server(config())
    owner = WebRTCClient(server.url, session_init=INIT)
    try:
        session_id = await owner.connect()
        info = await owner.wait_for_event("session_info", timeout=20)
        assert info["session_id"] == session_id
        async with watchers(server, session_id, info["watch_token"], 3) as viewers:
            await owner.wait_for_event("ltx2_stream_complete", timeout=30)
            for viewer in viewers:
                assert await viewer.wait_closed() == 1000
    finally:
        await owner.close()
    made = {e["segment_idx"] for e in owner.events_of("ltx2_segment_complete")}
    assert made == set(range(CAP))
    # Each viewer starts at the segment opened after it joined (on a loaded machine they may not all
    # join before the same one) and then gets every segment to the end, the same bytes for all.
    encoded: dict[int, bytes] = {}
    for n, viewer in enumerate(viewers):
        got = viewer.complete_segments
        assert got, "a viewer got no segment"
        assert [s.segment_idx for s in got] == list(range(got[0].segment_idx, CAP))
        for segment in got:
            assert encoded.setdefault(segment.segment_idx, segment.data) == segment.data  # one encoder for all
        assert_in_protocol_order(viewer)
        assert_plays(got, tmp_path / f"viewer{n}.mp4")
    # Over WebRTC, session_info arrives once the data channel is open: a segment or two may already be out.
    assert len(encoded) >= 1


async def test_tokens_sessions_and_room_are_checked_before_the_upgrade(start_server: Any) -> None:
    server = await start_server(config(viewers={"max_per_session": 2}))
    async with WebSocketClient(server.url, session_init=INIT) as owner, aiohttp.ClientSession() as http:
        await owner.connect()
        info = await owner.wait_for_event("session_info", timeout=20)
        sid, token = info["session_id"], info["watch_token"]
        url = f"{server.url}/v1/sessions/{sid}/watch"

        async def status(target: str, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
            async with http.get(target, **kwargs) as response:
                return response.status, dict(response.headers), await response.json()

        code, _, body = await status(url)
        assert code == 401 and body["error"]["code"] == "unauthorized"
        assert (await status(url, params={"token": "not-it"}))[0] == 401
        assert (await status(url, headers={"Authorization": "Bearer not-it"}))[0] == 401
        assert (await status(f"{server.url}/v1/sessions/nope/watch", params={"token": token}))[0] == 404
        async with watchers(server, sid, token, 1), aiohttp.ClientSession() as other:
            # The header works as well as the subprotocol.
            ws = await other.ws_connect(url.replace("http", "ws", 1), headers={"Authorization": f"Bearer {token}"})
            code, headers, body = await status(url, params={"token": token})
            assert code == 503 and int(headers["Retry-After"]) > 0 and body["error"]["retryable"] is True
            await ws.close()
        hub = server.app[REGISTRY].get(sid).viewers  # type: ignore[union-attr]
        assert hub is not None
        await owner.wait_for_event("ltx2_segment_start", timeout=20)
        for _ in range(100):
            if len(hub) == 0:
                break
            await asyncio.sleep(0.05)
        assert len(hub) == 0, "viewers that left free their places"


async def test_with_viewers_off_there_is_no_watch_token_and_no_endpoint(start_server: Any) -> None:
    server = await start_server(config(viewers={"enabled": False}))
    async with WebSocketClient(server.url, session_init=INIT) as owner, aiohttp.ClientSession() as http:
        await owner.connect()
        info = await owner.wait_for_event("session_info", timeout=20)
        assert "watch_token" not in info
        async with http.get(f"{server.url}/v1/sessions/{info['session_id']}/watch", params={"token": "x"}) as response:
            assert response.status == 404


async def test_a_viewer_that_stops_reading_is_dropped_without_slowing_anyone(start_server: Any) -> None:
    cap = 8
    server = await start_server(
        make_config(
            streaming={"generation_segment_cap": cap, "viewers": {"max_queued_bytes": 64 * 1024}},
            websocket={"send_buffer_bytes": 4096, "crf": 12},
            # Bigger frames: the stream must outgrow what the sockets and the client library buffer.
            default_request={"sampling": {"width": 512, "height": 512, "fps": 24, "num_frames": 24, "num_inference_steps": 1}},
        )
    )
    async with WebSocketClient(server.url, session_init=INIT) as owner:
        await owner.connect()
        info = await owner.wait_for_event("session_info", timeout=20)
        sid, token = info["session_id"], info["watch_token"]
        stalled = WatchClient(server.url, session_id=sid, watch_token=token, receive_buffer_bytes=4096)
        try:
            await stalled.watch()
            stalled.pause_reading()
            async with watchers(server, sid, token, 2) as readers:
                await owner.wait_for_event("ltx2_stream_complete", timeout=60)
                for reader in readers:
                    assert await reader.wait_closed() == 1000
            stalled.resume_reading()
            assert await stalled.wait_closed() != 1000, "the stalled viewer was dropped, not ended normally"
            assert len(stalled.complete_segments) < cap - 1
        finally:
            await stalled.close()
    assert sorted(s.segment_idx for s in owner.complete_segments) == list(range(cap))
    assert owner.events_of("media_segment_skipped") == []
    for reader in readers:
        got = reader.complete_segments
        assert [s.segment_idx for s in got] == list(range(got[0].segment_idx, cap))
        assert len(got) >= cap - 1
