"""Frames handed from the event loop to an encoding thread, chunk by chunk, as a segment is made."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import numpy as np

__all__ = ["FrameChunk", "FrameFeed"]

FrameChunk = tuple[np.ndarray, np.ndarray | None]  # frames and the audio they own (None: no sound)


class FrameFeed:
    """Chunks put on the loop, iterated in the encoder's thread: iterating blocks for the next chunk
    and stops at ``end`` (the segment is finished, abandoned or cut short; ending twice is harmless)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[FrameChunk | None] = queue.SimpleQueue()

    def put(self, frames: np.ndarray, audio: np.ndarray | None = None) -> None:
        self._queue.put((frames, audio))

    def end(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[FrameChunk]:
        while (chunk := self._queue.get()) is not None:
            yield chunk
