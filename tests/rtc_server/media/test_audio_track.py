"""The audio timeline and the paced audio track: sound placed at the video's ticks, silence elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np
import pytest
from av import AudioFrame

from gpu.audio import AudioFormat, frame_sample_offset, split_by_frames
from rtc_server.media.audio_track import AUDIO_FRAME_S, AudioTimeline, PacedAudioTrack
from rtc_server.media.track import PacedVideoTrack, PlayoutBuffer

MONO_48K = AudioFormat(sample_rate=48_000, channels=1)
FPS = 24
SLOT = 48_000 // FPS  # samples per video slot at 48 kHz, 24 fps


def level(value: float, samples: int, channels: int = 1) -> np.ndarray:
    return np.full((samples, channels), value, dtype=np.float32)


def test_read_gives_what_the_slots_hold_and_silence_where_nothing_was_written() -> None:
    timeline = AudioTimeline(MONO_48K, fps=FPS)
    timeline.write_slot(1, level(0.5, SLOT))
    timeline.write_slot(3, level(-0.25, SLOT))
    out = timeline.read(0, 4 * SLOT)[:, 0]
    assert not out[:SLOT].any()
    assert (out[SLOT : 2 * SLOT] == 0.5).all()
    assert not out[2 * SLOT : 3 * SLOT].any(), "a slot without a frame (a stall) is silence"
    assert (out[3 * SLOT :] == -0.25).all()


def test_reading_past_a_slot_drops_it_and_the_timeline_is_bounded_without_a_reader() -> None:
    timeline = AudioTimeline(MONO_48K, fps=FPS, max_held_s=0.5)
    timeline.write_slot(0, level(0.5, SLOT))
    timeline.read(0, SLOT)
    assert not timeline.read(0, SLOT).any(), "what was read is gone"
    for index in range(100):
        timeline.write_slot(index, level(0.5, SLOT))
    assert not timeline.read(0, 48_000 - 24_000).any(), "only the last half second is kept"
    assert timeline.read(100 * SLOT - 100, 100).all()


def test_frames_at_44_1_khz_fill_their_slots_seamlessly() -> None:
    """1837 or 1838 samples a frame, by segment and by stream slot: the sound has no gaps."""
    audio_format = AudioFormat(sample_rate=44_100, channels=2)
    timeline = AudioTimeline(audio_format, fps=FPS)
    segment = level(0.5, frame_sample_offset(5, FPS, 44_100), channels=2)
    for index, pcm in enumerate(split_by_frames(segment, 0, [1] * 5, FPS, 44_100)):
        timeline.write_slot(7 + index, pcm)  # the segment starts at stream slot 7
    start, stop = frame_sample_offset(7, FPS, 44_100), frame_sample_offset(12, FPS, 44_100)
    assert (timeline.read(start, stop - start) == 0.5).all()


def test_positions_follow_the_anchor_on_the_wall_clock() -> None:
    timeline = AudioTimeline(MONO_48K, fps=FPS)
    assert timeline.position_at(10.0) is None
    timeline.anchor(10.0)
    timeline.anchor(11.0)  # the first anchor holds
    assert timeline.position_at(10.5) == 24_000
    assert not timeline.decided(1)
    timeline.tick(2)
    assert timeline.decided(3 * SLOT) and not timeline.decided(3 * SLOT + 1)


async def _pump_video(track: PacedVideoTrack) -> None:
    while True:
        await track.recv()


async def _pump_audio(track: PacedAudioTrack, got: list[tuple[float, np.ndarray]]) -> None:
    while True:
        frame = await track.recv()
        assert isinstance(frame, AudioFrame) and frame.format.name == "s16" and frame.sample_rate == 48_000
        got.append((time.monotonic(), frame.to_ndarray()[0].astype(np.float32) / 32768.0))


async def test_a_stall_is_silence_and_what_follows_plays_on_time_without_a_burst() -> None:
    """Frames 1..6, a stall of about half a second, frames 7..12. Each frame's sound is a level
    (its number / 20): every level plays for one frame interval, starting 20-30 ms after its frame
    left, the stall is silent, and the audio never runs faster than the wall clock."""
    buffer = PlayoutBuffer()
    timeline = AudioTimeline(MONO_48K, fps=FPS)
    sent: dict[int, float] = {}  # frame number -> when the pacer released it

    def released(pixels: np.ndarray) -> None:
        sent.setdefault(int(pixels[0, 0, 0]), time.monotonic())

    video = PacedVideoTrack(buffer, fps=FPS, audio=timeline, on_release=released)
    audio = PacedAudioTrack(timeline)
    got: list[tuple[float, np.ndarray]] = []

    def put(numbers: range) -> None:
        tag = buffer.new_tag()
        frames = [np.full((16, 16, 3), n, dtype=np.uint8) for n in numbers]
        buffer.put(tag, frames, [level(n / 20, SLOT) for n in numbers])

    put(range(1, 7))
    tasks = [asyncio.create_task(_pump_video(video)), asyncio.create_task(_pump_audio(audio, got))]
    try:
        await asyncio.sleep(6 / FPS + 0.5)
        put(range(7, 13))
        await asyncio.sleep(6 / FPS + 0.2)
    finally:
        video.stop()
        audio.stop()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    samples = np.concatenate([pcm for _, pcm in got])
    # Sample i of the stream sent at: its frame's send time + its place in the frame.
    at = np.concatenate([t + np.arange(len(pcm)) / 48_000 for t, pcm in got])
    levels = np.rint(samples * 20).astype(int)
    assert sorted(sent) == list(range(1, 13))
    for number, frame_sent in sent.items():
        where = np.flatnonzero(levels == number)
        assert len(where) == pytest.approx(SLOT, abs=2), f"frame {number}'s sound is not one frame long"
        offset = at[where[0]] - frame_sent
        # 20 ms of framing + the read lag; more only when this loop is busy (the e2e tests measure sync).
        assert 0.010 < offset < 0.060, f"frame {number}: audio {offset * 1000:.1f} ms after its video"
    last_first, first_second = np.flatnonzero(levels == 6)[-1], np.flatnonzero(levels == 7)[0]
    gap = samples[last_first + 1 : first_second]
    assert len(gap) > 0.4 * 48_000 and not gap.any(), "the stall must be silent"
    # No burst: half a second of sound per half second of wall clock, give or take a late packet.
    times = np.array([t for t, _ in got])
    for i in range(len(times)):
        in_window = np.count_nonzero((times >= times[i]) & (times < times[i] + 0.5))
        assert in_window <= 0.5 / AUDIO_FRAME_S + 3
    assert video.stats.stalls >= 1 and audio.stats.frames_silent > 0
