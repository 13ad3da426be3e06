"""What one session delivered: frame counts, time to first frame, recent frame release times."""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from gpu.frame_marker import read_marker
from rtc_server.metrics import ServiceMetrics

__all__ = ["DeliveryLog"]


class DeliveryLog:
    """Counts frames leaving the server for one session and feeds the metrics.

    With ``keep_frames`` > 0 it also keeps the release wall time (ms) of the last
    frames that carry a frame marker, so a load tool on the same clock can measure
    per-frame latency.
    """

    def __init__(self, *, transport: str, metrics: ServiceMetrics, keep_frames: int = 0) -> None:
        self._transport = transport
        self._metrics = metrics
        self._started = time.monotonic()
        self._recent: deque[tuple[int, float]] = deque(maxlen=max(1, keep_frames))
        self._keep = keep_frames > 0
        self.frames = 0
        self.first_frame_s: float | None = None

    def frame_released(self, pixels: np.ndarray) -> None:
        """One frame handed to the encoder (WebRTC)."""
        self._count(1)
        if self._keep:
            marker = read_marker(pixels)
            if marker is not None:
                self._recent.append((marker.frame_number, time.time() * 1000.0))

    def segment_sent(self, frames: int) -> None:
        """A segment's frames handed to the socket (WebSocket)."""
        self._count(frames)

    def stalled(self) -> None:
        self._metrics.stalls.inc()

    def recent(self) -> list[tuple[int, float]]:
        """``(frame_number, release unix time in ms)`` of the last frames released."""
        return list(self._recent)

    def _count(self, frames: int) -> None:
        if self.first_frame_s is None:
            self.first_frame_s = time.monotonic() - self._started
            self._metrics.first_frame_seconds.labels(transport=self._transport).observe(self.first_frame_s)
        self.frames += frames
        self._metrics.frames_sent.labels(transport=self._transport).inc(frames)
