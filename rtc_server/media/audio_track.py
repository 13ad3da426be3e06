"""The WebRTC audio path: a timeline of samples on the playout clock, and the paced track that reads it.

The video pacer writes each released frame's audio into the timeline at its tick: frame slot ``i``
of the video clock owns samples ``[frame_sample_offset(i), frame_sample_offset(i + 1))``, and sample
position ``p`` is due ``p / sample_rate`` seconds after the video clock's first tick. The audio track
reads 20 ms frames a small fixed lag behind the wall clock, so the tick that writes a position
normally runs before the one that reads it; a video tick that runs late (a busy loop, a slow encode)
is waited for, briefly, rather than its sound being lost. Positions nothing wrote (a stall, a pause, frames without sound)
are silence: the sound never bursts to catch up and never builds up delay, exactly like the video.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from gpu.audio import AudioFormat, frame_sample_offset
from rtc_server.media.pacing import Tick

__all__ = [
    "AUDIO_FRAME_S",
    "MAX_CATCH_UP_S",
    "READ_LAG_S",
    "AudioClock",
    "AudioStats",
    "AudioTimeline",
    "PacedAudioTrack",
]

AUDIO_FRAME_S = 0.020  # 20 ms per audio frame: Opus's packet time in WebRTC
READ_LAG_S = 0.003  # how far behind its tick the audio reads: room for the video tick that writes
# How long past its due time a read waits for a late video tick before it sends silence: the video
# pacer still releases a frame up to one interval (42 ms at 24 fps) late rather than skip it.
LATE_VIDEO_WAIT_S = 0.060
# A late audio tick sends what it missed at once up to this far behind (a few packets close together,
# which receivers' jitter buffers absorb); further behind, it skips to now, as the video does.
MAX_CATCH_UP_S = 0.100
_LATE_POLL_S = 0.001
MAX_HELD_S = 2.0  # audio kept for a reader that never comes (its m-line answered but never started)
_INT16_MAX = 32767
_LAYOUTS = {1: "mono", 2: "stereo"}


class AudioTimeline:
    """Frames' audio placed at their video slots; read back by sample position, silence where unwritten.

    Pure code (no asyncio): positions count samples from ``anchor`` (the video clock's first tick).
    """

    def __init__(self, audio_format: AudioFormat, *, fps: int, max_held_s: float = MAX_HELD_S) -> None:
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.audio_format = audio_format
        self._fps = fps
        self._max_held = round(max_held_s * audio_format.sample_rate)
        self._start: float | None = None
        self._chunks: deque[tuple[int, np.ndarray]] = deque()  # (first position, (n, channels) float32)
        self._held = 0  # samples in _chunks
        self._decided = 0  # positions before this belong to video ticks that have run (written or silent)

    @property
    def anchored(self) -> bool:
        return self._start is not None

    def anchor(self, start: float) -> None:
        """Position 0 is due at wall-clock ``start`` (s); the first anchor holds."""
        if self._start is None:
            self._start = start

    def position_at(self, wall: float) -> int | None:
        """The sample position due at wall-clock ``wall`` (s); None before the anchor is known."""
        if self._start is None:
            return None
        return round((wall - self._start) * self.audio_format.sample_rate)

    def decided(self, position: int) -> bool:
        """True once the video ticks owning every position before ``position`` have run."""
        return position <= self._decided

    def tick(self, index: int) -> None:
        """Video slot ``index`` has run, with or without a frame to release: its positions are final."""
        self._decided = max(self._decided, frame_sample_offset(index + 1, self._fps, self.audio_format.sample_rate))

    def write_slot(self, index: int, pcm: np.ndarray) -> None:
        """The audio of the frame released in video slot ``index``, fitted to the slot's length.

        A frame's own share of its segment's samples may differ by one from its slot's at rates that
        are no multiple of the fps; the last sample is repeated or dropped so the sound stays seamless.
        """
        rate = self.audio_format.sample_rate
        first = frame_sample_offset(index, self._fps, rate)
        length = frame_sample_offset(index + 1, self._fps, rate) - first
        fitted = _fit(pcm, length, self.audio_format.channels)
        if fitted is None:
            return
        self._chunks.append((first, fitted))
        self._held += length
        while self._held > self._max_held and self._chunks:
            self._held -= len(self._chunks.popleft()[1])

    def read(self, start: int, count: int) -> np.ndarray:
        """Samples ``[start, start + count)`` as ``(count, channels)`` float32; what ends before is dropped."""
        out = np.zeros((count, self.audio_format.channels), dtype=np.float32)
        stop = start + count
        for first, pcm in self._chunks:
            if first >= stop:
                break
            lo, hi = max(first, start), min(first + len(pcm), stop)
            if lo < hi:
                out[lo - start : hi - start] = pcm[lo - first : hi - first]
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= stop:
            self._held -= len(self._chunks.popleft()[1])
        return out


def _fit(pcm: np.ndarray, length: int, channels: int) -> np.ndarray | None:
    if pcm.ndim != 2 or pcm.shape[1] not in (1, channels) or len(pcm) == 0:
        return None  # not this stream's format: left silent rather than stopping the pacer
    if pcm.shape[1] != channels:
        pcm = np.repeat(pcm, channels, axis=1)
    if len(pcm) >= length:
        return pcm[:length]
    return np.concatenate([pcm, np.repeat(pcm[-1:], length - len(pcm), axis=0)])


class AudioClock:
    """Audio frame slots on the wall clock, anchored at the first call. Pure code.

    Unlike the video's PlayoutClock it tolerates a late caller for ``max_catch_up_s``: every frame
    is still sent, so the stream's sample count keeps pace with the wall clock.
    """

    def __init__(self, interval_s: float, *, max_catch_up_s: float = MAX_CATCH_UP_S) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.interval = interval_s
        self._max_late = max_catch_up_s
        self._start: float | None = None
        self._index = -1

    def next_tick(self, now: float) -> Tick:
        if self._start is None:
            self._start = now
        index = self._index + 1
        due = self._start + index * self.interval
        skipped = 0
        if now - due > self._max_late:
            caught_up = int((now - self._start) // self.interval)
            skipped, index = caught_up - index, caught_up
            due = self._start + index * self.interval
        self._index = index
        return Tick(index=index, due=due, pts=0, skipped=skipped)


@dataclass
class AudioStats:
    """Counters of one audio track."""

    frames_sent: int = 0
    frames_silent: int = 0  # nothing of them was written: before the first frame, stalls, pauses
    ticks_skipped: int = 0
    late_video_waits: int = 0  # polls while a video tick that owns the samples to send ran late


class PacedAudioTrack(MediaStreamTrack):
    """Emits 20 ms frames on the wall clock, each the timeline's samples ``READ_LAG_S`` + 20 ms behind it.

    The frame sent at ``t`` holds what was due in ``[t - lag - 20 ms, t - lag)``: audio trails its
    video by about 20 ms + lag (the video frame due at ``t`` leaves at ``t``), well under a frame
    interval at 24 fps. Receivers that sync by RTCP sender reports see the same offset.
    """

    kind = "audio"

    def __init__(
        self,
        timeline: AudioTimeline,
        *,
        lag_s: float = READ_LAG_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.timeline = timeline
        rate = timeline.audio_format.sample_rate
        self._samples = max(1, round(rate * AUDIO_FRAME_S))
        self._pacer = AudioClock(self._samples / rate)
        self._time_base = fractions.Fraction(1, rate)
        self._layout = _LAYOUTS[timeline.audio_format.channels]
        self._lag_s = lag_s
        self._clock = clock
        self._base: int | None = None  # timeline position of tick 0's first sample
        self.stats = AudioStats()

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        tick = self._pacer.next_tick(self._clock())
        self.stats.ticks_skipped += tick.skipped
        delay = tick.due - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.readyState != "live":
            raise MediaStreamError
        start = self._position(tick)
        if start is None:
            return self._frame(tick, None)
        await self._wait_for_video(start + self._samples, tick.due + LATE_VIDEO_WAIT_S)
        if self.readyState != "live":
            raise MediaStreamError
        return self._frame(tick, self.timeline.read(start, self._samples))

    def _position(self, tick: Tick) -> int | None:
        """The timeline position of this tick's first sample; None before the video clock starts."""
        if self._base is None:
            # Fixed once known: later frames follow sample by sample, never re-rounded.
            first = self.timeline.position_at(tick.due - self._lag_s - self._pacer.interval)
            if first is None:
                return None
            self._base = first - tick.index * self._samples
        return self._base + tick.index * self._samples

    async def _wait_for_video(self, end: int, deadline: float) -> None:
        while not self.timeline.decided(end) and self._clock() < deadline and self.readyState == "live":
            self.stats.late_video_waits += 1
            await asyncio.sleep(_LATE_POLL_S)

    def _frame(self, tick: Tick, pcm: np.ndarray | None) -> AudioFrame:
        channels = self.timeline.audio_format.channels
        self.stats.frames_sent += 1
        if pcm is None or not pcm.any():
            self.stats.frames_silent += 1
            pcm16 = np.zeros((1, self._samples * channels), dtype=np.int16)
        else:
            scaled = np.clip(np.rint(pcm * _INT16_MAX), -_INT16_MAX - 1, _INT16_MAX)
            pcm16 = scaled.astype(np.int16).reshape(1, -1)  # packed s16: channels interleaved
        frame = AudioFrame.from_ndarray(pcm16, format="s16", layout=self._layout)
        frame.sample_rate = self.timeline.audio_format.sample_rate
        frame.pts = tick.index * self._samples
        frame.time_base = self._time_base
        return frame
