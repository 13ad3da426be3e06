"""The worker process of SubprocessGpuPool: one generator, one GPU, jobs over a pipe.

The messages are the dataclasses of gpu/ipc.py. A job's frames go out chunk by chunk, as the backend
hands them over, each through a free shared-memory slot. Inside a job's step and frame callbacks the
worker reads its pipe without blocking, so a CancelJob (or StopWorker) stops the backend at its next
step or chunk with SegmentCancelled. Nothing here may import torch before CUDA_VISIBLE_DEVICES is set.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
import traceback
from collections import deque
from dataclasses import replace
from multiprocessing.connection import Connection

import numpy as np

from gpu.factory import build_generator
from gpu.frame_slots import FrameSlots
from gpu.generator import (
    Generator,
    IncompatibleStateError,
    SegmentCancelled,
    SegmentRequest,
    generate_streaming,
)
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
    ServerMessage,
    StateChecked,
    StepDone,
    StopWorker,
    WorkerMessage,
    WorkerReady,
)

__all__ = ["WorkerLoop", "worker_main"]

_PR_SET_PDEATHSIG = 1  # prctl option: signal this process when its parent dies


def _die_with_parent() -> None:
    # Linux only: if the server is SIGKILLed, the kernel kills its workers too, so no GPU
    # process is ever orphaned. Elsewhere the closed pipe ends the worker instead.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class WorkerLoop:
    """A worker's side of the pipe: boots the generator, then serves jobs one at a time.

    Messages that arrive during a job are taken in at its next step or chunk: slot releases and
    cancellations at once, anything else waits in a backlog for the job to end.
    """

    def __init__(self, conn: Connection, slots: FrameSlots) -> None:
        self._conn = conn
        self._slots = slots
        self._free = set(range(slots.count))
        self._backlog: deque[ServerMessage] = deque()
        self._generator: Generator | None = None
        self._current: int | None = None  # the job being generated
        self._cancelled = False  # the current job was cancelled (or the worker told to stop)

    def _send(self, message: WorkerMessage) -> None:
        self._conn.send(message)

    def boot(self, backend: str, options: dict[str, object], warmup_request: SegmentRequest | None) -> None:
        """Build the generator, warm it up (two segments, the second continuing the first), report ready."""
        started = time.perf_counter()
        self._generator = build_generator(backend, options)
        warmup_ms = None
        if warmup_request is not None:
            # Both code paths (fresh and continued) get compiled and cached before the first session.
            warm_started = time.perf_counter()
            first = self._generator.generate(warmup_request)
            second = replace(warmup_request, segment_idx=warmup_request.segment_idx + 1, continuation=first.continuation)
            self._generator.generate(second)
            warmup_ms = (time.perf_counter() - warm_started) * 1000.0
        self._send(
            WorkerReady(
                pid=os.getpid(),
                boot_ms=(time.perf_counter() - started) * 1000.0,
                warmup_ms=warmup_ms,
                audio_format=self._generator.audio_format,
            )
        )

    def serve(self) -> None:
        """Handle messages until told to stop (or the pipe closes: EOFError)."""
        while True:
            message = self._backlog.popleft() if self._backlog else self._conn.recv()
            match message:
                case StopWorker():
                    return
                case ReleaseSlot(slot=slot):
                    self._free.add(slot)
                case RunJob():
                    self._run_job(message)
                case CheckState():
                    self._check_state(message)
                case CancelJob():
                    pass  # a job that already ended: its result went out, the server drops it

    # Messages that arrive while a job runs.

    def _absorb(self, message: ServerMessage) -> None:
        match message:
            case ReleaseSlot(slot=slot):
                self._free.add(slot)
            case CancelJob(job_id=job_id) if job_id == self._current:
                self._cancelled = True
            case CancelJob(job_id=job_id):
                self._drop_queued(job_id)
            case StopWorker():
                self._cancelled = True
                self._backlog.appendleft(message)
            case _:
                self._backlog.append(message)

    def _drop_queued(self, job_id: int) -> None:
        for queued in self._backlog:
            if isinstance(queued, RunJob) and queued.job_id == job_id:
                self._backlog.remove(queued)
                self._send(JobFailed(job_id, FailureKind.CANCELLED, "cancelled before it started"))
                return

    def _poll(self) -> None:
        """Take in whatever the server has sent, without waiting; SegmentCancelled if the job is off."""
        while self._conn.poll(0):
            self._absorb(self._conn.recv())
        if self._cancelled:
            raise SegmentCancelled(f"job {self._current} cancelled")

    def _take_slot(self) -> int:
        while not self._free:
            self._poll()
            if not self._free:
                self._absorb(self._conn.recv())  # blocks until the server hands a slot back
        return self._free.pop()

    # Jobs.

    def _run_job(self, message: RunJob) -> None:
        assert self._generator is not None
        job_id = message.job_id
        self._current, self._cancelled = job_id, False
        self._send(JobStarted(job_id))
        started = time.perf_counter()

        def on_step(step: int, total: int) -> None:
            self._poll()
            self._send(StepDone(job_id, step, total))

        def on_frames(chunk: np.ndarray, audio: np.ndarray | None) -> None:
            self._poll()
            slot = self._take_slot()
            try:
                ref = self._slots.write(slot, chunk, audio)
            except ValueError:
                self._free.add(slot)
                raise
            self._send(FramesReady(job_id, ref.index, ref.shape, ref.audio_shape))

        try:
            result = generate_streaming(self._generator, message.request, on_step, on_frames)
        except SegmentCancelled:
            self._send(JobFailed(job_id, FailureKind.CANCELLED, "cancelled"))
            return
        except IncompatibleStateError as exc:
            self._send(JobFailed(job_id, FailureKind.INCOMPATIBLE_STATE, str(exc)))
            return
        except Exception as exc:  # noqa: BLE001  (reported to the server, which raises GeneratorError)
            self._send(JobFailed(job_id, FailureKind.GENERATOR_ERROR, f"{type(exc).__name__}: {exc}"))
            return
        finally:
            self._current = None
        generation_ms = (time.perf_counter() - started) * 1000.0
        self._send(JobDone(job_id, result.continuation.to_wire(), generation_ms))

    def _check_state(self, message: CheckState) -> None:
        assert self._generator is not None
        try:
            self._generator.check_state(message.state)
        except IncompatibleStateError as exc:
            self._send(JobFailed(message.job_id, FailureKind.INCOMPATIBLE_STATE, str(exc)))
            return
        except Exception as exc:  # noqa: BLE001  (reported to the server, as above)
            self._send(JobFailed(message.job_id, FailureKind.GENERATOR_ERROR, f"{type(exc).__name__}: {exc}"))
            return
        self._send(StateChecked(message.job_id))


def worker_main(
    conn: Connection,
    *,
    gpu_id: int,
    backend: str,
    options: dict[str, object],
    warmup_request: SegmentRequest | None,
    slot_names: list[str],
) -> None:
    """Entry point of a worker process (started with the ``spawn`` method)."""
    # Before anything can import torch: this worker sees exactly one GPU, as device 0.
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_id)
    _die_with_parent()
    # The server handles SIGINT for the whole process group; a worker stops when told to.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    slots = FrameSlots.attach(slot_names)
    worker = WorkerLoop(conn, slots)
    try:
        try:
            worker.boot(backend, options, warmup_request)
        except Exception as exc:  # noqa: BLE001  (any boot failure is reported, then the worker exits)
            conn.send(BootFailed(error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc()))
            return
        worker.serve()
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the server went away or asked us to stop
    finally:
        slots.close()
        with contextlib.suppress(OSError):
            conn.close()
