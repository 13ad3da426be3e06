"""Prometheus metrics of one server, in a registry the app owns (no process-global collectors)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "LiveCounts", "ServiceMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SEGMENT_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ENCODE_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_FIRST_FRAME_SECONDS = (0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class LiveCounts:
    """Numbers read at scrape time."""

    sessions_active: int
    sessions_queued: int
    workers_total: int
    workers_ready: int
    workers_busy: int


class _LiveCollector(Collector):
    def __init__(self, read: Callable[[], LiveCounts]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self._read()
        yield GaugeMetricFamily("rtcvs_sessions_active", "Sessions holding a streaming slot", value=counts.sessions_active)
        yield GaugeMetricFamily("rtcvs_sessions_queued", "Sessions waiting for a slot", value=counts.sessions_queued)
        yield GaugeMetricFamily("rtcvs_pool_workers", "GPU workers in the pool", value=counts.workers_total)
        yield GaugeMetricFamily("rtcvs_pool_workers_ready", "GPU workers ready to generate", value=counts.workers_ready)
        yield GaugeMetricFamily("rtcvs_pool_workers_busy", "GPU workers generating a segment now", value=counts.workers_busy)


class ServiceMetrics:
    """Counters and histograms the sessions update, plus gauges read when scraped."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.admission_rejections = Counter("rtcvs_admission_rejections", "Sessions refused (server full or warming)", ["reason"], registry=r)
        self.segments = Counter("rtcvs_segments_generated", "Segments generated", ["transport"], registry=r)
        self.generation_seconds = Histogram(
            "rtcvs_segment_generation_seconds", "Time to generate one segment", buckets=_SEGMENT_SECONDS, registry=r
        )
        self.frames_sent = Counter("rtcvs_frames_sent", "Frames handed to a transport for the client", ["transport"], registry=r)
        self.stalls = Counter("rtcvs_playout_stalls", "Times a WebRTC track ran dry and held its last frame", registry=r)
        self.encode_seconds = Histogram(
            "rtcvs_fmp4_encode_seconds", "Time to encode one segment to fMP4", buckets=_ENCODE_SECONDS, registry=r
        )
        self.first_frame_seconds = Histogram(
            "rtcvs_time_to_first_frame_seconds",
            "Session start to its first frame leaving the server",
            ["transport"],
            buckets=_FIRST_FRAME_SECONDS,
            registry=r,
        )
        self.control_messages = Counter("rtcvs_control_messages", "Client control messages by type", ["type"], registry=r)
        self.errors = Counter("rtcvs_errors", "error messages sent to clients, by code", ["code"], registry=r)

    def watch(self, read: Callable[[], LiveCounts]) -> None:
        """Report the live gauges from ``read`` at every scrape."""
        self.registry.register(_LiveCollector(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)
