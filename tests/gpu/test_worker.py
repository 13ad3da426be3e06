"""The worker's side of the pipe, driven over a real Pipe from a thread: jobs, slots, cancellation."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import pytest

from gpu.frame_slots import FrameSlots, SlotRef
from gpu.generator import SegmentRequest
from gpu.ipc import (
    CancelJob,
    CheckState,
    FailureKind,
    FramesReady,
    JobDone,
    JobFailed,
    JobStarted,
    ReleaseSlot,
    RunJob,
    StateChecked,
    StepDone,
    StopWorker,
    WorkerReady,
)
from gpu.synthetic import SyntheticGenerator
from gpu.worker import WorkerLoop

SLOTS = 4
REQUEST = SegmentRequest(prompt="a red fox", width=64, height=64, num_frames=6, num_inference_steps=2)
WAIT_S = 5.0


@dataclass
class Harness:
    """The server's end of a worker's pipe, and the slots both sides share."""

    conn: Connection
    slots: FrameSlots
    thread: threading.Thread

    def recv(self, timeout_s: float = WAIT_S) -> Any:
        assert self.conn.poll(timeout_s), "the worker sent nothing"
        return self.conn.recv()

    def frames(self, message: FramesReady) -> np.ndarray:
        frames, audio = self.slots.read(SlotRef(message.slot, message.shape, message.audio_shape))
        self.conn.send(ReleaseSlot(message.slot))
        assert audio is not None and len(audio) == len(frames) * 2000  # the synthetic's 48 kHz at 24 fps
        return frames

    def run_to_end(self, job_id: int) -> tuple[list[Any], np.ndarray]:
        """Every message of one job up to its JobDone / JobFailed, handing slots back as a server does."""
        messages: list[Any] = []
        chunks: list[np.ndarray] = []
        while True:
            message = self.recv()
            messages.append(message)
            if isinstance(message, FramesReady):
                chunks.append(self.frames(message))
            if isinstance(message, (JobDone, JobFailed)) and message.job_id == job_id:
                return messages, np.concatenate(chunks) if chunks else np.empty((0,), np.uint8)


@pytest.fixture
def start_worker() -> Iterator[Callable[..., Harness]]:
    started: list[Harness] = []

    def start(options: dict[str, object] | None = None, warmup: SegmentRequest | None = None) -> Harness:
        server, child = Pipe(duplex=True)
        slots = FrameSlots.create(count=SLOTS, slot_bytes=64 * 64 * 3 * 12)
        loop = WorkerLoop(child, slots)
        loop.boot("synthetic", dict(options or {}), warmup)
        thread = threading.Thread(target=loop.serve, daemon=True)
        thread.start()
        harness = Harness(server, slots, thread)
        started.append(harness)
        return harness

    yield start
    for harness in started:
        if harness.thread.is_alive():
            harness.conn.send(StopWorker())
            harness.thread.join(timeout=WAIT_S)
        harness.conn.close()
        harness.slots.close()


def test_boot_reports_ready_with_its_timings(start_worker: Callable[..., Harness]) -> None:
    worker = start_worker(warmup=replace(REQUEST, num_frames=2))
    ready = worker.recv()
    assert isinstance(ready, WorkerReady)
    assert ready.warmup_ms is not None and ready.boot_ms >= ready.warmup_ms > 0


def test_a_job_streams_its_frames_through_slots_in_order_then_finishes(start_worker: Callable[..., Harness]) -> None:
    worker = start_worker()
    assert isinstance(worker.recv(), WorkerReady)
    worker.conn.send(RunJob(1, REQUEST))
    messages, frames = worker.run_to_end(1)
    kinds = [type(message).__name__ for message in messages]
    assert kinds == ["JobStarted", "StepDone", "StepDone"] + ["FramesReady"] * 6 + ["JobDone"]
    assert [(m.step, m.total) for m in messages if isinstance(m, StepDone)] == [(1, 2), (2, 2)]
    expected = SyntheticGenerator().generate(REQUEST)
    np.testing.assert_array_equal(frames, expected.frames)
    assert messages[-1].state == expected.continuation


def test_a_worker_out_of_slots_waits_and_a_cancel_still_stops_the_job(start_worker: Callable[..., Harness]) -> None:
    worker = start_worker()
    assert isinstance(worker.recv(), WorkerReady)
    worker.conn.send(RunJob(1, REQUEST))
    held: list[FramesReady] = []
    while len(held) < SLOTS:
        message = worker.recv()
        if isinstance(message, FramesReady):
            held.append(message)
    assert not worker.conn.poll(0.3)  # every slot is taken: the fifth frame waits
    worker.conn.send(CancelJob(1))
    assert worker.recv() == JobFailed(1, FailureKind.CANCELLED, "cancelled")
    for message in held:
        worker.conn.send(ReleaseSlot(message.slot))
    worker.conn.send(RunJob(2, REQUEST))
    messages, frames = worker.run_to_end(2)
    assert isinstance(messages[-1], JobDone) and frames.shape == (6, 64, 64, 3)


def test_a_queued_job_cancelled_before_it_starts_is_reported_and_never_started(
    start_worker: Callable[..., Harness],
) -> None:
    worker = start_worker({"step_delay_s": 0.05})
    assert isinstance(worker.recv(), WorkerReady)
    worker.conn.send(RunJob(1, replace(REQUEST, num_inference_steps=4)))
    worker.conn.send(RunJob(2, REQUEST))
    worker.conn.send(CancelJob(2))
    messages, frames = worker.run_to_end(1)
    assert JobFailed(2, FailureKind.CANCELLED, "cancelled before it started") in messages
    assert isinstance(messages[-1], JobDone) and frames.shape[0] == 6
    assert not worker.conn.poll(0.3)
    assert JobStarted(2) not in messages


def test_a_cancel_for_a_finished_job_is_ignored(start_worker: Callable[..., Harness]) -> None:
    worker = start_worker()
    assert isinstance(worker.recv(), WorkerReady)
    worker.conn.send(RunJob(1, REQUEST))
    worker.run_to_end(1)
    worker.conn.send(CancelJob(1))
    worker.conn.send(RunJob(2, REQUEST))
    messages, _ = worker.run_to_end(2)
    assert isinstance(messages[-1], JobDone)


def test_stop_during_a_job_cancels_it_and_ends_the_worker(start_worker: Callable[..., Harness]) -> None:
    worker = start_worker({"step_delay_s": 0.05})
    assert isinstance(worker.recv(), WorkerReady)
    worker.conn.send(RunJob(1, replace(REQUEST, num_inference_steps=100)))
    assert worker.recv() == JobStarted(1)
    worker.conn.send(StopWorker())
    messages, _ = worker.run_to_end(1)
    assert messages[-1] == JobFailed(1, FailureKind.CANCELLED, "cancelled")
    worker.thread.join(timeout=WAIT_S)
    assert not worker.thread.is_alive()


def test_failures_are_reported_by_kind(start_worker: Callable[..., Harness]) -> None:
    worker = start_worker()
    assert isinstance(worker.recv(), WorkerReady)
    worker.conn.send(RunJob(1, replace(REQUEST, width=8, height=8)))
    messages, _ = worker.run_to_end(1)
    assert messages[-1].kind is FailureKind.GENERATOR_ERROR and "GeneratorError" in messages[-1].error
    worker.conn.send(CheckState(2, {"kind": "ltx.v1", "payload": {}}))
    failed = worker.recv()
    assert failed.kind is FailureKind.INCOMPATIBLE_STATE and "ltx.v1" in failed.error
    state = SyntheticGenerator().generate(REQUEST).continuation
    worker.conn.send(CheckState(3, state.to_wire()))
    assert worker.recv() == StateChecked(3)
