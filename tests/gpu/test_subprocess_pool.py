"""SubprocessGpuPool with real worker processes running the synthetic generator."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gpu.generator import (
    ContinuationState,
    GeneratorError,
    IncompatibleStateError,
    SegmentCancelled,
    SegmentRequest,
)
from gpu.pool import PoolAcquireTimeout, PoolUnavailableError, WorkerFailedError
from gpu.subprocess_pool import SLOTS_PER_WORKER, SubprocessGpuPool, WorkerSettings
from gpu.synthetic import SyntheticGenerator
from gpu.synthetic_audio import SYNTHETIC_AUDIO_FORMAT
from gpu.worker_state import WorkerState
from tests.gpu.status_shape import STATUS_KEYS, WORKER_KEYS

REQUEST = SegmentRequest(prompt="a red fox in snow", width=128, height=128, num_frames=12, num_inference_steps=2)
WARMUP = SegmentRequest(prompt="warm-up", width=64, height=64, num_frames=2, num_inference_steps=1)


def settings(**overrides: object) -> WorkerSettings:
    base: dict[str, object] = {
        "backend": "synthetic",
        "num_workers": 2,
        "max_frame_bytes": 128 * 128 * 3 * 12,
        "warmup_request": WARMUP,
        "restart_delay_s": 0.1,
    }
    return WorkerSettings(**{**base, **overrides})  # type: ignore[arg-type]


@pytest.fixture
async def make_pool() -> AsyncIterator[object]:
    pools: list[SubprocessGpuPool] = []

    async def make(**overrides: object) -> SubprocessGpuPool:
        pool = SubprocessGpuPool(settings(**overrides))
        pools.append(pool)
        await pool.start()
        return pool

    yield make
    for pool in pools:
        await pool.shutdown()


def children_of_this_process() -> set[int]:
    """Live child processes, read from /proc (the OS's view, not the pool's bookkeeping)."""
    me = os.getpid()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me and fields[0] != "Z":
            found.add(int(entry.name))
    return found


async def test_frames_cross_through_shared_memory_unchanged(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool(num_workers=1)
    await pool.acquire("s")
    steps: list[tuple[int, int]] = []
    result = await pool.run("s", REQUEST, lambda step, total: steps.append((step, total)))
    expected = SyntheticGenerator().generate(REQUEST)
    assert result.frames.shape == (12, 128, 128, 3) and result.frames.dtype == np.uint8
    assert np.array_equal(result.frames, expected.frames)
    assert result.continuation == expected.continuation
    assert steps == [(1, 2), (2, 2)]


async def test_sessions_stick_to_their_worker_across_segments(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool()
    first, second = await pool.acquire("a"), await pool.acquire("b")
    assert {first.worker_id, second.worker_id} == {"gpu-0", "gpu-1"}
    states: dict[str, ContinuationState | None] = {"a": None, "b": None}
    for _ in range(4):
        for session in ("a", "b"):
            result = await pool.run(session, replace(REQUEST, continuation=states[session]))
            states[session] = result.continuation
    assert pool.binding("a") == first.worker_id and pool.binding("b") == second.worker_id
    status = pool.status().gpu_status
    assert status["gpu-0"].segments_done == 4 and status["gpu-1"].segments_done == 4
    final = states["a"]
    assert final is not None and final.payload["segment_idx"] == 4


async def test_a_shared_worker_interleaves_its_sessions_fairly(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool(num_workers=1, sessions_per_worker=2, options={"step_delay_s": 0.05})
    await pool.acquire("a")
    await pool.acquire("b")
    order: list[str] = []

    async def stream(session: str) -> None:
        while len(order) < 12:
            await pool.run(session, REQUEST)
            order.append(session)

    await asyncio.gather(stream("a"), stream("b"))
    assert abs(order.count("a") - order.count("b")) <= 1
    assert all(x != y for x, y in itertools.pairwise(order[1:])), order


async def test_a_worker_that_fails_to_boot_is_kept_out_and_reported(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool(per_worker_options={1: {"fail_on_start": True}})
    status = pool.status()
    assert pool.ready
    assert status.warmup_failed_gpus == 1 and status.warmup_successful_gpus == 1
    broken = status.gpu_status["gpu-1"]
    assert broken.state is WorkerState.FAILED
    assert broken.ready is False and "fail_on_start" in (broken.last_error or "")
    assert (await pool.acquire("a")).worker_id == "gpu-0"


async def test_a_killed_worker_fails_its_segment_fast_and_comes_back(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool(options={"step_delay_s": 0.5})
    await pool.acquire("victim")
    await pool.acquire("bystander")
    victim_worker = pool.binding("victim")
    running = asyncio.create_task(pool.run("victim", REQUEST))
    other = asyncio.create_task(pool.run("bystander", REQUEST))
    await asyncio.sleep(0.3)
    killed_at = time.monotonic()
    pool.kill_worker(victim_worker)
    with pytest.raises(WorkerFailedError):
        await running
    assert time.monotonic() - killed_at < 2.0
    assert (await other).frames.shape[0] == 12
    assert pool.binding("victim") is None
    deadline = time.monotonic() + 10
    while not pool.status().gpu_status[victim_worker].ready:
        assert time.monotonic() < deadline, "worker was not restarted"
        await asyncio.sleep(0.05)
    assert pool.status().gpu_status[victim_worker].restarts == 1
    await pool.acquire("victim")
    assert (await pool.run("victim", REQUEST)).frames.shape[0] == 12


async def test_a_hung_segment_past_the_deadline_kills_and_restarts_the_worker(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool(num_workers=1, options={"step_delay_s": 2.0}, segment_timeout_s=0.5, warmup=False)
    await pool.acquire("s")
    started = time.monotonic()
    with pytest.raises(WorkerFailedError, match="deadline"):
        await pool.run("s", REQUEST)
    assert time.monotonic() - started < 2.0
    assert "deadline" in (pool.status().gpu_status["gpu-0"].last_error or "")


async def test_check_state_asks_a_worker(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool(num_workers=1)
    await pool.acquire("s")
    state = (await pool.run("s", REQUEST)).continuation
    await pool.check_state(state)
    with pytest.raises(IncompatibleStateError, match="ltx.v1"):
        await pool.check_state(ContinuationState("ltx.v1", {}))


async def test_shutdown_is_idempotent_and_leaves_no_process() -> None:
    pool = SubprocessGpuPool(settings())
    await pool.start()
    pids = set(pool.worker_pids())
    assert len(pids) == 2 and pids <= children_of_this_process()
    await asyncio.gather(pool.shutdown(), pool.shutdown())
    await pool.shutdown()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (pids & children_of_this_process())


async def test_status_json_has_the_status_endpoint_shape(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool()
    body = json.loads(json.dumps(pool.status().to_json()))
    assert set(body) == STATUS_KEYS
    assert (body["total_gpus"], body["available_gpus"], body["queue_size"]) == (2, 2, 0)
    assert set(body["gpu_status"]) == {"gpu-0", "gpu-1"}
    for worker in body["gpu_status"].values():
        assert set(worker) == WORKER_KEYS
        assert worker["state"] == "ready" and worker["alive"] is True and isinstance(worker["pid"], int)
    assert pool.status().ready_workers == 2 and pool.status().busy_workers == 0


# Frames as they are made, and abandoned segments.


async def wait_until_idle(pool: SubprocessGpuPool, worker_id: str, timeout_s: float) -> float:
    """Seconds until the worker is generating nothing; fails after ``timeout_s``."""
    started = time.monotonic()
    while pool.status().gpu_status[worker_id].busy:
        assert time.monotonic() - started < timeout_s, f"{worker_id} still busy after {timeout_s} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_chunks_reach_on_frames_on_the_loop_in_order_before_run_returns(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool(num_workers=1)
    await pool.acquire("s")
    loop_thread = threading.get_ident()
    events: list[str] = []
    chunks: list[np.ndarray] = []

    def on_frames(chunk: np.ndarray, audio: np.ndarray | None = None) -> None:
        assert threading.get_ident() == loop_thread
        events.append("frames")
        chunks.append(chunk)

    result = await pool.run("s", REQUEST, lambda step, total: events.append("step"), on_frames)
    events.append("returned")
    assert events == ["step", "step"] + ["frames"] * 12 + ["returned"]
    assert result.frames.shape == (0, 128, 128, 3) and result.frames.dtype == np.uint8
    expected = SyntheticGenerator().generate(REQUEST)
    np.testing.assert_array_equal(np.concatenate(chunks), expected.frames)
    assert result.continuation == expected.continuation


async def test_audio_crosses_shared_memory_with_its_frames_and_the_pool_reports_its_format(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool(num_workers=1)
    assert pool.audio_format == SYNTHETIC_AUDIO_FORMAT
    await pool.acquire("s")
    sounds: list[np.ndarray] = []

    def on_frames(chunk: np.ndarray, audio: np.ndarray | None) -> None:
        assert audio is not None and audio.dtype == np.float32 and len(audio) == 2000 * len(chunk)
        sounds.append(audio)

    await pool.run("s", REQUEST, on_frames=on_frames)
    expected = SyntheticGenerator().generate(REQUEST)
    assert expected.audio is not None
    np.testing.assert_array_equal(np.concatenate(sounds), expected.audio)
    whole = await pool.run("s", replace(REQUEST, continuation=expected.continuation, segment_idx=1))
    following = SyntheticGenerator().generate(replace(REQUEST, continuation=expected.continuation, segment_idx=1))
    assert whole.audio is not None and following.audio is not None
    np.testing.assert_array_equal(whole.audio, following.audio)


async def test_a_worker_without_sound_streams_frames_only(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool(num_workers=1, options={"audio": False})
    assert pool.audio_format is None
    await pool.acquire("s")
    sounds: list[np.ndarray | None] = []
    result = await pool.run("s", REQUEST, on_frames=lambda chunk, audio: sounds.append(audio))
    assert sounds == [None] * 12 and result.audio is None


async def test_a_segment_whose_audio_exceeds_the_slots_is_refused_before_it_reaches_the_worker(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool(num_workers=1, max_audio_bytes=1000)
    await pool.acquire("s")
    with pytest.raises(GeneratorError, match="bytes of audio exceed"):
        await pool.run("s", REQUEST)


async def test_the_first_chunk_arrives_while_the_worker_is_still_making_the_segment(make_pool) -> None:  # type: ignore[no-untyped-def]
    frame_delay_s = 0.4
    pool = await make_pool(num_workers=1, options={"frame_delay_s": frame_delay_s}, warmup=False)
    await pool.acquire("s")
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []
    result = await pool.run(
        "s", replace(REQUEST, num_frames=3, num_inference_steps=1), on_frames=lambda chunk, audio=None: arrivals.append(loop.time())
    )
    returned = loop.time()
    assert len(arrivals) == 3 and result.frames.shape[0] == 0
    # Two more frames were still to be made when the first arrived.
    assert returned - arrivals[0] >= 1.5 * frame_delay_s


async def test_a_cancelled_run_gets_no_callbacks_stops_the_worker_and_the_next_run_completes(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool(num_workers=1, options={"step_delay_s": 0.1}, warmup=False)
    await pool.acquire("s")
    calls: list[str] = []
    first_step = asyncio.Event()

    def on_step(step: int, total: int) -> None:
        calls.append(f"step {step}")
        first_step.set()

    long_segment = replace(REQUEST, num_inference_steps=30)  # 3 s if it ran to the end
    running = asyncio.create_task(pool.run("s", long_segment, on_step, lambda chunk, audio=None: calls.append("frames")))
    await asyncio.wait_for(first_step.wait(), timeout=10)
    running.cancel()
    seen_at_cancel = list(calls)  # from here on, no callback may run
    with pytest.raises(asyncio.CancelledError):
        await running
    assert await wait_until_idle(pool, "gpu-0", timeout_s=1.5) < 1.5  # stopped at its next step
    result = await asyncio.wait_for(pool.run("s", REQUEST), timeout=10)
    assert calls == seen_at_cancel
    np.testing.assert_array_equal(result.frames, SyntheticGenerator().generate(REQUEST).frames)
    status = pool.status()
    assert status.gpu_status["gpu-0"].ready and status.queued_segments == 0


async def test_three_sessions_abandoning_their_segments_right_after_start_leave_the_worker_serving(make_pool) -> None:  # type: ignore[no-untyped-def]
    # The attacker's scenario: each abandoned segment used to keep its frame slot forever, until
    # the worker blocked waiting for a free slot and a fresh job got "started" and then nothing.
    pool = await make_pool(num_workers=1, sessions_per_worker=4, options={"step_delay_s": 0.1})
    for session in ("a", "b", "c"):
        await pool.acquire(session)
        running = asyncio.create_task(pool.run(session, REQUEST))
        await asyncio.sleep(0.05)  # the segment has started
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    await pool.acquire("fresh")
    result = await asyncio.wait_for(pool.run("fresh", REQUEST), timeout=10)
    assert result.frames.shape == (12, 128, 128, 3)


async def test_abandoning_segments_while_their_frames_stream_hands_every_slot_back(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool(num_workers=1)
    await pool.acquire("s")
    for _ in range(SLOTS_PER_WORKER + 2):
        tasks: list[asyncio.Task[object]] = []

        def leave(
            chunk: np.ndarray, audio: np.ndarray | None = None, tasks: list[asyncio.Task[object]] = tasks
        ) -> None:
            tasks[0].cancel()  # frames of this segment are still on their way, in slots

        tasks.append(asyncio.create_task(pool.run("s", REQUEST, on_frames=leave)))
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
    result = await asyncio.wait_for(pool.run("s", REQUEST), timeout=10)
    assert result.frames.shape == (12, 128, 128, 3)


async def test_an_on_frames_failure_is_raised_from_run_and_the_worker_carries_on(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool(num_workers=1, options={"frame_delay_s": 0.05}, warmup=False)
    await pool.acquire("s")
    handed: list[int] = []

    def on_frames(chunk: np.ndarray, audio: np.ndarray | None = None) -> None:
        handed.append(chunk.shape[0])
        raise BrokenPipeError("sink closed")

    with pytest.raises(BrokenPipeError, match="sink closed"):
        await pool.run("s", REQUEST, on_frames=on_frames)
    assert handed == [1]
    await wait_until_idle(pool, "gpu-0", timeout_s=2.0)
    assert (await pool.run("s", REQUEST)).frames.shape[0] == 12


async def test_segment_cancelled_from_on_step_ends_the_run_with_it(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool(num_workers=1, options={"step_delay_s": 0.05}, warmup=False)
    await pool.acquire("s")
    frames: list[np.ndarray] = []

    def on_step(step: int, total: int) -> None:
        raise SegmentCancelled("the viewer left")

    with pytest.raises(SegmentCancelled, match="the viewer left"):
        await pool.run("s", replace(REQUEST, num_inference_steps=4), on_step, frames.append)
    assert frames == []
    assert (await pool.run("s", REQUEST)).frames.shape[0] == 12


async def test_acquire_gives_up_after_its_timeout_when_every_worker_is_full(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool(num_workers=1, sessions_per_worker=1)
    await pool.acquire("holder")
    with pytest.raises(PoolAcquireTimeout) as info:
        await pool.acquire("late", timeout=0.2)
    assert isinstance(info.value, PoolUnavailableError)  # a session tells its client gpu_unavailable
    assert pool.binding("late") is None
    # A waiter that gave up leaves nothing behind: the freed worker goes to the next caller at once.
    await pool.release("holder")
    assert (await pool.acquire("next", timeout=0.2)).worker_id == "gpu-0"


async def test_acquire_within_its_timeout_gets_the_worker_freed_meanwhile(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool(num_workers=1, sessions_per_worker=1)
    await pool.acquire("holder")
    waiting = asyncio.create_task(pool.acquire("next", timeout=5.0))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await pool.release("holder")
    assert (await asyncio.wait_for(waiting, 2.0)).worker_id == "gpu-0"
