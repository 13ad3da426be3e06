"""SubprocessGpuPool with real worker processes running the synthetic generator."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from gpu.generator import SegmentRequest
from gpu.pool import WorkerFailedError
from gpu.subprocess_pool import SubprocessGpuPool, WorkerSettings
from gpu.synthetic import SyntheticGenerator

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
    states = {"a": None, "b": None}
    for _ in range(4):
        for session in ("a", "b"):
            from dataclasses import replace

            result = await pool.run(session, replace(REQUEST, continuation=states[session]))
            states[session] = result.continuation
    assert pool.binding("a") == first.worker_id and pool.binding("b") == second.worker_id
    status = pool.status()["gpu_status"]
    assert status["gpu-0"]["segments_done"] == 4 and status["gpu-1"]["segments_done"] == 4
    assert states["a"].payload["segment_idx"] == 4


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
    assert all(x != y for x, y in zip(order[1:], order[2:], strict=False)), order


async def test_a_worker_that_fails_to_boot_is_kept_out_and_reported(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool(per_worker_options={1: {"fail_on_start": True}})
    status = pool.status()
    assert pool.ready
    assert status["warmup_failed_gpus"] == 1 and status["warmup_successful_gpus"] == 1
    broken = status["gpu_status"]["gpu-1"]
    assert broken["ready"] is False and "fail_on_start" in (broken["last_error"] or "")
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
    while not pool.status()["gpu_status"][victim_worker]["ready"]:
        assert time.monotonic() < deadline, "worker was not restarted"
        await asyncio.sleep(0.05)
    assert pool.status()["gpu_status"][victim_worker]["restarts"] == 1
    await pool.acquire("victim")
    assert (await pool.run("victim", REQUEST)).frames.shape[0] == 12


async def test_a_hung_segment_past_the_deadline_kills_and_restarts_the_worker(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool(num_workers=1, options={"step_delay_s": 2.0}, segment_timeout_s=0.5, warmup=False)
    await pool.acquire("s")
    started = time.monotonic()
    with pytest.raises(WorkerFailedError, match="deadline"):
        await pool.run("s", REQUEST)
    assert time.monotonic() - started < 2.0
    assert "deadline" in pool.status()["gpu_status"]["gpu-0"]["last_error"]


async def test_check_state_asks_a_worker(make_pool) -> None:  # type: ignore[no-untyped-def]
    from gpu.generator import ContinuationState, IncompatibleStateError

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
