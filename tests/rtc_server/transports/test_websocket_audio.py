"""Sound over the WebSocket/fMP4 transport, end to end on loopback with the synthetic backend.

The synthetic sound clicks at the first sample of every segment; the frame marker says which frame
starts a segment. Both are read back from what the client got, decoded by the real ffmpeg.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpu.frame_marker import cell_size_for_width, read_marker
from rtc_server.clients.ws_client import ReceivedSegment, WebSocketClient
from tests.conftest import make_config

INIT = {"curated_prompts": ["a red fox running through fresh snow"]}
SIZE, FPS, SEGMENTS = 256, 24, 3
TIMEOUT_S = 60
ONSET_LEVEL = 0.5  # tone 0.15, click 0.9 (gpu/synthetic_audio.py)
QUIET_S = 0.01  # an onset follows at least this long below the level


async def stream_segments(start_server: Any, options: dict[str, Any]) -> list[ReceivedSegment]:
    config = make_config(
        generator={"backend": "synthetic", "options": options},
        streaming={"generation_segment_cap": SEGMENTS},
    )
    server = await start_server(config)
    async with WebSocketClient(server.url, session_init=INIT) as client:
        await client.connect()
        assert (await client.wait_for_event("ltx2_stream_complete", timeout=20))["reason"] == "segment_cap"
        assert await client.wait_closed() == 1000
    segments = client.complete_segments
    assert [s.segment_idx for s in segments] == list(range(SEGMENTS))
    return segments


def probe_streams(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", "-show_streams", "-show_packets",
         "-show_entries", "packet=stream_index,pts,duration:stream=index,codec_name,time_base", str(path)],
        capture_output=True, text=True, check=True, timeout=TIMEOUT_S,
    )
    info = json.loads(result.stdout)
    for stream in info["streams"]:
        stream["packets"] = [
            (int(p["pts"]), int(p["duration"])) for p in info["packets"] if p["stream_index"] == stream["index"]
        ]
    return info["streams"]


def video_frames(path: Path) -> tuple[list[float], np.ndarray]:
    """Presentation times (s) and RGB pixels of every video frame, none dropped or repeated."""
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_frames", "-show_entries",
         "frame=best_effort_timestamp_time", "-of", "json", str(path)],
        capture_output=True, text=True, check=True, timeout=TIMEOUT_S,
    )
    times = [float(f["best_effort_timestamp_time"]) for f in json.loads(probe.stdout)["frames"]]
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True, timeout=TIMEOUT_S,
    ).stdout
    return times, np.frombuffer(raw, np.uint8).reshape(-1, SIZE, SIZE, 3)


def audio_onsets(path: Path) -> tuple[list[float], int]:
    """Click onsets (s) in the decoded audio track, and its sample rate."""
    (stream,) = [s for s in probe_streams(path) if s["codec_name"] == "aac"]
    rate = int(stream["time_base"].split("/")[1])
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "f32le", "-ac", "1", "-"],
        capture_output=True, check=True, timeout=TIMEOUT_S,
    ).stdout
    loud = np.flatnonzero(np.abs(np.frombuffer(raw, np.float32)) > ONSET_LEVEL)
    quiet = int(rate * QUIET_S)
    return [int(at) / rate for i, at in enumerate(loud) if i == 0 or at - loud[i - 1] > quiet], rate


def assert_continuous(packets: list[tuple[int, int]], what: str) -> None:
    for (pts, duration), (following, _) in itertools.pairwise(packets):
        assert following == pts + duration, f"{what}: gap or overlap at {pts + duration}"


async def test_sound_streams_with_both_codecs_named_and_clicks_on_segment_starts(
    start_server: Any, tmp_path: Path
) -> None:
    segments = await stream_segments(start_server, {})
    for segment in segments:
        assert segment.mime.startswith('video/mp4; codecs="avc1.')
        assert segment.mime.endswith(', mp4a.40.2"')
    path = tmp_path / "stream.mp4"
    path.write_bytes(b"".join(s.data for s in segments))  # what one SourceBuffer gets
    streams = probe_streams(path)
    assert [s["codec_name"] for s in streams] == ["h264", "aac"]
    for stream in streams:
        assert_continuous(stream["packets"], stream["codec_name"])

    times, pixels = video_frames(path)
    assert len(times) == SEGMENTS * 24
    cell = cell_size_for_width(SIZE)
    markers = [read_marker(frame, cell_px=cell) for frame in pixels]
    assert all(m is not None for m in markers)
    starts = [t for i, (t, m) in enumerate(zip(times, markers, strict=True))
              if i == 0 or (m and markers[i - 1] and m.segment_idx != markers[i - 1].segment_idx)]  # type: ignore[union-attr]
    assert len(starts) == SEGMENTS

    onsets, _ = audio_onsets(path)
    # The last segment's end is still in the encoder when the stream ends (media/aac.py); every
    # segment's start has been heard.
    for start in starts:
        nearest = min(onsets, key=lambda onset: abs(onset - start))
        assert abs(nearest - start) < 1 / FPS, f"segment starts at {start:.4f} s, nearest click {nearest:.4f} s"


async def test_a_backend_without_sound_streams_video_only(start_server: Any, tmp_path: Path) -> None:
    segments = await stream_segments(start_server, {"audio": False})
    for segment in segments:
        assert segment.mime.startswith('video/mp4; codecs="avc1.')
        assert "mp4a" not in segment.mime
    assert [s.complete["pts_base_ms"] for s in segments if s.complete] == pytest.approx([0.0, 1000.0, 2000.0])
    path = tmp_path / "stream.mp4"
    path.write_bytes(b"".join(s.data for s in segments))
    (stream,) = probe_streams(path)
    assert stream["codec_name"] == "h264"
    assert_continuous(stream["packets"], "h264")
