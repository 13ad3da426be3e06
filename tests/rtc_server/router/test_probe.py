"""Health probes: the httpx probe against real servers on loopback, and the loop with an injected probe."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from rtc_server.router.config import RouterConfig
from rtc_server.router.probe import http_probe, probe_once, run_health_check_loop
from rtc_server.router.registry import ProbeResult, Replica, ReplicaRegistry, ReplicaState
from tests.conftest import LOOPBACK, RunningServer
from tests.processes import free_port


def config_for(*urls: str, **overrides: object) -> RouterConfig:
    return RouterConfig.model_validate({"replicas": [{"url": url} for url in urls], **overrides})


@pytest.fixture
async def stalling_server() -> AsyncIterator[str]:
    """A server whose /health never answers."""

    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response()

    app = web.Application()
    app.router.add_get("/health", stall)
    app.router.add_get("/status", stall)
    server = TestServer(app, host=LOOPBACK, port=0)
    await server.start_server()
    yield str(server.make_url("/")).rstrip("/")
    await server.close()


async def test_a_real_replica_probes_healthy_with_its_free_slots(server: RunningServer) -> None:
    config = config_for(server.url)
    async with http_probe(config) as probe:
        result = await probe(server.url, timeout=2.0)
    assert result.ok and result.error is None and result.latency_ms is not None
    assert (result.free_slots, result.session_capacity) == (4, 4)


async def test_a_refused_connection_and_a_silent_server_fail_within_the_timeout(stalling_server: str) -> None:
    nobody = f"http://{LOOPBACK}:{free_port(LOOPBACK)}"
    config = config_for(nobody, stalling_server)
    async with http_probe(config) as probe:
        refused = await probe(nobody, timeout=1.0)
        started = time.monotonic()
        silent = await probe(stalling_server, timeout=0.3)
        elapsed = time.monotonic() - started
    assert not refused.ok and refused.error
    assert not silent.ok and "0.3" in (silent.error or "") and elapsed < 1.0


async def test_the_loop_probes_every_replica_concurrently_until_stopped() -> None:
    urls = ["http://a:1", "http://b:1", "http://c:1"]
    config = config_for(*urls, health_check_interval_seconds=0.05, health_check_timeout_seconds=0.5)
    registry = ReplicaRegistry(config.replicas)
    calls: list[str] = []

    async def probe(url: str, *, timeout: float) -> ProbeResult:
        calls.append(url)
        await asyncio.sleep(0.2)  # three in a row would take 0.6 s: together they take 0.2
        if url == "http://c:1":
            raise RuntimeError("a probe bug")  # counted as a failure, never kills the loop
        return ProbeResult(ok=url == "http://a:1", error=None if url == "http://a:1" else "down")

    seen: list[tuple[str, bool]] = []

    def observe(replica: Replica, result: ProbeResult) -> None:
        seen.append((replica.url, result.ok))

    stop = asyncio.Event()
    started = time.monotonic()
    await probe_once(registry, probe, timeout=0.5, observe=observe)
    assert time.monotonic() - started < 0.4
    assert sorted(seen) == [("http://a:1", True), ("http://b:1", False), ("http://c:1", False)]
    loop = asyncio.create_task(run_health_check_loop(registry, config, stop_event=stop, http_get=probe))
    await asyncio.sleep(0.8)
    stop.set()
    await asyncio.wait_for(loop, 1.0)
    states = {replica.url: replica.state for replica in registry}
    assert states == {
        "http://a:1": ReplicaState.HEALTHY,
        "http://b:1": ReplicaState.UNHEALTHY,
        "http://c:1": ReplicaState.UNHEALTHY,
    }
    assert calls.count("http://a:1") >= 3
