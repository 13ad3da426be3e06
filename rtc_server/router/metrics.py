"""Prometheus metrics of one router, in a registry the app owns (no process-global collectors)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from rtc_server.router.registry import ProbeResult, Replica, ReplicaRegistry

__all__ = ["RouterMetrics"]


class _LiveCollector(Collector):
    """Gauges read at scrape time: replica health and open bridges."""

    def __init__(self, registry: ReplicaRegistry, bridges: Callable[[], int]) -> None:
        self._registry = registry
        self._bridges = bridges

    def collect(self) -> Iterator[GaugeMetricFamily]:
        healthy = GaugeMetricFamily("rtcvs_router_replica_healthy", "1 while a replica is healthy", labels=["replica"])
        free = GaugeMetricFamily(
            "rtcvs_router_replica_free_slots", "Free session slots a replica last reported", labels=["replica"]
        )
        for replica in self._registry:
            healthy.add_metric([replica.url], 1.0 if replica.is_healthy else 0.0)
            if replica.free_slots is not None:
                free.add_metric([replica.url], float(replica.free_slots))
        yield healthy
        yield free
        yield GaugeMetricFamily(
            "rtcvs_router_bridged_streams", "WebSocket sessions bridged to a replica now", value=self._bridges()
        )


class RouterMetrics:
    """Counters the router updates, plus live gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.probes = Counter("rtcvs_router_probes", "Health probes by replica and result", ["replica", "result"], registry=r)
        self.sessions_routed = Counter(
            "rtcvs_router_sessions_routed", "Sessions placed on a replica, by transport", ["transport"], registry=r
        )
        self.failovers = Counter(
            "rtcvs_router_failovers",
            "Requests moved to another replica (unreachable: refused or dropped the connection; full: answered 503)",
            ["reason"],
            registry=r,
        )
        self.bridge_errors = Counter(
            "rtcvs_router_bridge_errors", "Bridged WebSocket sessions that ended abnormally, by side", ["side"], registry=r
        )
        self.refusals = Counter(
            "rtcvs_router_refusals", "New sessions refused by the router, by error code", ["code"], registry=r
        )
        self.session_map_errors = Counter(
            "rtcvs_router_session_map_errors", "Session map (Redis) operations that failed", ["operation"], registry=r
        )

    def watch(self, registry: ReplicaRegistry, bridges: Callable[[], int]) -> None:
        """Report replica health and the open bridges (``bridges()``) at every scrape."""
        self.registry.register(_LiveCollector(registry, bridges))

    def observe_probe(self, replica: Replica, result: ProbeResult) -> None:
        self.probes.labels(replica=replica.url, result="ok" if result.ok else "failed").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
