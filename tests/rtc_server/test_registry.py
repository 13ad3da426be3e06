"""The registry: capacity computed once from the config, rejection when full or warming, idle sessions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gpu.pool import InProcessGpuPool
from gpu.synthetic import SyntheticGenerator
from rtc_server.auth import Principal
from rtc_server.client_limits import TooManyRequests
from rtc_server.config import ServiceConfig
from rtc_server.metrics import ServiceMetrics
from rtc_server.prompt_pipeline import PromptPipeline
from rtc_server.protocol import ServerMessage
from rtc_server.registry import Capacity, SessionRegistry
from rtc_server.session import SessionRejected, SessionState
from rtc_server.session_log import SessionLogger
from rtc_server.session_services import SessionServices
from rtc_server.sink import CloseReason, SegmentOutput
from rtc_server.store import InMemoryBlobStore, InMemorySessionStore
from tests.conftest import make_config


class IdleSink:
    """A sink for sessions that never start: it only records what it is sent."""

    def __init__(self) -> None:
        self.events: list[ServerMessage] = []
        self.closed_with: CloseReason | None = None

    def send_event(self, message: ServerMessage) -> None:
        self.events.append(message)

    async def wait_connected(self) -> None:
        raise AssertionError("no session starts here")

    async def wait_for_room(self) -> None:
        raise AssertionError("no session starts here")

    def open_segment(self, segment_idx: int, *, num_frames: int) -> SegmentOutput:
        raise AssertionError("no session starts here")

    async def drain(self) -> None:
        return None

    async def close(self, reason: CloseReason) -> None:
        self.closed_with = reason


def test_capacity_is_the_configured_limit_within_what_the_workers_hold() -> None:
    inprocess = make_config(streaming={"max_sessions": 6, "max_queue": 3})
    assert Capacity.for_config(inprocess) == Capacity(slots=6, queue=3)
    assert Capacity.for_config(inprocess).total == 9
    workers = make_config(
        pool={"backend": "subprocess", "num_workers": 2, "sessions_per_worker": 2},
        streaming={"max_sessions": 6, "max_queue": 1},
    )
    assert Capacity.for_config(workers) == Capacity(slots=4, queue=1)


async def _registry(config: ServiceConfig, pool: InProcessGpuPool, clock: list[float]) -> SessionRegistry:
    services = SessionServices(
        pool=pool,
        store=InMemorySessionStore(InMemoryBlobStore()),
        log=SessionLogger(None),
        metrics=ServiceMetrics(),
        prompts=PromptPipeline(enhancer=None, safety=None, deadline_s=1.0),
        streaming=config.streaming,
        defaults=config.default_request,
        limits=config.limits,
        image_dir=Path("/nonexistent"),
    )
    return SessionRegistry(config=config, services=services, clock=lambda: clock[0])


@pytest.fixture
async def pool() -> AsyncIterator[InProcessGpuPool]:
    pool = InProcessGpuPool(SyntheticGenerator, warmup=False)
    await pool.start()
    yield pool
    await pool.shutdown()


def started(controller: Any) -> Any:
    """What admission does to a session that connected with a valid init: it now counts against capacity."""
    controller.session.transition(SessionState.GPU_BINDING)
    return controller


async def test_started_sessions_beyond_slots_and_queue_are_rejected_until_one_leaves(pool: InProcessGpuPool) -> None:
    registry = await _registry(make_config(streaming={"max_sessions": 1, "max_queue": 1}), pool, [0.0])
    first = started(registry.open(transport="webrtc", sink=IdleSink(), client="addr:127.0.0.1"))
    second_sink = IdleSink()
    started(registry.open(transport="ws", sink=second_sink, client="addr:127.0.0.2"))
    with pytest.raises(SessionRejected) as info:
        registry.open(transport="ws", sink=IdleSink(), client="addr:127.0.0.3")
    assert info.value.code == "session_rejected" and "full" in str(info.value)
    metrics = registry.services.metrics.registry
    assert metrics.get_sample_value("rtcvs_admission_rejections_total", {"reason": "full"}) == 1
    await first.client_left()
    assert len(registry) == 1 and registry.get(first.session.id) is None
    registry.open(transport="ws", sink=IdleSink(), client="addr:127.0.0.3")
    await registry.close()
    assert len(registry) == 0
    assert second_sink.closed_with is CloseReason.SHUTDOWN
    assert [getattr(e, "code", None) for e in second_sink.events] == ["gpu_unavailable"]


async def test_sessions_that_never_start_count_against_their_client_not_the_server(pool: InProcessGpuPool) -> None:
    config = make_config(streaming={"max_sessions": 2, "max_queue": 0}, limits={"sessions_per_client": 3})
    registry = await _registry(config, pool, [0.0])
    squatter = [registry.open(transport="webrtc", sink=IdleSink(), client="addr:10.0.0.9") for _ in range(3)]
    with pytest.raises(TooManyRequests) as info:
        registry.open(transport="webrtc", sink=IdleSink(), client="addr:10.0.0.9")
    assert info.value.retry_after_s > 0
    # Three offers that never connected hold no slot: another client still gets one at once.
    started(registry.open(transport="webrtc", sink=IdleSink(), client="addr:10.0.0.1"))
    await squatter[0].client_left()
    registry.open(transport="webrtc", sink=IdleSink(), client="addr:10.0.0.9")
    await registry.close()


async def test_a_tokens_own_session_cap_applies_below_the_servers(pool: InProcessGpuPool) -> None:
    registry = await _registry(make_config(limits={"sessions_per_client": 4}), pool, [0.0])
    capped = Principal(subject="jwt:alice", max_sessions=1)
    registry.open(transport="ws", sink=IdleSink(), client=capped.subject, principal=capped)
    with pytest.raises(TooManyRequests):
        registry.open(transport="ws", sink=IdleSink(), client=capped.subject, principal=capped)
    await registry.close()


async def test_a_warming_pool_rejects_with_gpu_unavailable() -> None:
    cold = InProcessGpuPool(SyntheticGenerator, warmup=False)  # never started
    registry = await _registry(make_config(), cold, [0.0])
    with pytest.raises(SessionRejected) as info:
        registry.open(transport="webrtc", sink=IdleSink(), client="addr:127.0.0.1")
    assert info.value.code == "gpu_unavailable"


async def test_slots_are_granted_in_order_and_the_live_counts_follow(pool: InProcessGpuPool) -> None:
    registry = await _registry(make_config(streaming={"max_sessions": 1, "max_queue": 2}), pool, [0.0])
    assert registry.try_enter("a") and not registry.try_enter("b")
    positions: list[tuple[int, int]] = []
    waiter = asyncio.create_task(registry.wait("b", lambda position, depth: positions.append((position, depth))))
    await asyncio.sleep(0)
    counts = registry.live_counts()
    assert (counts.sessions_active, counts.sessions_queued, counts.workers_ready) == (1, 1, 1)
    registry.leave("a")
    await asyncio.wait_for(waiter, 1.0)
    assert positions == [(1, 1)]
    assert registry.active == 1 and registry.depth == 0


async def test_idle_sessions_are_reported_after_the_timeout_but_not_ended_ones(pool: InProcessGpuPool) -> None:
    clock = [100.0]
    registry = await _registry(make_config(streaming={"session_timeout_seconds": 10}), pool, clock)
    idle = registry.open(transport="webrtc", sink=IdleSink(), client="addr:127.0.0.1")
    busy = registry.open(transport="webrtc", sink=IdleSink(), client="addr:127.0.0.1")
    ended = registry.open(transport="webrtc", sink=IdleSink(), client="addr:127.0.0.1")
    ended.session.transition(SessionState.ERROR)
    clock[0] += 8
    busy.session.touch()
    clock[0] += 3
    assert registry.timed_out() == [idle]
    await registry.close()


async def test_a_server_above_its_memory_bound_refuses_new_sessions(pool: InProcessGpuPool) -> None:
    config = make_config(limits={"max_rss_bytes": 1024 * 1024})  # far below any Python process
    registry = await _registry(config, pool, [0.0])
    with pytest.raises(SessionRejected) as info:
        registry.open(transport="webrtc", sink=IdleSink(), client="addr:127.0.0.1")
    assert info.value.code == "session_rejected" and "memory" in str(info.value)
    metrics = registry.services.metrics.registry
    assert metrics.get_sample_value("rtcvs_admission_rejections_total", {"reason": "memory"}) == 1
    roomy = await _registry(make_config(limits={"max_rss_bytes": 1 << 40}), pool, [0.0])
    roomy.open(transport="webrtc", sink=IdleSink(), client="addr:127.0.0.1")
    await roomy.close()
