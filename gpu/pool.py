"""GPU pools: where sessions get a worker and segments get generated, off the event loop.

Exceptions::

    PoolError (RuntimeError)
    ├── PoolUnavailableError   not started, shut down, or no ready worker
    │   └── PoolAcquireTimeout no worker had room for the session within acquire's timeout
    ├── WorkerFailedError      a worker died or hung mid-segment (retryable elsewhere)
    └── SessionNotBoundError   run() for a session that has not acquired a worker

Generator failures surface as ``gpu.generator.GeneratorError``; an abandoned segment as
``gpu.generator.SegmentCancelled``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from gpu.audio import AudioFormat
from gpu.generator import (
    ContinuationState,
    FrameCallback,
    Generator,
    GeneratorError,
    SegmentCancelled,
    SegmentRequest,
    SegmentResult,
    StepCallback,
    empty_frames,
    generate_streaming,
)
from gpu.job_relay import JobRelay
from gpu.pool_status import PoolStatus, WorkerStatus
from gpu.worker_state import WorkerState, advance

__all__ = [
    "DEFAULT_WARMUP_REQUEST",
    "GpuPool",
    "InProcessGpuPool",
    "PoolAcquireTimeout",
    "PoolAssignment",
    "PoolError",
    "PoolUnavailableError",
    "SessionNotBoundError",
    "WorkerFailedError",
]

logger = logging.getLogger(__name__)

DEFAULT_WARMUP_REQUEST = SegmentRequest(
    prompt="warm-up", width=64, height=64, num_frames=2, num_inference_steps=1, seed=0
)


class PoolError(RuntimeError):
    """A pool could not serve a request."""


class PoolUnavailableError(PoolError):
    """The pool is not started, is shut down, or has no ready worker."""


class PoolAcquireTimeout(PoolUnavailableError):
    """``acquire`` waited its whole timeout and no worker had room (the original's PoolAcquireTimeout)."""


class WorkerFailedError(PoolError):
    """The worker died or hung mid-segment; the segment can be retried on another worker."""


class SessionNotBoundError(PoolError):
    """The session has not acquired a worker (or has released it)."""


@dataclass(frozen=True)
class PoolAssignment:
    """The worker a session is bound to."""

    gpu_id: int
    worker_id: str


@runtime_checkable
class GpuPool(Protocol):
    """Workers that generate segments for sessions; every blocking step runs off the event loop."""

    async def start(self) -> None:
        """Build and warm up the workers; afterwards ``ready`` is True or the failure is recorded."""

    @property
    def ready(self) -> bool: ...

    @property
    def audio_format(self) -> AudioFormat | None:
        """The format of the audio segments come with (None: video only); known once ``start`` returned."""

    async def acquire(self, session_id: str, *, timeout: float | None = None) -> PoolAssignment:
        """Bind ``session_id`` to a worker (the same one again if it is already bound), waiting at most
        ``timeout`` seconds (None: as long as it takes) for one with room; PoolAcquireTimeout after that."""

    async def run(
        self,
        session_id: str,
        request: SegmentRequest,
        on_step: StepCallback | None = None,
        on_frames: FrameCallback | None = None,
    ) -> SegmentResult:
        """Generate one segment for a bound session; callbacks run on the event loop thread.

        With ``on_frames``, the frames (and their audio) go through it in order as the backend makes
        them, all before ``run`` returns, and the result's ``frames`` is empty ``(0, H, W, 3)`` and
        its ``audio`` None; without it the result holds every frame and all the audio. Cancelling
        the caller abandons the job: no callback runs after that, and the backend stops at its next
        step or chunk. A callback raising SegmentCancelled (or
        ``on_frames`` raising anything) abandons it too, and ``run`` raises that exception.
        """

    async def release(self, session_id: str) -> None:
        """Unbind ``session_id``; releasing an unbound session does nothing."""

    async def check_state(self, state: ContinuationState) -> None:
        """Raise IncompatibleStateError if the pool's generator cannot continue from ``state``."""

    async def shutdown(self) -> None:
        """Stop every worker; idempotent and safe when callers race."""

    def status(self) -> PoolStatus:
        """A snapshot for ``/status``, ``/readyz`` and the metrics."""


@dataclass
class _Ticket:
    """One run's place in the in-process queue; changed only under the pool's counts lock."""

    started: bool = False
    dropped: bool = False


class InProcessGpuPool:
    """One generator inside the server process; segments run in a thread pool the pool owns."""

    def __init__(
        self,
        generator_factory: Callable[[], Generator],
        *,
        gpu_id: int = 0,
        max_parallel: int = 1,
        warmup: bool = True,
        warmup_request: SegmentRequest | None = None,
    ) -> None:
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, got {max_parallel}")
        self._factory = generator_factory
        self._gpu_id = gpu_id
        self._worker_id = f"inproc-{gpu_id}"
        self._max_parallel = max_parallel
        self._warmup = warmup
        self._warmup_request = warmup_request or DEFAULT_WARMUP_REQUEST
        self._state = WorkerState.NEW
        self._generator: Generator | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._shutdown_task: asyncio.Task[None] | None = None
        self._sessions: set[str] = set()
        self._segments_done = 0
        self._running = 0
        self._queued = 0
        self._counts_lock = threading.Lock()  # queue/running counts change in executor threads
        self._last_error: str | None = None
        self._warmup_ms: float | None = None
        self._boot_ms: float | None = None
        self._warmup_ok = False
        self._start_failed = False

    @property
    def ready(self) -> bool:
        return self._state is WorkerState.READY

    @property
    def audio_format(self) -> AudioFormat | None:
        return self._generator.audio_format if self._generator is not None else None

    async def start(self) -> None:
        """Build the generator and warm it up; a failure is logged and recorded, not raised."""
        if self._state in (WorkerState.STOPPING, WorkerState.STOPPED):
            raise PoolUnavailableError(f"pool {self._worker_id} cannot start: it is {self._state.value}")
        if self._start_task is None:
            self._state = advance(self._state, WorkerState.BOOTING)
            self._start_task = asyncio.create_task(self._start())
        await asyncio.shield(self._start_task)

    async def _start(self) -> None:
        started = time.perf_counter()
        self._executor = ThreadPoolExecutor(
            max_workers=self._max_parallel, thread_name_prefix=f"gpu-{self._worker_id}"
        )
        try:
            self._generator = await asyncio.to_thread(self._factory)
        except Exception as exc:  # noqa: BLE001  (a boot failure of any kind is recorded, never raised)
            self._fail("build", exc)
            return
        if self._warmup:
            try:
                await self._run_warmup(self._generator)
            except Exception as exc:  # noqa: BLE001  (recorded like a build failure)
                self._fail("warm-up", exc)
                return
            self._warmup_ok = True
        if self._state is WorkerState.BOOTING:
            self._boot_ms = (time.perf_counter() - started) * 1000.0
            self._state = advance(self._state, WorkerState.READY)
            logger.info("gpu %s: ready (warm-up %s ms)", self._worker_id, self._warmup_ms)

    async def _run_warmup(self, generator: Generator) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        first = await loop.run_in_executor(self._executor, generator.generate, self._warmup_request)
        follow_up = replace(
            self._warmup_request,
            segment_idx=self._warmup_request.segment_idx + 1,
            continuation=first.continuation,
        )
        await loop.run_in_executor(self._executor, generator.generate, follow_up)
        self._warmup_ms = (time.perf_counter() - started) * 1000.0

    def _fail(self, stage: str, exc: BaseException) -> None:
        self._last_error = f"{stage} failed: {type(exc).__name__}: {exc}"
        self._start_failed = True
        logger.error("gpu %s: %s failed", self._worker_id, stage, exc_info=exc)
        if self._state is WorkerState.BOOTING:
            self._state = advance(self._state, WorkerState.FAILED)

    async def acquire(self, session_id: str, *, timeout: float | None = None) -> PoolAssignment:
        """Bind ``session_id`` to the single in-process worker; it takes every session at once, so
        ``timeout`` (the GpuPool signature) is never reached."""
        self._require_ready()
        self._sessions.add(session_id)
        return PoolAssignment(gpu_id=self._gpu_id, worker_id=self._worker_id)

    async def run(
        self,
        session_id: str,
        request: SegmentRequest,
        on_step: StepCallback | None = None,
        on_frames: FrameCallback | None = None,
    ) -> SegmentResult:
        """Generate a segment in the pool's threads; callbacks run on the event loop thread.

        See GpuPool.run: with ``on_frames`` the result's frames are empty; cancelling the caller
        stops the backend at its next step or chunk (it gets SegmentCancelled in its thread).
        """
        generator, executor = self._require_ready()
        if session_id not in self._sessions:
            raise SessionNotBoundError(f"session {session_id!r} is not bound to pool {self._worker_id}")
        loop = asyncio.get_running_loop()
        relay = JobRelay(
            loop,
            label=f"session {session_id}",
            on_step=on_step,
            on_frames=on_frames,
            owner=asyncio.current_task(),
        )
        ticket = _Ticket()
        with self._counts_lock:
            self._queued += 1
        try:
            # The relay's callbacks were queued on the loop before the thread returned, and the loop
            # runs them in order, so every chunk has been delivered by the time this await resumes.
            result = await loop.run_in_executor(executor, self._generate, generator, request, relay, ticket)
        except asyncio.CancelledError:
            relay.abandon()
            self._drop_if_queued(ticket)
            raise
        except (PoolError, SegmentCancelled):
            relay.raise_failure()
            raise
        except GeneratorError as exc:
            relay.raise_failure()
            self._last_error = f"{type(exc).__name__}: {exc}"
            raise
        except Exception as exc:
            relay.raise_failure()
            self._last_error = f"{type(exc).__name__}: {exc}"
            raise GeneratorError(f"generator failed: {type(exc).__name__}: {exc}") from exc
        relay.raise_failure()
        self._segments_done += 1
        if relay.streams_frames:
            return SegmentResult(frames=empty_frames(request), continuation=result.continuation)
        return result

    def _drop_if_queued(self, ticket: _Ticket) -> None:
        # Cancelling the await also cancels a job the executor has not started, so it never runs
        # to take itself off the queue count.
        with self._counts_lock:
            if not ticket.started and not ticket.dropped:
                ticket.dropped = True
                self._queued -= 1

    def _generate(
        self, generator: Generator, request: SegmentRequest, relay: JobRelay, ticket: _Ticket
    ) -> SegmentResult:
        # Runs in an executor thread.
        with self._counts_lock:
            if ticket.dropped:  # its caller left while it queued: leave the thread to the next one
                raise SegmentCancelled(f"pool {self._worker_id}: segment abandoned before it started")
            ticket.started = True
            self._queued -= 1
            if self._state is not WorkerState.READY:  # queued behind a shutdown: drain without generating
                raise PoolUnavailableError(f"pool {self._worker_id} shut down before this segment started")
            self._running += 1
        try:
            return generate_streaming(generator, request, relay.step_from_thread, relay.frames_from_thread)
        finally:
            with self._counts_lock:
                self._running -= 1

    def _require_ready(self) -> tuple[Generator, ThreadPoolExecutor]:
        if self._state is not WorkerState.READY or self._generator is None or self._executor is None:
            raise PoolUnavailableError(f"pool {self._worker_id} is {self._state.value}, not ready")
        return self._generator, self._executor

    async def check_state(self, state: ContinuationState) -> None:
        """Validate a continuation state against the generator (off the loop: payloads can be large)."""
        generator, executor = self._require_ready()
        await asyncio.get_running_loop().run_in_executor(executor, generator.check_state, state)

    async def release(self, session_id: str) -> None:
        """Unbind ``session_id``; idempotent."""
        self._sessions.discard(session_id)

    async def shutdown(self) -> None:
        """Wait for running segments, stop the threads and close the generator; idempotent."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.create_task(self._shutdown())
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self) -> None:
        previous, self._state = self._state, advance(self._state, WorkerState.STOPPING)
        if self._start_task is not None:
            await asyncio.shield(self._start_task)  # building cannot be interrupted; let it finish
        self._sessions.clear()
        executor, self._executor = self._executor, None
        generator, self._generator = self._generator, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)
        if generator is not None:
            try:
                await asyncio.to_thread(generator.close)
            except Exception:  # closing is best effort; the pool is gone either way
                logger.exception("gpu %s: generator close failed", self._worker_id)
        self._state = advance(self._state, WorkerState.STOPPED)
        logger.info("gpu %s: shut down (was %s)", self._worker_id, previous.value)

    def status(self) -> PoolStatus:
        """Counts for ``/status``; a build failure counts as a failed warm-up (the worker never got ready).

        ``queue_size`` is 0: ``acquire`` binds every session at once, so none waits here (the
        server's admission queue adds its own); ``queued_segments`` counts runs waiting for a thread.
        """
        generator = self._generator
        worker = WorkerStatus(
            gpu_id=self._gpu_id,
            state=self._state,
            ready=self.ready,
            alive=generator is not None,
            pid=None,
            sessions=len(self._sessions),
            running=self._running,
            segments_done=self._segments_done,
            last_error=self._last_error,
            warmup_ms=self._warmup_ms,
            boot_ms=self._boot_ms,
            restarts=0,
            warmup_enabled=self._warmup,
            warmup_success=self._warmup_ok,
            warmup_error=self._last_error if self._start_failed else None,
            current_model_id=generator.name if generator is not None and self.ready else None,
        )
        return PoolStatus(
            total_gpus=1,
            available_gpus=1 if worker.available else 0,
            queue_size=0,
            queued_segments=max(self._queued, 0),
            warmup_enabled=self._warmup,
            warmup_successful_gpus=1 if worker.warmup_success else 0,
            warmup_failed_gpus=1 if worker.warmup_error is not None else 0,
            gpu_status={self._worker_id: worker},
        )
