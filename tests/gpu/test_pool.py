"""The in-process pool: start-up and warm-up, session binding, off-loop runs, shutdown."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gpu.generator import Generator, GeneratorError, SegmentRequest, SegmentResult, StepCallback
from gpu.pool import (
    GpuPool,
    InProcessGpuPool,
    PoolAssignment,
    PoolUnavailableError,
    SessionNotBoundError,
)
from gpu.synthetic import SyntheticGenerator

STATUS_KEYS = {
    "total_gpus",
    "available_gpus",
    "queue_size",
    "warmup_enabled",
    "warmup_successful_gpus",
    "warmup_failed_gpus",
    "gpu_status",
}
WORKER_KEYS = {"ready", "alive", "sessions", "segments_done", "last_error", "warmup_ms"}


def _request(**changes: Any) -> SegmentRequest:
    fields: dict[str, Any] = {"prompt": "a red fox", "width": 64, "height": 64, "num_frames": 4}
    fields.update(changes)
    return SegmentRequest(**fields)


class _RecordingGenerator:
    """Wraps the synthetic generator, recording closes and optionally failing with a given error."""

    def __init__(self, *, error: Exception | None = None, step_delay_s: float = 0.0) -> None:
        self._inner = SyntheticGenerator(step_delay_s=step_delay_s)
        self.error = error
        self.closed = False

    @property
    def name(self) -> str:
        return "recording"

    def generate(self, request: SegmentRequest, on_step: StepCallback | None = None) -> SegmentResult:
        if self.error is not None:
            raise self.error
        return self._inner.generate(request, on_step)

    def close(self) -> None:
        self.closed = True


def _only_worker(status: dict[str, Any]) -> dict[str, Any]:
    (worker,) = status["gpu_status"].values()
    assert isinstance(worker, dict)
    return worker


@pytest.fixture
async def pool() -> AsyncIterator[InProcessGpuPool]:
    pool = InProcessGpuPool(SyntheticGenerator)
    await pool.start()
    yield pool
    await pool.shutdown()


async def _started(factory: Callable[[], Generator], **options: Any) -> InProcessGpuPool:
    pool = InProcessGpuPool(factory, **options)
    await pool.start()
    return pool


async def test_started_pool_is_ready_and_reports_its_warm_up(pool: InProcessGpuPool) -> None:
    assert isinstance(pool, GpuPool)
    assert pool.ready
    status = pool.status()
    assert set(status) == STATUS_KEYS
    assert status["total_gpus"] == 1
    assert status["available_gpus"] == 1
    assert status["queue_size"] == 0
    assert status["warmup_enabled"] is True
    assert (status["warmup_successful_gpus"], status["warmup_failed_gpus"]) == (1, 0)
    assert list(status["gpu_status"]) == ["inproc-0"]
    worker = _only_worker(status)
    assert set(worker) >= WORKER_KEYS
    assert worker["ready"] and worker["alive"]
    assert worker["last_error"] is None
    assert isinstance(worker["warmup_ms"], float) and worker["warmup_ms"] > 0


async def test_pool_without_warm_up_is_ready_with_no_warm_up_time() -> None:
    pool = await _started(SyntheticGenerator, warmup=False, gpu_id=3)
    try:
        status = pool.status()
        assert pool.ready
        assert status["warmup_enabled"] is False
        assert (status["warmup_successful_gpus"], status["warmup_failed_gpus"]) == (0, 0)
        assert _only_worker(status)["warmup_ms"] is None
        assert await pool.acquire("s1") == PoolAssignment(gpu_id=3, worker_id="inproc-3")
    finally:
        await pool.shutdown()


async def test_acquire_run_release_generates_segments_for_bound_sessions(pool: InProcessGpuPool) -> None:
    assignment = await pool.acquire("s1")
    assert assignment == PoolAssignment(gpu_id=0, worker_id="inproc-0")
    assert await pool.acquire("s1") == assignment
    await pool.acquire("s2")
    assert _only_worker(pool.status())["sessions"] == 2

    first = await pool.run("s1", _request())
    second = await pool.run("s1", _request(continuation=first.continuation))
    assert first.frames.shape == (4, 64, 64, 3)
    assert second.continuation.payload["frame_number"] == 8
    assert _only_worker(pool.status())["segments_done"] == 2

    await pool.release("s1")
    await pool.release("s1")
    assert _only_worker(pool.status())["sessions"] == 1
    assert pool.status()["available_gpus"] == 1
    with pytest.raises(SessionNotBoundError, match="s1"):
        await pool.run("s1", _request())


async def test_on_step_runs_on_the_event_loop_thread_before_run_returns(pool: InProcessGpuPool) -> None:
    await pool.acquire("s1")
    loop_thread = threading.get_ident()
    calls: list[tuple[int, int, int]] = []
    await pool.run(
        "s1",
        _request(num_inference_steps=3),
        lambda step, total: calls.append((step, total, threading.get_ident())),
    )
    assert calls == [(1, 3, loop_thread), (2, 3, loop_thread), (3, 3, loop_thread)]


async def test_run_keeps_the_event_loop_free() -> None:
    pool = await _started(lambda: SyntheticGenerator(step_delay_s=0.03), warmup=False)
    try:
        await pool.acquire("s1")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        ticker = asyncio.create_task(tick())
        await pool.run("s1", _request(num_inference_steps=4))
        ticker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ticker
        assert ticks >= 5
    finally:
        await pool.shutdown()


async def test_broken_on_step_callback_is_logged_and_the_segment_completes(
    pool: InProcessGpuPool, caplog: pytest.LogCaptureFixture
) -> None:
    await pool.acquire("s1")

    def broken(step: int, total: int) -> None:
        raise ValueError("progress sink broke")

    with caplog.at_level(logging.ERROR, logger="gpu.pool"):
        result = await pool.run("s1", _request(num_inference_steps=2), broken)
    assert result.frames.shape[0] == 4
    assert "on_step callback failed" in caplog.text


async def test_generator_errors_propagate_and_others_are_wrapped() -> None:
    generator = _RecordingGenerator()
    pool = await _started(lambda: generator, warmup=False)
    try:
        await pool.acquire("s1")
        generator.error = GeneratorError("out of memory")
        with pytest.raises(GeneratorError, match="out of memory"):
            await pool.run("s1", _request())
        generator.error = ZeroDivisionError("boom")
        with pytest.raises(GeneratorError, match="boom") as caught:
            await pool.run("s1", _request())
        assert isinstance(caught.value.__cause__, ZeroDivisionError)
        assert "boom" in (_only_worker(pool.status())["last_error"] or "")
        assert pool.ready
    finally:
        await pool.shutdown()


async def test_build_failure_leaves_the_pool_not_ready_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="gpu.pool"):
        pool = await _started(lambda: SyntheticGenerator(fail_on_start=True))
    try:
        assert not pool.ready
        status = pool.status()
        assert set(status) == STATUS_KEYS
        assert status["available_gpus"] == 0
        assert (status["warmup_successful_gpus"], status["warmup_failed_gpus"]) == (0, 1)
        worker = _only_worker(status)
        assert not worker["ready"] and not worker["alive"]
        assert "fail_on_start" in (worker["last_error"] or "")
        assert "build failed" in caplog.text
        with pytest.raises(PoolUnavailableError):
            await pool.acquire("s1")
    finally:
        await pool.shutdown()


async def test_warm_up_failure_leaves_the_pool_not_ready() -> None:
    too_small = _request(width=8, height=8)
    pool = await _started(SyntheticGenerator, warmup_request=too_small)
    try:
        assert not pool.ready
        assert pool.status()["warmup_failed_gpus"] == 1
        assert "warm-up failed" in (_only_worker(pool.status())["last_error"] or "")
    finally:
        await pool.shutdown()


async def test_acquire_before_start_raises_unavailable() -> None:
    pool = InProcessGpuPool(SyntheticGenerator)
    with pytest.raises(PoolUnavailableError, match="new"):
        await pool.acquire("s1")
    await pool.shutdown()


async def test_shutdown_is_idempotent_closes_the_generator_and_refuses_new_work() -> None:
    generator = _RecordingGenerator()
    pool = await _started(lambda: generator)
    await pool.acquire("s1")
    await asyncio.gather(pool.shutdown(), pool.shutdown())
    await pool.shutdown()
    assert generator.closed
    assert not pool.ready
    assert pool.status()["available_gpus"] == 0
    with pytest.raises(PoolUnavailableError):
        await pool.run("s1", _request())
    with pytest.raises(PoolUnavailableError):
        await pool.acquire("s2")
    with pytest.raises(PoolUnavailableError):
        await pool.start()


async def test_shutdown_finishes_the_running_segment_and_refuses_the_queued_one() -> None:
    pool = await _started(lambda: SyntheticGenerator(step_delay_s=0.05), warmup=False, max_parallel=1)
    await pool.acquire("s1")
    await pool.acquire("s2")
    running = asyncio.create_task(pool.run("s1", _request(num_inference_steps=2)))
    queued = asyncio.create_task(pool.run("s2", _request(num_inference_steps=2)))
    await asyncio.sleep(0.02)
    assert pool.status()["queue_size"] == 1
    await pool.shutdown()
    assert (await running).frames.shape == (4, 64, 64, 3)
    with pytest.raises(PoolUnavailableError):
        await queued


async def test_max_parallel_runs_segments_concurrently() -> None:
    pool = await _started(lambda: SyntheticGenerator(step_delay_s=0.1), warmup=False, max_parallel=2)
    try:
        await pool.acquire("s1")
        await pool.acquire("s2")
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(
            pool.run("s1", _request(num_inference_steps=2)), pool.run("s2", _request(num_inference_steps=2))
        )
        assert loop.time() - started < 0.35  # two 0.2 s segments side by side, not 0.4 s in a row
        assert [result.frames.shape for result in results] == [(4, 64, 64, 3)] * 2
    finally:
        await pool.shutdown()
