"""Remuxing a recording's fragmented MP4 into a plain one: packets copied, timing laid end to end (real ffprobe)."""

from __future__ import annotations

import itertools
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpu.audio import AudioFormat
from rtc_server.media.fmp4 import Fmp4Encoder
from rtc_server.media.mp4_remux import EmptyRecording, RemuxError, remux_recording

FPS = 24
SIZE = 64
AUDIO = AudioFormat(sample_rate=48000, channels=2)


@dataclass
class PartFile:
    """Segments appended as a recording writes them: the first init, then every fragment."""

    data: bytearray = field(default_factory=bytearray)
    ranges: list[tuple[int, int]] = field(default_factory=list)  # each segment's fragments

    def add(self, chunks: list[bytes]) -> None:
        if not self.data:
            self.data += chunks[0]
        start = len(self.data)
        for chunk in chunks[1:]:
            self.data += chunk
        self.ranges.append((start, len(self.data)))


def segment(encoder: Fmp4Encoder, *, frames: int = FPS, delivered: int | None = None) -> list[bytes]:
    """One segment's chunks; ``delivered`` < ``frames``: cut short (its place on the timeline kept)."""
    made = delivered if delivered is not None else frames
    pixels = np.random.default_rng(made).integers(0, 255, (made, SIZE, SIZE, 3), dtype=np.uint8)
    samples = made * AUDIO.sample_rate // FPS
    pcm = (0.2 * np.sin(np.arange(samples) / 20.0)).astype(np.float32)[:, None].repeat(2, axis=1)
    with encoder.encode_stream(iter([(pixels, pcm)]), num_frames=frames) as stream:
        return list(stream)


def probe(path: Path) -> dict[str, Any]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries",
         "stream=codec_type,nb_read_frames,duration,start_time:format=duration", "-of", "json", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return json.loads(result.stdout)


def video_pts(path: Path) -> list[float]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time", "-of", "json", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return [float(p["pts_time"]) for p in json.loads(result.stdout)["packets"]]


def streams(info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["codec_type"]: s for s in info["streams"]}


def assert_even(pts: list[float]) -> None:
    assert pts[0] == 0.0
    assert all(abs((b - a) - 1 / FPS) < 1e-3 for a, b in itertools.pairwise(pts))


def test_whole_segments_are_copied_frame_for_frame_from_zero_with_the_index_first(tmp_path: Path) -> None:
    encoder = Fmp4Encoder(width=SIZE, height=SIZE, fps=FPS, audio_format=AUDIO)
    part = PartFile()
    for _ in range(3):
        part.add(segment(encoder))
    source, target = tmp_path / "a.part.mp4", tmp_path / "a.mp4"
    source.write_bytes(part.data)
    result = remux_recording(source, target)
    assert (result.frames, result.audio) == (72, True)
    assert result.duration_s == pytest.approx(3.0)
    info = streams(probe(target))
    assert int(info["video"]["nb_read_frames"]) == 72
    assert float(info["video"]["duration"]) == pytest.approx(3.0, abs=1e-3)
    assert float(info["audio"]["duration"]) == pytest.approx(3.0, abs=0.1)
    assert_even(video_pts(target))
    data = target.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat"), "faststart: the index comes first"


def test_a_segment_cut_short_leaves_no_hole_and_one_taken_back_is_left_out(tmp_path: Path) -> None:
    encoder = Fmp4Encoder(width=SIZE, height=SIZE, fps=FPS, audio_format=AUDIO)
    part = PartFile()
    part.add(segment(encoder))
    part.add(segment(encoder, delivered=10))  # its 24 frames stay reserved on the timeline
    part.add(segment(encoder))  # taken back
    part.add(segment(encoder))
    source, target = tmp_path / "b.part.mp4", tmp_path / "b.mp4"
    source.write_bytes(part.data)
    result = remux_recording(source, target, dropped=[part.ranges[2]])
    assert result.frames == 24 + 10 + 24
    info = streams(probe(target))
    assert int(info["video"]["nb_read_frames"]) == 58
    assert float(info["video"]["duration"]) == pytest.approx(58 / FPS, abs=1e-3)
    assert float(info["audio"]["duration"]) <= 58 / FPS + 0.05
    assert_even(video_pts(target))


def test_video_only_recordings_have_no_sound_track(tmp_path: Path) -> None:
    encoder = Fmp4Encoder(width=SIZE, height=SIZE, fps=FPS)
    pixels = np.zeros((FPS, SIZE, SIZE, 3), np.uint8)
    chunks = list(encoder.encode_segment_iter(pixels))
    source, target = tmp_path / "c.part.mp4", tmp_path / "c.mp4"
    source.write_bytes(b"".join(chunks))
    result = remux_recording(source, target)
    assert (result.frames, result.audio) == (24, False)
    assert set(streams(probe(target))) == {"video"}


def test_nothing_to_keep_and_garbage_are_told_apart(tmp_path: Path) -> None:
    encoder = Fmp4Encoder(width=SIZE, height=SIZE, fps=FPS)
    chunks = list(encoder.encode_segment_iter(np.zeros((2, SIZE, SIZE, 3), np.uint8)))
    only_init = tmp_path / "init.part.mp4"
    only_init.write_bytes(chunks[0])
    with pytest.raises(EmptyRecording):
        remux_recording(only_init, tmp_path / "x.mp4")
    garbage = tmp_path / "garbage.part.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x10notanmp4atall" * 4)
    with pytest.raises(RemuxError):
        remux_recording(garbage, tmp_path / "y.mp4")
