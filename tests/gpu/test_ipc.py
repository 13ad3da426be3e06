"""The worker pipe's messages: every one survives a real multiprocessing Pipe unchanged."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from dataclasses import FrozenInstanceError
from multiprocessing.connection import Connection

import pytest

from gpu.generator import ContinuationState, SegmentRequest
from gpu.ipc import (
    BootFailed,
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

STATE = ContinuationState("synthetic.v1", {"segment_idx": 2, "frame_number": 48, "shapes": [[0.5, 0.5, 0.01, -0.01]]})
MESSAGES = [
    RunJob(1, SegmentRequest(prompt="a red fox", seed=7, num_frames=12, continuation=STATE)),
    CheckState(2, STATE.to_wire()),
    CancelJob(3),
    ReleaseSlot(1),
    StopWorker(),
    WorkerReady(pid=4242, boot_ms=812.5, warmup_ms=None),
    BootFailed(error="GeneratorError: no model", trace="Traceback ..."),
    JobStarted(1),
    StepDone(1, 2, 4),
    FramesReady(1, 3, (8, 64, 64, 3)),
    JobDone(1, STATE.to_wire(), 123.4),
    JobFailed(1, FailureKind.CANCELLED, "cancelled"),
    JobFailed(2, FailureKind.INCOMPATIBLE_STATE, "expects ltx.v1"),
    StateChecked(2),
]


@pytest.fixture
def pipe() -> Iterator[tuple[Connection, Connection]]:
    server, worker = mp.get_context("spawn").Pipe(duplex=True)
    yield server, worker
    server.close()
    worker.close()


@pytest.mark.parametrize("message", MESSAGES, ids=lambda message: type(message).__name__)
def test_message_round_trips_through_a_pipe(pipe: tuple[Connection, Connection], message: object) -> None:
    server, worker = pipe
    server.send(message)
    received = worker.recv()
    assert type(received) is type(message)
    assert received == message


def test_continuation_states_cross_as_kind_and_payload() -> None:
    done = JobDone(1, STATE.to_wire(), 1.0)
    assert done.continuation == {"kind": STATE.kind, "payload": STATE.payload}
    assert done.state == STATE
    assert CheckState(2, STATE.to_wire()).state == STATE


def test_messages_are_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        CancelJob(1).job_id = 2  # type: ignore[misc]
