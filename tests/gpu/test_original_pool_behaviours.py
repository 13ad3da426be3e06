"""Pool behaviours the original server's own test suite checks, restated against both pools here.

Ported from fastvideo/tests/entrypoints/streaming/test_gpu_pool.py (test_release_skips_dead_worker)
and test_worker.py (test_warmup_passes_through_when_no_state_returned). The original's
test_acquire_timeout_when_all_busy is test_subprocess_pool.py's
test_acquire_gives_up_after_its_timeout_when_every_worker_is_full.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from multiprocessing import Pipe
from typing import Any

import numpy as np
import pytest

from gpu import worker as worker_module
from gpu.frame_slots import FrameSlots
from gpu.generator import ContinuationState, SegmentRequest, SegmentResult, StepCallback
from gpu.ipc import WorkerReady
from gpu.pool import InProcessGpuPool, PoolAcquireTimeout
from gpu.subprocess_pool import SubprocessGpuPool, WorkerSettings
from gpu.synthetic import SyntheticGenerator

REQUEST = SegmentRequest(prompt="a red fox in snow", width=64, height=64, num_frames=4, num_inference_steps=1)
WARMUP = SegmentRequest(prompt="warm-up", width=32, height=32, num_frames=2, num_inference_steps=1)
RESTART_DELAY_S = 3.0  # long enough to look at the pool while its worker is down
WAIT_S = 15.0


@pytest.fixture
async def one_worker_pool() -> AsyncIterator[SubprocessGpuPool]:
    pool = SubprocessGpuPool(
        WorkerSettings(
            backend="synthetic",
            num_workers=1,
            sessions_per_worker=1,
            max_frame_bytes=64 * 64 * 3 * 4,
            warmup=False,
            restart_delay_s=RESTART_DELAY_S,
        )
    )
    await pool.start()
    yield pool
    await pool.shutdown()


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_a_session_bound_to_a_dead_worker_is_released_and_its_slot_comes_back_after_restart(
    one_worker_pool: SubprocessGpuPool,
) -> None:
    pool = one_worker_pool
    assert (await pool.acquire("a")).worker_id == "gpu-0"
    (pid,) = pool.worker_pids()
    pool.kill_worker("gpu-0")
    await _until(lambda: pid not in pool.worker_pids(), "the killed worker is still alive")
    # The process is gone before the pool's reader sees its pipe close: wait for the pool to know.
    await _until(lambda: not pool.status().gpu_status["gpu-0"].ready, "the pool still counts the dead worker ready")
    await pool.release("a")  # no error, and nothing handed back: the worker is dead
    await pool.release("a")  # idempotent
    assert pool.binding("a") is None
    with pytest.raises(PoolAcquireTimeout):
        await pool.acquire("b", timeout=0.2)
    assert pool.status().available_gpus == 0
    await _until(lambda: pool.status().gpu_status["gpu-0"].ready, "the worker was not restarted")
    assert pool.status().gpu_status["gpu-0"].restarts == 1
    assert (await pool.acquire("b", timeout=WAIT_S)).worker_id == "gpu-0"
    assert (await pool.run("b", REQUEST)).frames.shape[0] == REQUEST.num_frames
    # One slot, held by "b": the dead session's slot was not counted back twice.
    with pytest.raises(PoolAcquireTimeout):
        await pool.acquire("c", timeout=0.2)


# --- warm-up whose first segment leaves no continuation state ------------------------------------


class StatelessGenerator:
    """The synthetic generator, but returning no continuation state; records what it was asked."""

    name = "stateless"
    audio_format = None

    def __init__(self) -> None:
        self._inner = SyntheticGenerator(audio=False)
        self.requests: list[SegmentRequest] = []

    def generate(
        self, request: SegmentRequest, on_step: StepCallback | None = None, on_frames: Any = None
    ) -> SegmentResult:
        self.requests.append(request)
        result = self._inner.generate(request, on_step)
        if on_frames is not None:
            on_frames(result.frames, None)
        return SegmentResult(frames=result.frames, continuation=None)  # type: ignore[arg-type]  # the original allows it

    def check_state(self, state: ContinuationState) -> None:
        self._inner.check_state(state)

    def close(self) -> None:
        self._inner.close()


async def test_in_process_warm_up_without_state_runs_both_segments_and_gets_ready() -> None:
    made: list[StatelessGenerator] = []

    def factory() -> StatelessGenerator:
        made.append(StatelessGenerator())
        return made[-1]

    pool = InProcessGpuPool(factory, warmup_request=WARMUP)  # type: ignore[arg-type]
    await pool.start()
    try:
        assert pool.ready
        (generator,) = made
        first, second = generator.requests
        assert first.continuation is None and second.continuation is None
        assert second.segment_idx == first.segment_idx + 1
        assert pool.status().warmup_successful_gpus == 1
    finally:
        await pool.shutdown()


def test_worker_warm_up_without_state_runs_both_segments_and_reports_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """The subprocess pool's warm-up runs in the worker (WorkerLoop.boot): driven here over a real Pipe."""
    generator = StatelessGenerator()
    monkeypatch.setattr(worker_module, "build_generator", lambda backend, options: generator)
    server, child = Pipe(duplex=True)
    slots = FrameSlots.create(count=1, slot_bytes=int(np.prod((2, 32, 32, 3))))
    try:
        worker_module.WorkerLoop(child, slots).boot("stateless", {}, WARMUP)
        assert server.poll(5.0)
        ready = server.recv()
        assert isinstance(ready, WorkerReady) and ready.warmup_ms is not None
        first, second = generator.requests
        assert first.continuation is None and second.continuation is None
        assert second.segment_idx == first.segment_idx + 1
    finally:
        server.close()
        child.close()
        slots.close()
