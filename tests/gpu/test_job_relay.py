"""JobRelay: callbacks hop onto the loop in order and stop for good once the job is abandoned."""

from __future__ import annotations

import asyncio
import logging
import threading

import numpy as np
import pytest

from gpu.generator import SegmentCancelled
from gpu.job_relay import JobRelay


def _chunk(value: int) -> np.ndarray:
    return np.full((1, 4, 4, 3), value, dtype=np.uint8)


async def test_thread_calls_run_on_the_loop_in_call_order() -> None:
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, int, int]] = []
    relay = JobRelay(
        loop,
        label="t",
        on_step=lambda step, total: seen.append(("step", step, threading.get_ident())),
        on_frames=lambda chunk, audio=None: seen.append(("frames", int(chunk[0, 0, 0, 0]), threading.get_ident())),
    )

    def backend() -> None:
        relay.step_from_thread(1, 2)
        relay.step_from_thread(2, 2)
        for value in range(3):
            relay.frames_from_thread(_chunk(value))

    await asyncio.to_thread(backend)
    await asyncio.sleep(0)
    loop_thread = threading.get_ident()
    assert seen == [("step", 1, loop_thread), ("step", 2, loop_thread)] + [
        ("frames", value, loop_thread) for value in range(3)
    ]


async def test_chunks_reach_the_loop_as_they_are_without_a_copy() -> None:
    # Backends hand over frames they are done with (FrameCallback), so no per-frame copy is paid.
    received: list[np.ndarray] = []
    relay = JobRelay(asyncio.get_running_loop(), label="t", on_frames=lambda chunk, audio=None: received.append(chunk))
    chunk = _chunk(7)
    await asyncio.to_thread(relay.frames_from_thread, chunk)
    await asyncio.sleep(0)
    assert len(received) == 1 and received[0] is chunk


async def test_after_abandon_nothing_is_delivered_and_the_backend_is_told_to_stop() -> None:
    calls: list[str] = []
    abandoned: list[bool] = []
    relay = JobRelay(
        asyncio.get_running_loop(),
        label="t",
        on_step=lambda step, total: calls.append("step"),
        on_frames=lambda chunk, audio=None: calls.append("frames"),
        on_abandon=lambda: abandoned.append(True),
    )
    relay.frames_from_thread(_chunk(1))  # queued on the loop, not yet run
    relay.abandon()
    relay.abandon()
    await asyncio.sleep(0)
    relay.step(1, 1)
    assert calls == [] and abandoned == [True]
    with pytest.raises(SegmentCancelled):
        relay.step_from_thread(2, 2)
    with pytest.raises(SegmentCancelled):
        relay.frames_from_thread(_chunk(2))


async def test_an_on_frames_failure_abandons_the_job_and_is_kept_for_the_caller() -> None:
    def broken(chunk: np.ndarray, audio: np.ndarray | None = None) -> None:
        raise BrokenPipeError("sink closed")

    relay = JobRelay(asyncio.get_running_loop(), label="t", on_frames=broken)
    relay.frames(_chunk(1))
    assert relay.abandoned
    assert isinstance(relay.failure, BrokenPipeError)
    with pytest.raises(BrokenPipeError, match="sink closed"):
        relay.raise_failure()


async def test_segment_cancelled_from_on_step_abandons_and_other_step_errors_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def flaky(step: int, total: int) -> None:
        if step == 1:
            raise ValueError("progress bar broke")
        raise SegmentCancelled("stop")

    relay = JobRelay(asyncio.get_running_loop(), label="session s1", on_step=flaky)
    with caplog.at_level(logging.ERROR, logger="gpu.job_relay"):
        relay.step(1, 2)
    assert not relay.abandoned and "session s1: on_step callback failed" in caplog.text
    relay.step(2, 2)
    assert relay.abandoned and isinstance(relay.failure, SegmentCancelled)


def test_a_closed_loop_stops_the_backend() -> None:
    loop = asyncio.new_event_loop()
    relay = JobRelay(loop, label="t", on_frames=lambda chunk, audio=None: None)
    loop.close()
    with pytest.raises(SegmentCancelled, match="closed"):
        relay.frames_from_thread(_chunk(1))


async def test_nothing_is_delivered_once_the_awaiting_task_is_asked_to_cancel() -> None:
    calls: list[str] = []
    abandoned: list[bool] = []
    relays: list[JobRelay] = []

    async def awaiting_the_job() -> None:
        relays.append(
            JobRelay(
                asyncio.get_running_loop(),
                label="t",
                on_step=lambda step, total: calls.append("step"),
                on_frames=lambda chunk, audio=None: calls.append("frames"),
                on_abandon=lambda: abandoned.append(True),
                owner=asyncio.current_task(),
            )
        )
        await asyncio.Event().wait()

    task = asyncio.create_task(awaiting_the_job())
    await asyncio.sleep(0)
    (relay,) = relays
    relay.step(1, 2)
    task.cancel()  # requested, not yet delivered: the task has not run since
    relay.step(2, 2)
    relay.frames(_chunk(1))
    assert calls == ["step"] and relay.abandoned and abandoned == [True]
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_the_owner_had_before_the_job_does_not_count() -> None:
    calls: list[str] = []
    current = asyncio.current_task()
    assert current is not None
    current.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(0)  # caught without uncancel(): the count stays raised
    relay = JobRelay(asyncio.get_running_loop(), label="t", on_step=lambda step, total: calls.append("step"), owner=current)
    relay.step(1, 1)
    current.uncancel()
    assert calls == ["step"]
