"""The WebRTC video path: a bounded playout buffer and the paced track that drains it.

Each buffered frame carries its own audio; the track hands it to the audio timeline
(rtc_server/media/audio_track.py) at the tick that releases the frame, so sound and picture share
one playout clock through stalls and pauses.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame
from av.video.reformatter import VideoReformatter

from rtc_server.media.audio_track import AudioTimeline
from rtc_server.media.pacing import RTP_VIDEO_CLOCK_HZ, PlayoutClock, Tick

__all__ = ["PacedVideoTrack", "PlayoutBuffer", "PlayoutStats", "QueuedFrame"]

_TIME_BASE = fractions.Fraction(1, RTP_VIDEO_CLOCK_HZ)
_CONVERT_THREADS = 1  # per-frame conversion is ~1 ms at 512x512; worker threads would cost more than they save

ReleaseCallback = Callable[[np.ndarray], None]
"""Called as ``on_release(frame)`` for each fresh frame handed to the encoder."""


@dataclass(frozen=True)
class QueuedFrame:
    """A frame waiting in the playout buffer: its pixels and the audio it owns (None: no sound)."""

    tag: int
    pixels: np.ndarray
    audio: np.ndarray | None = None


class PlayoutBuffer:
    """Frames waiting to be released, with waits for room (look-ahead) and for draining.

    Each frame carries the tag of the segment it belongs to (tags increase with every segment),
    so a segment none of whose frames has been released can be taken back whole.
    """

    def __init__(self) -> None:
        self._frames: deque[QueuedFrame] = deque()
        self._changed = asyncio.Event()
        self._closed = False
        self._next_tag = 0
        self._released_tag = -1  # tag of the last frame released

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def closed(self) -> bool:
        return self._closed

    def new_tag(self) -> int:
        """A tag for the next segment; later segments get larger tags."""
        tag, self._next_tag = self._next_tag, self._next_tag + 1
        return tag

    def put(self, tag: int, frames: Iterable[np.ndarray], audio: Sequence[np.ndarray] | None = None) -> None:
        """Queue ``frames`` of segment ``tag``, with ``audio[i]`` the sound of ``frames[i]`` (if any)."""
        if self._closed:
            return
        if audio is None:
            self._frames.extend(QueuedFrame(tag, frame) for frame in frames)
        else:
            self._frames.extend(QueuedFrame(tag, frame, pcm) for frame, pcm in zip(frames, audio, strict=True))
        self._changed.set()

    def pop(self) -> QueuedFrame | None:
        if not self._frames:
            return None
        queued = self._frames.popleft()
        self._released_tag = queued.tag
        self._changed.set()
        return queued

    def released(self, tag: int) -> bool:
        """True once a frame of segment ``tag`` (or of a later one) has been released."""
        return self._released_tag >= tag

    def drop_from(self, tag: int) -> int:
        """Drop the frames of segment ``tag`` and every later one; returns how many were dropped."""
        dropped = 0
        while self._frames and self._frames[-1].tag >= tag:
            self._frames.pop()
            dropped += 1
        if dropped:
            self._changed.set()
        return dropped

    def close(self) -> None:
        """Drop what is left and wake every waiter."""
        self._closed = True
        self._frames.clear()
        self._changed.set()

    async def _wait_until(self, predicate: Callable[[], bool]) -> None:
        while not (predicate() or self._closed):
            self._changed.clear()
            await self._changed.wait()

    async def wait_for_room(self, max_frames: int) -> None:
        """Return once at most ``max_frames`` frames are waiting."""
        await self._wait_until(lambda: len(self._frames) <= max_frames)

    async def wait_empty(self) -> None:
        await self._wait_until(lambda: not self._frames)

    async def wait_nonempty(self) -> None:
        await self._wait_until(lambda: bool(self._frames))


@dataclass
class PlayoutStats:
    """Counters of one track."""

    frames_released: int = 0
    frames_held: int = 0
    stalls: int = 0
    ticks_skipped: int = 0


class PacedVideoTrack(MediaStreamTrack):
    """Releases buffered frames at the stream's fps; when the buffer runs dry it repeats the last frame.

    With ``audio``, each released frame's sound goes into that timeline at the frame's tick (a held
    frame writes nothing: the audio there is silence).
    """

    kind = "video"

    def __init__(
        self,
        buffer: PlayoutBuffer,
        *,
        fps: int,
        on_release: ReleaseCallback | None = None,
        on_stall: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        audio: AudioTimeline | None = None,
    ) -> None:
        super().__init__()
        self._buffer = buffer
        self._pacer = PlayoutClock(fps)
        self._audio = audio
        self._on_release = on_release
        self._on_stall = on_stall
        self._clock = clock
        self._last: VideoFrame | None = None
        self._converter = VideoReformatter()
        self._stalled = False
        self.stats = PlayoutStats()

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._last is None:
            await self._buffer.wait_nonempty()
            if self.readyState != "live" or self._buffer.closed:
                raise MediaStreamError
        tick = self._pacer.next_tick(self._clock())
        self.stats.ticks_skipped += tick.skipped
        delay = tick.due - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._take_frame(tick)
        frame.pts = tick.pts
        frame.time_base = _TIME_BASE
        return frame

    async def _take_frame(self, tick: Tick) -> VideoFrame:
        queued = self._buffer.pop()
        if self._audio is not None:
            self._audio.anchor(tick.due - tick.index * self._pacer.interval)  # tick 0: exactly its due time
            if queued is not None and queued.audio is not None:
                self._audio.write_slot(tick.index, queued.audio)
            self._audio.tick(tick.index)
        if queued is None:
            assert self._last is not None
            self.stats.frames_held += 1
            if not self._stalled:
                self.stats.stalls += 1
                self._stalled = True
                if self._on_stall is not None:
                    self._on_stall()
            return self._last
        self._stalled = False
        self.stats.frames_released += 1
        pixels = queued.pixels
        if self._on_release is not None:
            self._on_release(pixels)
        self._last = await asyncio.get_running_loop().run_in_executor(None, self._to_yuv, pixels)
        return self._last

    def _to_yuv(self, pixels: np.ndarray) -> VideoFrame:
        # The encoder wants yuv420p. Converted here, with one single-threaded converter per track:
        # given RGB, aiortc's encoder converts with a new converter per frame, each starting a
        # thread per core (~2 ms a frame on 2 cores) and keeping them while the frame lives.
        rgb = VideoFrame.from_numpy_buffer(np.ascontiguousarray(pixels), format="rgb24")  # zero-copy
        return self._converter.reformat(rgb, format="yuv420p", threads=_CONVERT_THREADS)

    def stop(self) -> None:
        super().stop()
        self._buffer.close()
        self._last = None  # the frame holds its pixels; nothing is sent after stop
