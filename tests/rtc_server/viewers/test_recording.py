"""Session recording over loopback: real sockets, owners on the WebSocket and on WebRTC, real ffprobe."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

from rtc_server.clients.webrtc_client import WebRTCClient
from rtc_server.clients.ws_client import WebSocketClient
from tests.conftest import RunningServer, make_config

INIT = {"curated_prompts": ["a red fox running through fresh snow"]}
FPS = 24  # make_config's sampling: 24 frames a segment at 24 fps
FINALISE_TIMEOUT_S = 30.0


def config(tmp_path: Path | None, cap: int, **streaming: Any) -> Any:
    recording = {"recording_dir": str(tmp_path / "rec")} if tmp_path is not None else {}
    return make_config(streaming={"generation_segment_cap": cap, **recording, **streaming})


def probe(path: Path) -> dict[str, dict[str, Any]]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries",
         "stream=codec_type,nb_read_frames,duration", "-of", "json", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return {s["codec_type"]: s for s in json.loads(result.stdout)["streams"]}


def frames_in(data: bytes, path: Path) -> int:
    """Video frames in fMP4 bytes, as ffprobe counts them."""
    path.write_bytes(data)
    return int(probe(path)["video"]["nb_read_frames"])


async def recordings(server: RunningServer, session_id: str, token: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(
        f"{server.url}/v1/sessions/{session_id}/recording", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    assert body["session_id"] == session_id
    return list(body["recordings"])


async def wait_ready(server: RunningServer, session_id: str, token: str, count: int = 1) -> list[dict[str, Any]]:
    """The session's recordings once ``count`` of them are finalised (the owner polls the listing)."""
    deadline = asyncio.get_running_loop().time() + FINALISE_TIMEOUT_S
    while True:
        listed = await recordings(server, session_id, token)
        if sum(r["state"] == "ready" for r in listed) >= count:
            return listed
        assert asyncio.get_running_loop().time() < deadline, f"not finalised: {listed}"
        await asyncio.sleep(0.1)


async def wait_for_part_file(directory: Path) -> None:
    """The recording's fragmented MP4 (its file opens in a thread with the first media)."""
    for _ in range(200):
        if list(directory.glob("*.part.mp4")):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no part file in {[p.name for p in directory.iterdir()]}")


def assert_recording(path: Path, frames: int) -> None:
    """A plain MP4 (index first) with exactly ``frames`` frames laid end to end, and its sound."""
    streams = probe(path)
    assert int(streams["video"]["nb_read_frames"]) == frames
    assert abs(float(streams["video"]["duration"]) - frames / FPS) < 1e-3
    assert "audio" in streams, "the synthetic backend makes sound: it is recorded too"
    assert abs(float(streams["audio"]["duration"]) - frames / FPS) < 0.1
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")


async def test_a_websocket_session_is_recorded_frame_for_frame_with_its_sound(start_server: Any, tmp_path: Path) -> None:
    server = await start_server(config(tmp_path, 3))
    async with WebSocketClient(server.url, session_init=INIT) as owner:
        await owner.connect()
        info = await owner.wait_for_event("session_info", timeout=20)
        await owner.wait_for_event("ltx2_stream_complete", timeout=30)
        assert await owner.wait_closed() == 1000
    kinds = [e["type"] for e in owner.events]
    assert kinds.index("recording_updated") == kinds.index("ltx2_stream_start") + 1
    assert owner.events_of("recording_updated") == [{"type": "recording_updated", "enabled": True}]
    sent = frames_in(b"".join(s.data for s in owner.complete_segments), tmp_path / "sent.mp4")
    assert sent == 3 * FPS
    (listed,) = await wait_ready(server, info["session_id"], info["resume_token"])
    assert (listed["frames"], listed["duration_s"], listed["audio"]) == (sent, sent / FPS, True)
    path = tmp_path / "rec" / listed["name"]
    assert listed["bytes"] == path.stat().st_size
    assert_recording(path, sent)
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == sorted([listed["name"], path.stem + ".json"])


async def test_a_webrtc_session_is_recorded_frame_for_frame_with_its_sound(start_server: Any, tmp_path: Path) -> None:
    server = await start_server(config(tmp_path, 3, viewers={"enabled": False}))
    owner = WebRTCClient(server.url, session_init=INIT)
    try:
        session_id = await owner.connect()
        info = await owner.wait_for_event("session_info", timeout=20)
        assert "watch_token" not in info, "viewers are off: the hub only feeds the recording"
        await owner.wait_for_event("ltx2_stream_complete", timeout=30)
    finally:
        await owner.close()
    sent = FPS * len(owner.events_of("ltx2_segment_complete"))
    assert sent == 3 * FPS
    (listed,) = await wait_ready(server, session_id, info["resume_token"])
    assert (listed["frames"], listed["audio"]) == (sent, True)
    assert_recording(tmp_path / "rec" / listed["name"], sent)


