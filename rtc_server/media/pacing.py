"""Playout timing: when each frame is released and which timestamp it carries. Pure code.

Timestamps follow the wall clock. A consumer that comes late skips the ticks
it missed instead of bursting to catch up, so a stall never turns into delay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RTP_VIDEO_CLOCK_HZ", "PlayoutClock", "Tick"]

RTP_VIDEO_CLOCK_HZ = 90_000  # RTP video timestamps tick at 90 kHz


@dataclass(frozen=True)
class Tick:
    """One release slot: its index, its wall-clock due time (s) and its 90 kHz pts."""

    index: int
    due: float
    pts: int
    skipped: int


class PlayoutClock:
    """Maps wall-clock time to frame slots at a fixed rate, anchored at the first release."""

    def __init__(self, fps: float) -> None:
        if fps <= 0:
            raise ValueError("fps must be positive")
        self._interval = 1.0 / fps
        self._fps = fps
        self._start: float | None = None
        self._index = -1

    @property
    def interval(self) -> float:
        """Seconds between frames."""
        return self._interval

    @property
    def started(self) -> bool:
        return self._start is not None

    def next_tick(self, now: float) -> Tick:
        """The next slot to release a frame in; ``skipped`` counts slots missed by a late caller."""
        if self._start is None:
            self._start = now
            self._index = 0
            return Tick(index=0, due=now, pts=0, skipped=0)
        index = self._index + 1
        due = self._start + index * self._interval
        skipped = 0
        if now - due >= self._interval:
            # More than a whole slot late: jump to the slot now in progress.
            caught_up = math.floor((now - self._start) / self._interval)
            skipped = caught_up - index
            index = caught_up
            due = self._start + index * self._interval
        self._index = index
        return Tick(index=index, due=due, pts=round(index * RTP_VIDEO_CLOCK_HZ / self._fps), skipped=skipped)
