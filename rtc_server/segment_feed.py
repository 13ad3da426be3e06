"""Frames of one segment on their way from the pool to the sink, across retries. Pure code."""

from __future__ import annotations

import numpy as np

from gpu.audio import AudioFormat, frame_sample_offset
from rtc_server.sink import SegmentOutput

__all__ = ["SegmentFeed"]


class SegmentFeed:
    """Puts a segment's chunks into its output; a retry (the segment made again, on another
    worker, from the same state) skips the frames the output already has, and their audio."""

    def __init__(self, output: SegmentOutput, *, fps: int = 24, audio_format: AudioFormat | None = None) -> None:
        self._output = output
        self._fps = fps
        self._rate = audio_format.sample_rate if audio_format is not None else 0
        self._put = 0  # frames the output has
        self._seen = 0  # frames this attempt has made

    @property
    def frames_put(self) -> int:
        return self._put

    def restart(self) -> None:
        """A new attempt starts from the segment's first frame."""
        self._seen = 0

    def put(self, frames: np.ndarray, audio: np.ndarray | None = None) -> None:
        """One chunk of the current attempt, in order, with the audio it owns."""
        first = self._seen
        self._seen += len(frames)
        skip = max(0, self._put - first)
        fresh = frames[skip:]
        if not len(fresh):
            return
        if audio is not None and skip:
            # The chunk's audio starts at its first frame's sample offset within the segment.
            cut = frame_sample_offset(first + skip, self._fps, self._rate) - frame_sample_offset(first, self._fps, self._rate)
            audio = audio[cut:]
        self._output.put_frames(fresh, audio)
        self._put += len(fresh)
