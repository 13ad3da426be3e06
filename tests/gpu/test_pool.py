"""The in-process pool: start-up and warm-up, session binding, off-loop runs, shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from gpu.audio import AudioFormat
from gpu.generator import (
    FrameCallback,
    Generator,
    GeneratorError,
    SegmentCancelled,
    SegmentRequest,
    SegmentResult,
    StepCallback,
)
from gpu.pool import (
    GpuPool,
    InProcessGpuPool,
    PoolAssignment,
    PoolUnavailableError,
    SessionNotBoundError,
)
from gpu.pool_status import PoolStatus, WorkerStatus
from gpu.synthetic import SyntheticGenerator
from gpu.synthetic_audio import SYNTHETIC_AUDIO_FORMAT
from gpu.worker_state import WorkerState
from tests.gpu.status_shape import STATUS_KEYS, WORKER_KEYS


def _request(**changes: Any) -> SegmentRequest:
    fields: dict[str, Any] = {"prompt": "a red fox", "width": 64, "height": 64, "num_frames": 4}
    fields.update(changes)
    return SegmentRequest(**fields)


class _RecordingGenerator:
    """Wraps the synthetic generator, recording closes and how each segment ended; can fail on demand."""

    def __init__(
        self, *, error: Exception | None = None, step_delay_s: float = 0.0, frame_delay_s: float = 0.0
    ) -> None:
        self._inner = SyntheticGenerator(step_delay_s=step_delay_s, frame_delay_s=frame_delay_s)
        self.error = error
        self.closed = False
        self.outcomes: list[str] = []  # "done" or "cancelled", per segment, in the generating thread

    @property
    def name(self) -> str:
        return "recording"

    @property
    def audio_format(self) -> AudioFormat | None:
        return self._inner.audio_format

    def generate(
        self,
        request: SegmentRequest,
        on_step: StepCallback | None = None,
        on_frames: FrameCallback | None = None,
    ) -> SegmentResult:
        if self.error is not None:
            raise self.error
        try:
            result = self._inner.generate(request, on_step, on_frames)
        except SegmentCancelled:
            self.outcomes.append("cancelled")
            raise
        self.outcomes.append("done")
        return result

    def check_state(self, state: Any) -> None:
        self._inner.check_state(state)

    def close(self) -> None:
        self.closed = True


class _HeldGenerator:
    """Hands over the first frame, then holds the rest of the segment until ``release`` is set."""

    audio_format = None

    def __init__(self) -> None:
        self._inner = SyntheticGenerator(audio=False)
        self.release = threading.Event()
        self.finished = threading.Event()

    @property
    def name(self) -> str:
        return "held"

    def generate(
        self,
        request: SegmentRequest,
        on_step: StepCallback | None = None,
        on_frames: FrameCallback | None = None,
    ) -> SegmentResult:
        result = self._inner.generate(request, on_step)
        if on_frames is not None:
            on_frames(result.frames[:1], None)
            if not self.release.wait(timeout=10):
                raise GeneratorError("never released")
            on_frames(result.frames[1:], None)
        self.finished.set()
        return result

    def check_state(self, state: Any) -> None:
        self._inner.check_state(state)

    def close(self) -> None:
        self.release.set()


def _only_worker(status: PoolStatus) -> WorkerStatus:
    (worker,) = status.gpu_status.values()
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
    assert status.total_gpus == 1
    assert status.available_gpus == 1
    assert (status.queue_size, status.queued_segments) == (0, 0)
    assert status.warmup_enabled is True
    assert (status.warmup_successful_gpus, status.warmup_failed_gpus) == (1, 0)
    assert list(status.gpu_status) == ["inproc-0"]
    assert (status.ready_workers, status.busy_workers) == (1, 0)
    worker = _only_worker(status)
    assert worker.state is WorkerState.READY
    assert worker.ready and worker.alive and worker.pid is None
    assert worker.last_error is None
    assert isinstance(worker.warmup_ms, float) and worker.warmup_ms > 0
    assert worker.boot_ms is not None and worker.boot_ms >= worker.warmup_ms


async def test_status_json_has_the_status_endpoint_shape(pool: InProcessGpuPool) -> None:
    body = json.loads(json.dumps(pool.status().to_json()))
    assert set(body) == STATUS_KEYS
    assert body["total_gpus"] == 1 and body["warmup_enabled"] is True
    worker = body["gpu_status"]["inproc-0"]
    assert set(worker) == WORKER_KEYS
    assert worker["state"] == "ready" and worker["pid"] is None and worker["restarts"] == 0


async def test_pool_without_warm_up_is_ready_with_no_warm_up_time() -> None:
    pool = await _started(SyntheticGenerator, warmup=False, gpu_id=3)
    try:
        status = pool.status()
        assert pool.ready
        assert status.warmup_enabled is False
        assert (status.warmup_successful_gpus, status.warmup_failed_gpus) == (0, 0)
        assert _only_worker(status).warmup_ms is None
        assert await pool.acquire("s1") == PoolAssignment(gpu_id=3, worker_id="inproc-3")
        # One worker takes every session at once: a timeout is accepted and never reached.
        assert await pool.acquire("s2", timeout=0.001) == PoolAssignment(gpu_id=3, worker_id="inproc-3")
    finally:
        await pool.shutdown()


async def test_acquire_run_release_generates_segments_for_bound_sessions(pool: InProcessGpuPool) -> None:
    assignment = await pool.acquire("s1")
    assert assignment == PoolAssignment(gpu_id=0, worker_id="inproc-0")
    assert await pool.acquire("s1") == assignment
    await pool.acquire("s2")
    assert _only_worker(pool.status()).sessions == 2

    first = await pool.run("s1", _request())
    second = await pool.run("s1", _request(continuation=first.continuation))
    assert first.frames.shape == (4, 64, 64, 3)
    assert second.continuation.payload["frame_number"] == 8
    assert _only_worker(pool.status()).segments_done == 2

    await pool.release("s1")
    await pool.release("s1")
    assert _only_worker(pool.status()).sessions == 1
    assert pool.status().available_gpus == 0  # the original's meaning: a GPU with a session bound is not available
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
        assert "boom" in (_only_worker(pool.status()).last_error or "")
        assert pool.ready
    finally:
        await pool.shutdown()


async def test_build_failure_leaves_the_pool_not_ready_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="gpu.pool"):
        pool = await _started(lambda: SyntheticGenerator(fail_on_start=True))
    try:
        assert not pool.ready
        status = pool.status()
        assert status.available_gpus == 0
        assert (status.warmup_successful_gpus, status.warmup_failed_gpus) == (0, 1)
        assert not status.ready
        worker = _only_worker(status)
        assert worker.state is WorkerState.FAILED
        assert not worker.ready and not worker.alive
        assert "fail_on_start" in (worker.last_error or "")
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
        assert pool.status().warmup_failed_gpus == 1
        assert "warm-up failed" in (_only_worker(pool.status()).last_error or "")
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
    assert pool.status().available_gpus == 0
    assert _only_worker(pool.status()).state is WorkerState.STOPPED
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
    assert pool.status().queued_segments == 1
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


# Frames as they are made, and abandoned segments.


async def test_chunks_reach_on_frames_on_the_loop_in_order_before_run_returns(pool: InProcessGpuPool) -> None:
    await pool.acquire("s1")
    loop_thread = threading.get_ident()
    events: list[str] = []
    chunks: list[np.ndarray] = []

    def on_frames(chunk: np.ndarray, audio: np.ndarray | None = None) -> None:
        assert threading.get_ident() == loop_thread
        events.append("frames")
        chunks.append(chunk)

    result = await pool.run(
        "s1", _request(num_inference_steps=2), lambda step, total: events.append("step"), on_frames
    )
    events.append("returned")
    assert events == ["step", "step", "frames", "frames", "frames", "frames", "returned"]
    assert result.frames.shape == (0, 64, 64, 3) and result.frames.dtype == np.uint8
    expected = SyntheticGenerator().generate(_request(num_inference_steps=2))
    np.testing.assert_array_equal(np.concatenate(chunks), expected.frames)
    assert result.continuation == expected.continuation


async def test_without_on_frames_the_result_holds_every_frame(pool: InProcessGpuPool) -> None:
    await pool.acquire("s1")
    result = await pool.run("s1", _request())
    np.testing.assert_array_equal(result.frames, SyntheticGenerator().generate(_request()).frames)


async def test_the_first_chunk_arrives_while_the_backend_is_still_making_the_segment() -> None:
    generator = _HeldGenerator()
    pool = await _started(lambda: generator, warmup=False)
    try:
        await pool.acquire("s1")
        first_chunk = asyncio.Event()
        chunks: list[np.ndarray] = []

        def on_frames(chunk: np.ndarray, audio: np.ndarray | None = None) -> None:
            chunks.append(chunk)
            first_chunk.set()

        running = asyncio.create_task(pool.run("s1", _request(), on_frames=on_frames))
        await asyncio.wait_for(first_chunk.wait(), timeout=5)
        assert not generator.finished.is_set() and not running.done()
        assert [chunk.shape[0] for chunk in chunks] == [1]
        generator.release.set()
        result = await asyncio.wait_for(running, timeout=5)
        assert [chunk.shape[0] for chunk in chunks] == [1, 3]
        assert result.frames.shape[0] == 0
    finally:
        await pool.shutdown()


async def test_a_cancelled_run_gets_no_callbacks_stops_the_backend_and_the_next_run_completes() -> None:
    generator = _RecordingGenerator(step_delay_s=0.05)
    pool = await _started(lambda: generator, warmup=False)
    try:
        await pool.acquire("s1")
        calls: list[str] = []
        first_step = asyncio.Event()

        def on_step(step: int, total: int) -> None:
            calls.append(f"step {step}")
            first_step.set()

        running = asyncio.create_task(
            pool.run("s1", _request(num_inference_steps=20), on_step, lambda chunk, audio=None: calls.append("frames"))
        )
        await asyncio.wait_for(first_step.wait(), timeout=5)
        running.cancel()
        seen_at_cancel = list(calls)  # from here on, no callback may run
        with pytest.raises(asyncio.CancelledError):
            await running
        result = await asyncio.wait_for(pool.run("s1", _request(num_inference_steps=2)), timeout=5)
        assert calls == seen_at_cancel  # nothing after the cancellation
        assert result.frames.shape == (4, 64, 64, 3)
        assert generator.outcomes == ["cancelled", "done"]  # stopped at its next step, not run to the end
        assert pool.ready and _only_worker(pool.status()).running == 0
    finally:
        await pool.shutdown()


async def test_three_sessions_abandoning_their_segments_leave_the_pool_serving() -> None:
    generator = _RecordingGenerator(step_delay_s=0.1)
    pool = await _started(lambda: generator, warmup=False)
    try:
        for session in ("a", "b", "c"):
            await pool.acquire(session)
            running = asyncio.create_task(pool.run(session, _request()))
            await asyncio.sleep(0.05)  # the segment has started
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
        await pool.acquire("fresh")
        result = await asyncio.wait_for(pool.run("fresh", _request()), timeout=5)
        assert result.frames.shape == (4, 64, 64, 3)
        # Each abandoned segment stopped at its next step, or never started when its caller left
        # while it queued behind the previous one; none ran to the end.
        assert generator.outcomes[-1] == "done" and set(generator.outcomes[:-1]) == {"cancelled"}
    finally:
        await pool.shutdown()


async def test_a_run_abandoned_while_queued_never_reaches_the_backend() -> None:
    generator = _RecordingGenerator(step_delay_s=0.05)
    pool = await _started(lambda: generator, warmup=False, max_parallel=1)
    try:
        await pool.acquire("s1")
        await pool.acquire("s2")
        first = asyncio.create_task(pool.run("s1", _request(num_inference_steps=4)))  # 0.2 s
        queued = asyncio.create_task(pool.run("s2", _request(num_inference_steps=2)))
        await asyncio.sleep(0.02)
        assert pool.status().queued_segments == 1
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert (await first).frames.shape[0] == 4
        assert (await pool.run("s2", _request(num_inference_steps=1))).frames.shape[0] == 4
        assert generator.outcomes == ["done", "done"]
        assert pool.status().queued_segments == 0
    finally:
        await pool.shutdown()


async def test_segment_cancelled_from_on_step_ends_the_run_with_it(pool: InProcessGpuPool) -> None:
    await pool.acquire("s1")
    frames: list[np.ndarray] = []

    def on_step(step: int, total: int) -> None:
        raise SegmentCancelled("the viewer left")

    with pytest.raises(SegmentCancelled, match="the viewer left"):
        await pool.run("s1", _request(num_inference_steps=3), on_step, frames.append)
    assert frames == []
    assert (await pool.run("s1", _request())).frames.shape[0] == 4


async def test_an_on_frames_failure_stops_the_segment_and_is_raised_from_run() -> None:
    generator = _RecordingGenerator(frame_delay_s=0.1)  # the loop sees the failure long before the end
    pool = await _started(lambda: generator, warmup=False)
    try:
        await pool.acquire("s1")
        handed: list[int] = []

        def on_frames(chunk: np.ndarray, audio: np.ndarray | None = None) -> None:
            handed.append(chunk.shape[0])
            raise BrokenPipeError("sink closed")

        with pytest.raises(BrokenPipeError, match="sink closed"):
            await pool.run("s1", _request(num_frames=6), on_frames=on_frames)
        assert handed == [1]
        assert generator.outcomes == ["cancelled"]
        assert (await pool.run("s1", _request())).frames.shape[0] == 4
    finally:
        await pool.shutdown()


async def test_frames_of_a_backend_that_only_returns_them_still_go_through_on_frames() -> None:
    class ResultOnly:
        name = "result-only"
        audio_format = SYNTHETIC_AUDIO_FORMAT

        def generate(
            self,
            request: SegmentRequest,
            on_step: StepCallback | None = None,
            on_frames: FrameCallback | None = None,
        ) -> SegmentResult:
            return SyntheticGenerator().generate(request, on_step)

        def check_state(self, state: Any) -> None: ...

        def close(self) -> None: ...

    pool = await _started(ResultOnly, warmup=False)
    try:
        await pool.acquire("s1")
        chunks: list[np.ndarray] = []
        sounds: list[np.ndarray | None] = []

        def on_frames(chunk: np.ndarray, audio: np.ndarray | None) -> None:
            chunks.append(chunk)
            sounds.append(audio)

        result = await pool.run("s1", _request(), on_frames=on_frames)
        assert result.frames.shape[0] == 0 and result.audio is None
        expected = SyntheticGenerator().generate(_request())
        np.testing.assert_array_equal(np.concatenate(chunks), expected.frames)
        assert expected.audio is not None and all(sound is not None for sound in sounds)
        np.testing.assert_array_equal(np.concatenate([s for s in sounds if s is not None]), expected.audio)
    finally:
        await pool.shutdown()