async def test_recording_off_and_on_again_makes_two_files_that_share_the_stream(start_server: Any, tmp_path: Path) -> None:
    server = await start_server(config(tmp_path, 4))
    async with WebSocketClient(server.url, session_init=INIT) as owner:
        await owner.connect()
        info = await owner.wait_for_event("session_info", timeout=20)
        await owner.wait_for_event("media_segment_complete", timeout=20)
        await owner.send({"type": "recording_updated", "enabled": False})
        await owner.send({"type": "recording_updated", "enabled": True})
        await owner.send({"type": "recording_updated", "enabled": True})  # already on: nothing new
        await owner.wait_for_event("ltx2_stream_complete", timeout=30)
        assert await owner.wait_closed() == 1000
    echoes = [e["enabled"] for e in owner.events_of("recording_updated")]
    assert echoes == [True, False, True, True]
    sent = frames_in(b"".join(s.data for s in owner.complete_segments), tmp_path / "sent.mp4")
    assert sent == 4 * FPS
    listed = await wait_ready(server, info["session_id"], info["resume_token"], count=2)
    assert [r["name"] for r in listed] == [f"{info['session_id']}-1.mp4", f"{info['session_id']}-2.mp4"]
    # The first ends with the segment in flight, the second starts with the next: every frame once.
    counts = [r["frames"] for r in listed]
    assert sum(counts) == sent and all(c > 0 and c % FPS == 0 for c in counts)
    for entry in listed:
        assert_recording(tmp_path / "rec" / entry["name"], entry["frames"])


async def test_recording_updated_over_the_data_channel_stops_the_recording(start_server: Any, tmp_path: Path) -> None:
    server = await start_server(config(tmp_path, 6))
    owner = WebRTCClient(server.url, session_init=INIT)
    try:
        session_id = await owner.connect()
        info = await owner.wait_for_event("session_info", timeout=20)
        await owner.wait_for_event("ltx2_segment_complete", timeout=20)
        await owner.send({"type": "recording_updated", "enabled": False})
        echo = await owner.wait_for_event("recording_updated", lambda e: e["enabled"] is False, timeout=10)
        assert echo == {"type": "recording_updated", "enabled": False}
        await owner.wait_for_event("ltx2_stream_complete", timeout=30)
    finally:
        await owner.close()
    (listed,) = await wait_ready(server, session_id, info["resume_token"])
    assert 0 < listed["frames"] < 6 * FPS and listed["frames"] % FPS == 0
    assert_recording(tmp_path / "rec" / listed["name"], listed["frames"])


async def test_without_a_recording_dir_recording_updated_is_refused_and_the_stream_goes_on(start_server: Any) -> None:
    server = await start_server(config(None, 3))
    async with WebSocketClient(server.url, session_init=INIT) as ws_owner:
        await ws_owner.connect()
        await ws_owner.wait_for_event("session_info", timeout=20)
        await ws_owner.send({"type": "recording_updated", "enabled": True})
        error = await ws_owner.wait_for_event("error", timeout=10)
        await ws_owner.wait_for_event("ltx2_stream_complete", timeout=30)
    rtc_owner = WebRTCClient(server.url, session_init=INIT)
    try:
        await rtc_owner.connect()
        await rtc_owner.wait_for_event("session_info", timeout=20)
        await rtc_owner.send({"type": "recording_updated", "enabled": False})
        rtc_error = await rtc_owner.wait_for_event("error", timeout=10)
        await rtc_owner.wait_for_event("ltx2_stream_complete", timeout=30)
    finally:
        await rtc_owner.close()
    for owner, refusal in ((ws_owner, error), (rtc_owner, rtc_error)):
        assert refusal["code"] == "invalid_message" and refusal["retryable"] is False
        assert "recording_dir" in refusal["message"]
        assert owner.events_of("recording_updated") == []
        assert {e["segment_idx"] for e in owner.events_of("ltx2_segment_complete")} == {0, 1, 2}
        assert owner.events_of("ltx2_stream_complete")[-1]["reason"] == "segment_cap"


async def test_a_server_shutting_down_finalises_the_recording(start_server: Any, tmp_path: Path) -> None:
    server = await start_server(config(tmp_path, 0))  # no cap: the stream runs until the server stops
    async with WebSocketClient(server.url, session_init=INIT) as owner:
        await owner.connect()
        await owner.wait_for_event("media_segment_complete", lambda e: e["segment_idx"] >= 1, timeout=20)
        await wait_for_part_file(tmp_path / "rec")  # a fragmented MP4 is written as the session goes
        await server._server.close()  # a graceful stop: drain, then the cleanup contexts
        assert await owner.wait_closed() == 1012
    (sidecar,) = (tmp_path / "rec").glob("*.json")
    meta = json.loads(sidecar.read_text())
    assert meta["state"] == "ready" and meta["frames"] >= 2 * FPS
    assert not list((tmp_path / "rec").glob("*.part.mp4"))
    assert_recording(tmp_path / "rec" / f"{sidecar.stem}.mp4", meta["frames"])


async def test_recordings_are_deleted_once_past_their_retention(start_server: Any, tmp_path: Path) -> None:
    server = await start_server(config(tmp_path, 2, recording_retention_seconds=0.5))
    async with WebSocketClient(server.url, session_init=INIT) as owner:
        await owner.connect()
        await owner.wait_for_event("media_segment_complete", timeout=20)
        await wait_for_part_file(tmp_path / "rec")
        await owner.wait_for_event("ltx2_stream_complete", timeout=30)
    directory = tmp_path / "rec"
    for _ in range(200):
        if not any(directory.iterdir()):
            break
        await asyncio.sleep(0.05)
    assert not any(directory.iterdir()), [p.name for p in directory.iterdir()]
