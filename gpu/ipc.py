"""The messages between SubprocessGpuPool and its worker processes: small frozen dataclasses.

Only these cross a worker's pipe (pickled by ``multiprocessing``); frames never do: they lie in
shared-memory slots (gpu/frame_slots.py) and a message names the slot. Continuation states cross as
their JSON-ready ``{kind, payload}`` form.

Server to worker: RunJob, CheckState, CancelJob, ReleaseSlot, StopWorker.
Worker to server: WorkerReady or BootFailed once, then per job JobStarted, StepDone...,
FramesReady... and JobDone or JobFailed; per state check StateChecked or JobFailed.

Every FramesReady holds a slot until the server answers with ReleaseSlot, whatever became of its job:
a slot never handed back would leave the worker waiting for room forever.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from gpu.audio import AudioFormat
from gpu.generator import ContinuationState, SegmentRequest

__all__ = [
    "BootFailed",
    "CancelJob",
    "CheckState",
    "FailureKind",
    "FramesReady",
    "JobDone",
    "JobFailed",
    "JobStarted",
    "ReleaseSlot",
    "RunJob",
    "ServerMessage",
    "StateChecked",
    "StepDone",
    "StopWorker",
    "WorkerMessage",
    "WorkerReady",
    "state_from_wire",
]


def state_from_wire(wire: dict[str, Any]) -> ContinuationState:
    """A ContinuationState from its ``{kind, payload}`` form."""
    return ContinuationState(kind=wire["kind"], payload=wire["payload"])


# Server to worker.


@dataclass(frozen=True, slots=True)
class RunJob:
    """Generate one segment."""

    job_id: int
    request: SegmentRequest


@dataclass(frozen=True, slots=True)
class CheckState:
    """Check whether the generator can continue from a state (no generation)."""

    job_id: int
    continuation: dict[str, Any]

    @property
    def state(self) -> ContinuationState:
        return state_from_wire(self.continuation)


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Nobody waits for this job any more: stop it at its next step or chunk, or never start it."""

    job_id: int


@dataclass(frozen=True, slots=True)
class ReleaseSlot:
    """The server has copied the frames out of this slot; the worker may fill it again."""

    slot: int


@dataclass(frozen=True, slots=True)
class StopWorker:
    """Stop the running job, if any, and exit."""


ServerMessage = RunJob | CheckState | CancelJob | ReleaseSlot | StopWorker


# Worker to server.


@dataclass(frozen=True, slots=True)
class WorkerReady:
    """The generator is built and warmed up."""

    pid: int
    boot_ms: float
    warmup_ms: float | None
    audio_format: AudioFormat | None = None


@dataclass(frozen=True, slots=True)
class BootFailed:
    """The generator could not be built or warmed up; the worker exits."""

    error: str
    trace: str


@dataclass(frozen=True, slots=True)
class JobStarted:
    """The worker began generating this job's segment."""

    job_id: int


@dataclass(frozen=True, slots=True)
class StepDone:
    """One denoising step of the job is done (1-based)."""

    job_id: int
    step: int
    total: int


@dataclass(frozen=True, slots=True)
class FramesReady:
    """The next chunk of the job's frames, ``shape`` uint8, lies in ``slot``, with its audio
    (``audio_shape`` float32) after them when the backend has sound."""

    job_id: int
    slot: int
    shape: tuple[int, ...]
    audio_shape: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class JobDone:
    """The job's segment is complete; every frame went out in FramesReady before this."""

    job_id: int
    continuation: dict[str, Any]
    generation_ms: float

    @property
    def state(self) -> ContinuationState:
        return state_from_wire(self.continuation)


class FailureKind(enum.Enum):
    """Why a job ended without a result."""

    INCOMPATIBLE_STATE = "incompatible_state"
    GENERATOR_ERROR = "generator_error"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class JobFailed:
    """The job ended without a result."""

    job_id: int
    kind: FailureKind
    error: str


@dataclass(frozen=True, slots=True)
class StateChecked:
    """The checked state can be continued from."""

    job_id: int


WorkerMessage = WorkerReady | BootFailed | JobStarted | StepDone | FramesReady | JobDone | JobFailed | StateChecked
