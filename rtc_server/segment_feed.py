"""Frames of one segment on their way from the pool to the sink, across retries. Pure code."""

from __future__ import annotations

import numpy as np

from rtc_server.sink import SegmentOutput

__all__ = ["SegmentFeed"]


class SegmentFeed:
    """Puts a segment's chunks into its output; a retry (the segment made again, on another
    worker, from the same state) skips the frames the output already has."""

    def __init__(self, output: SegmentOutput) -> None:
        self._output = output
        self._put = 0  # frames the output has
        self._seen = 0  # frames this attempt has made

    @property
    def frames_put(self) -> int:
        return self._put

    def restart(self) -> None:
        """A new attempt starts from the segment's first frame."""
        self._seen = 0

    def put(self, frames: np.ndarray) -> None:
        """One chunk of the current attempt, in order."""
        first = self._seen
        self._seen += len(frames)
        fresh = frames[max(0, self._put - first) :]
        if len(fresh):
            self._output.put_frames(fresh)
            self._put += len(fresh)
