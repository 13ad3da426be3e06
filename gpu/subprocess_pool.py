"""SubprocessGpuPool: one worker process per GPU, so a crashed or hung model never takes the server down.

Each worker builds its generator after CUDA_VISIBLE_DEVICES is set, warms up
(two segments, the second continuing the first) and reports ready. The pipes carry
the small messages of gpu/ipc.py; frames come back chunk by chunk through
shared-memory slots, which the reader thread copies out and hands back at once,
whatever became of the job. A worker that dies or overruns the segment deadline
is killed, its jobs fail with WorkerFailedError (the sessions retry elsewhere from
their stored state), and it is restarted in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing as mp
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from gpu.audio import AudioFormat, samples_for_frames
from gpu.frame_slots import FrameSlots, SlotRef
from gpu.generator import (
    ContinuationState,
    FrameCallback,
    GeneratorError,
    IncompatibleStateError,
    SegmentCancelled,
    SegmentRequest,
    SegmentResult,
    StepCallback,
    empty_frames,
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
from gpu.job_relay import JobRelay
from gpu.pool import (
    DEFAULT_WARMUP_REQUEST,
    PoolAcquireTimeout,
    PoolAssignment,
    PoolUnavailableError,
    SessionNotBoundError,
    WorkerFailedError,
)
from gpu.pool_status import PoolStatus, WorkerStatus
from gpu.worker import worker_main
from gpu.worker_state import CrashReason, WorkerState, advance

__all__ = ["AUDIO_SLOT_FORMAT", "SLOTS_PER_WORKER", "SubprocessGpuPool", "WorkerSettings", "audio_slot_bytes"]

logger = logging.getLogger(__name__)

# Frame slots per worker, each big enough for a whole segment: with several, a backend that hands
# frames over one at a time is not held up by the round trip of each slot.
SLOTS_PER_WORKER = 4
STOP_GRACE_S = 5.0  # a worker asked to stop is killed after this long
_STOP = object()  # tells a writer thread to end


AUDIO_SLOT_FORMAT = AudioFormat(sample_rate=48_000, channels=2)  # the most sound a slot makes room for
_PCM_BYTES = 4  # float32


def audio_slot_bytes(num_frames: int, fps: int, audio_format: AudioFormat = AUDIO_SLOT_FORMAT) -> int:
    """Bytes of float32 PCM that ``num_frames`` frames at ``fps`` own in ``audio_format``."""
    return samples_for_frames(0, num_frames, fps, audio_format.sample_rate) * audio_format.channels * _PCM_BYTES


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """How workers are built and supervised."""

    backend: str
    options: Mapping[str, Any] = field(default_factory=dict)
    per_worker_options: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    num_workers: int = 1
    gpu_ids: tuple[int, ...] | None = None
    sessions_per_worker: int = 1
    max_frame_bytes: int = 512 * 512 * 3 * 24  # one whole segment: the size of each frame slot
    # Added to each slot for the segment's audio (audio_slot_bytes); a backend whose sound needs more
    # gets a GeneratorError naming this allowance.
    max_audio_bytes: int = 384_000  # one second of 48 kHz stereo float32
    warmup: bool = True
    warmup_request: SegmentRequest = DEFAULT_WARMUP_REQUEST
    boot_timeout_s: float = 300.0
    segment_timeout_s: float = 120.0
    restart_delay_s: float = 1.0


@dataclass(eq=False)
class _Job:
    """What the server keeps for a job someone awaits; a state check has no relay."""

    id: int
    future: asyncio.Future[Any]
    relay: JobRelay | None = None
    request: SegmentRequest | None = None
    chunks: list[np.ndarray] = field(default_factory=list)  # frames kept for the result (no on_frames)
    audio_chunks: list[np.ndarray] = field(default_factory=list)  # their audio
    started: bool = False


def _join(chunks: list[np.ndarray]) -> np.ndarray:
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def _join_result(frames: list[np.ndarray], audio: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    return _join(frames), (_join(audio) if audio else None)


class _Worker:
    """The server's handle on one worker process and the threads that talk to it."""

    def __init__(self, index: int, gpu_id: int) -> None:
        self.index = index
        self.gpu_id = gpu_id
        self.worker_id = f"gpu-{index}"
        self.process: Any = None
        self.conn: Connection | None = None
        self.slots: FrameSlots | None = None
        self.outbox: queue.SimpleQueue[ServerMessage | object] = queue.SimpleQueue()
        self.state = WorkerState.NEW
        self.booted: asyncio.Future[None] | None = None
        self.sessions: set[str] = set()
        self.jobs: dict[int, _Job] = {}  # jobs someone awaits, by id
        # The job the process is generating, awaited or abandoned: the deadline watches it either way.
        self.running_job: int | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.crash: CrashReason | None = None  # set before the pool kills the process itself
        self.segments_done = 0
        self.last_error: str | None = None
        self.warmup_ms: float | None = None
        self.boot_ms: float | None = None
        self.restarts = 0
        self.threads: list[threading.Thread] = []
        # A restart cancelled at shutdown leaves its reaping thread running while the shutdown
        # reaps too: they take turns.
        self.reap_lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.state is WorkerState.READY

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def send(self, message: ServerMessage) -> None:
        """Queue ``message`` for the writer thread (sends can block while the worker is busy)."""
        self.outbox.put(message)


class SubprocessGpuPool:
    """Worker processes behind the GpuPool interface; sessions stick to a worker across segments."""

    def __init__(self, settings: WorkerSettings) -> None:
        if settings.num_workers < 1 or settings.sessions_per_worker < 1:
            raise ValueError("num_workers and sessions_per_worker must be at least 1")
        gpu_ids = settings.gpu_ids or tuple(range(settings.num_workers))
        if len(gpu_ids) != settings.num_workers:
            raise ValueError(f"gpu_ids {gpu_ids} does not list {settings.num_workers} workers")
        self._settings = settings
        self._context = mp.get_context("spawn")
        self._workers = [_Worker(index, gpu_id) for index, gpu_id in enumerate(gpu_ids)]
        self._bindings: dict[str, _Worker] = {}
        self._job_ids = itertools.count(1)
        self._waiters: list[asyncio.Future[None]] = []  # acquire() calls waiting for room
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._shutdown_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[None]] = set()  # restarts and reaps, awaited at shutdown
        self._audio_format: AudioFormat | None = None  # what the first ready worker reported

    # -- lifecycle --------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._shutdown_task is None and any(worker.ready for worker in self._workers)

    @property
    def audio_format(self) -> AudioFormat | None:
        return self._audio_format

    @property
    def capacity(self) -> int:
        """Sessions the pool can hold at once when every worker is up."""
        return self._settings.num_workers * self._settings.sessions_per_worker

    async def start(self) -> None:
        """Start every worker and wait until each is ready or has failed; idempotent."""
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        for worker in self._workers:
            await self._spawn(worker)
        for worker in self._workers:
            await self._await_boot(worker)

    async def _spawn(self, worker: _Worker) -> None:
        settings = self._settings
        options = {**settings.options, **settings.per_worker_options.get(worker.index, {})}
        worker.state = advance(worker.state, WorkerState.BOOTING)
        worker.crash = None
        worker.running_job = None
        slots = FrameSlots.create(count=SLOTS_PER_WORKER, slot_bytes=settings.max_frame_bytes + settings.max_audio_bytes)
        worker.slots = slots
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        worker.process = self._context.Process(
            target=worker_main,
            kwargs={
                "conn": child_conn,
                "gpu_id": worker.gpu_id,
                "backend": settings.backend,
                "options": options,
                "warmup_request": settings.warmup_request if settings.warmup else None,
                "slot_names": slots.names,
            },
            name=f"rtc-{worker.worker_id}",
            daemon=True,
        )
        worker.conn = parent_conn
        outbox: queue.SimpleQueue[ServerMessage | object] = queue.SimpleQueue()
        worker.outbox = outbox
        assert self._loop is not None
        worker.booted = self._loop.create_future()
        await asyncio.to_thread(worker.process.start)
        child_conn.close()
        reader = threading.Thread(
            target=self._read_loop, args=(worker, parent_conn, slots, outbox), daemon=True, name=f"{worker.worker_id}-reader"
        )
        writer = threading.Thread(
            target=self._write_loop, args=(parent_conn, outbox), daemon=True, name=f"{worker.worker_id}-writer"
        )
        worker.threads = [reader, writer]
        reader.start()
        writer.start()
        logger.info("pool: %s starting on GPU %d (pid %s)", worker.worker_id, worker.gpu_id, worker.process.pid)

    async def _await_boot(self, worker: _Worker) -> None:
        assert worker.booted is not None
        try:
            await asyncio.wait_for(asyncio.shield(worker.booted), self._settings.boot_timeout_s)
        except TimeoutError:
            if worker.state is not WorkerState.BOOTING:
                return
            self._mark_failed(worker, CrashReason.BOOT_TIMEOUT, f"{self._settings.boot_timeout_s:g} s")
            await asyncio.to_thread(self._kill, worker)

    # -- threads talking to one worker -----------------------------------

    def _write_loop(self, conn: Connection, outbox: queue.SimpleQueue[ServerMessage | object]) -> None:
        while True:
            message = outbox.get()
            if message is _STOP:
                return
            try:
                conn.send(message)
            except (OSError, ValueError):
                return

    def _read_loop(
        self,
        worker: _Worker,
        conn: Connection,
        slots: FrameSlots,
        outbox: queue.SimpleQueue[ServerMessage | object],
    ) -> None:
        loop = self._loop
        assert loop is not None
        try:
            while True:
                message: WorkerMessage = conn.recv()
                if isinstance(message, FramesReady):
                    # Copied out and handed back here, before the loop even learns of it: the slot
                    # returns to the worker whether or not anyone still wants the job's frames.
                    frames, audio = slots.read(SlotRef(message.slot, message.shape, message.audio_shape))
                    outbox.put(ReleaseSlot(message.slot))
                    self._post(loop, self._on_frames, worker, message.job_id, frames, audio)
                else:
                    self._post(loop, self._on_message, worker, message)
        except (EOFError, OSError, ValueError):  # the pipe closed, or the slots with it
            pass
        except Exception:  # top of the thread: a reader gone quiet would wedge the worker
            logger.exception("pool: %s reader failed; treating the worker as lost", worker.worker_id)
        self._post(loop, self._on_lost, worker, conn)

    @staticmethod
    def _post(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop may be closed at exit
            loop.call_soon_threadsafe(callback, *args)

    # -- messages from a worker (on the event loop) ------------------------

    def _on_message(self, worker: _Worker, message: WorkerMessage) -> None:
        match message:
            case WorkerReady():
                self._on_ready(worker, message)
            case BootFailed(error=error, trace=trace):
                if worker.state is WorkerState.BOOTING:
                    self._mark_failed(worker, CrashReason.BOOT_FAILED, error)
                    logger.error("pool: %s failed to boot: %s", worker.worker_id, trace or error)
                self._resolve_boot(worker)
            case JobStarted(job_id=job_id):
                self._on_started(worker, job_id)
            case StepDone(job_id=job_id, step=step, total=total):
                job = worker.jobs.get(job_id)
                if job is not None and job.relay is not None:
                    job.relay.step(step, total)
            case JobDone():
                self._on_done(worker, message)
            case JobFailed():
                self._on_failed(worker, message)
            case StateChecked(job_id=job_id):
                job = worker.jobs.get(job_id)
                if job is not None and not job.future.done():
                    job.future.set_result(None)
            case _:
                logger.error("pool: %s sent an unknown message %r", worker.worker_id, message)

    def _on_ready(self, worker: _Worker, message: WorkerReady) -> None:
        if worker.state is not WorkerState.BOOTING:
            logger.warning("pool: %s reported ready while %s; ignored", worker.worker_id, worker.state.value)
            return
        worker.state = advance(worker.state, WorkerState.READY)
        worker.warmup_ms = message.warmup_ms
        worker.boot_ms = message.boot_ms
        if self._audio_format is None:
            self._audio_format = message.audio_format
        elif message.audio_format != self._audio_format:
            # Workers are built from one config; a per-worker option that changes the sound would
            # change a stream's format mid-session.
            logger.error("pool: %s makes %s audio, the pool %s", worker.worker_id, message.audio_format, self._audio_format)
        logger.info("pool: %s ready (boot %.0f ms, warm-up %s ms)", worker.worker_id, message.boot_ms, message.warmup_ms)
        self._resolve_boot(worker)
        self._notify()

    def _on_started(self, worker: _Worker, job_id: int) -> None:
        assert self._loop is not None
        self._job_ended(worker)
        worker.running_job = job_id
        worker.deadline = self._loop.call_later(self._settings.segment_timeout_s, self._on_deadline, worker, job_id)
        job = worker.jobs.get(job_id)
        if job is not None:
            job.started = True

    def _on_frames(self, worker: _Worker, job_id: int, frames: np.ndarray, audio: np.ndarray | None) -> None:
        job = worker.jobs.get(job_id)
        if job is None or job.relay is None:
            return  # abandoned: its slot is already back with the worker
        if job.relay.streams_frames:
            job.relay.frames(frames, audio)
        else:
            job.chunks.append(frames)
            if audio is not None:
                job.audio_chunks.append(audio)

    def _on_done(self, worker: _Worker, message: JobDone) -> None:
        if worker.running_job == message.job_id:
            self._job_ended(worker)
        job = worker.jobs.get(message.job_id)
        if job is None or job.future.done() or job.request is None or job.relay is None:
            return
        worker.segments_done += 1
        logger.debug("pool: %s job %d done in %.0f ms", worker.worker_id, message.job_id, message.generation_ms)
        # The frames (kept in job.chunks unless they went to on_frames) are joined by run(), off the loop.
        job.future.set_result(SegmentResult(empty_frames(job.request), message.state))

    def _on_failed(self, worker: _Worker, message: JobFailed) -> None:
        if worker.running_job == message.job_id:
            self._job_ended(worker)
        job = worker.jobs.get(message.job_id)
        if job is None or job.future.done():
            return
        exc: Exception
        if message.kind is FailureKind.INCOMPATIBLE_STATE:
            exc = IncompatibleStateError(message.error)
        elif message.kind is FailureKind.CANCELLED:
            exc = SegmentCancelled(f"{worker.worker_id}: {message.error}")
        else:
            worker.last_error = message.error
            exc = GeneratorError(message.error)
        job.future.set_exception(exc)

    def _job_ended(self, worker: _Worker) -> None:
        worker.running_job = None
        if worker.deadline is not None:
            worker.deadline.cancel()
            worker.deadline = None

    def _on_deadline(self, worker: _Worker, job_id: int) -> None:
        if worker.running_job != job_id:
            return
        worker.crash = CrashReason.DEADLINE_OVERRUN
        logger.error(
            "pool: %s %s (%g s); killing it", worker.worker_id, CrashReason.DEADLINE_OVERRUN.value, self._settings.segment_timeout_s
        )
        # Killing closes its pipe; the reader then reports the loss like any crash.
        self._kill(worker)

    def _on_lost(self, worker: _Worker, conn: Connection) -> None:
        if worker.conn is not conn:
            return  # a previous incarnation's pipe
        was = worker.state
        self._job_ended(worker)
        if was not in (WorkerState.BOOTING, WorkerState.READY):
            # Stopping, or a boot failure already recorded: nothing is left to recover.
            self._fail_jobs(worker, PoolUnavailableError(f"{worker.worker_id} is {was.value}"))
            return
        reason = worker.crash or CrashReason.PROCESS_DIED
        exitcode = worker.process.exitcode if worker.process is not None else None
        detail = self._describe(reason)
        logger.error("pool: %s lost (%s, exit code %s)", worker.worker_id, detail, exitcode)
        worker.last_error = f"{detail} (exit code {exitcode})"
        self._resolve_boot(worker)
        self._fail_jobs(worker, WorkerFailedError(f"{worker.worker_id} failed mid-segment: {detail}"))
        if was is WorkerState.BOOTING:
            # A worker that cannot even boot would only crash again: keep it out of service.
            self._mark_failed(worker, CrashReason.DIED_WHILE_BOOTING, f"exit code {exitcode}")
            self._own(asyncio.ensure_future(asyncio.to_thread(self._reap, worker)))
            return
        for session_id in list(worker.sessions):
            self._bindings.pop(session_id, None)
        worker.sessions.clear()
        if self._shutdown_task is not None:
            return  # the shutdown stops and reaps it
        worker.state = advance(worker.state, WorkerState.RESTARTING)
        self._own(asyncio.ensure_future(self._restart(worker)))
        self._notify()

    def _describe(self, reason: CrashReason) -> str:
        if reason is CrashReason.DEADLINE_OVERRUN:
            return f"{reason.value} ({self._settings.segment_timeout_s:g} s)"
        return reason.value

    def _fail_jobs(self, worker: _Worker, exc: Exception) -> None:
        jobs, worker.jobs = worker.jobs, {}
        for job in jobs.values():
            if not job.future.done():
                job.future.set_exception(exc)

    async def _restart(self, worker: _Worker) -> None:
        await asyncio.sleep(self._settings.restart_delay_s)
        await asyncio.to_thread(self._reap, worker)
        if self._shutdown_task is not None:
            return
        worker.restarts += 1
        logger.info("pool: restarting %s (restart %d)", worker.worker_id, worker.restarts)
        await self._spawn(worker)
        await self._await_boot(worker)

    def _own(self, task: asyncio.Future[None]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _resolve_boot(self, worker: _Worker) -> None:
        if worker.booted is not None and not worker.booted.done():
            worker.booted.set_result(None)

    def _mark_failed(self, worker: _Worker, reason: CrashReason, detail: str) -> None:
        worker.state = advance(worker.state, WorkerState.FAILED)
        worker.crash = reason
        worker.last_error = f"{reason.value}: {detail}"

    def _notify(self) -> None:
        """Wake every acquire() waiting for room; each looks again."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- GpuPool ----------------------------------------------------------

    def _pick_worker(self) -> _Worker | None:
        candidates = [w for w in self._workers if w.ready and len(w.sessions) < self._settings.sessions_per_worker]
        return min(candidates, key=lambda w: (len(w.sessions), w.index), default=None)

    async def acquire(self, session_id: str, *, timeout: float | None = None) -> PoolAssignment:
        """Bind to the least loaded ready worker, waiting for room if every worker is full (or down);
        PoolAcquireTimeout when none had room within ``timeout`` seconds (None: no limit)."""
        if self._shutdown_task is not None or self._loop is None:
            raise PoolUnavailableError("pool is not running")
        bound = self._bindings.get(session_id)
        if bound is not None:
            return PoolAssignment(gpu_id=bound.gpu_id, worker_id=bound.worker_id)
        try:
            async with asyncio.timeout(timeout):
                worker = await self._wait_for_room()
        except TimeoutError as exc:
            raise PoolAcquireTimeout(f"no GPU worker had room for this session within {timeout:g} s") from exc
        worker.sessions.add(session_id)
        self._bindings[session_id] = worker
        return PoolAssignment(gpu_id=worker.gpu_id, worker_id=worker.worker_id)

    async def _wait_for_room(self) -> _Worker:
        assert self._loop is not None
        while (worker := self._pick_worker()) is None:
            if self._shutdown_task is not None:
                raise PoolUnavailableError("pool is shutting down")
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return worker

    def binding(self, session_id: str) -> str | None:
        """The worker id a session is bound to, if any."""
        worker = self._bindings.get(session_id)
        return worker.worker_id if worker else None

    async def run(
        self,
        session_id: str,
        request: SegmentRequest,
        on_step: StepCallback | None = None,
        on_frames: FrameCallback | None = None,
    ) -> SegmentResult:
        """Generate a segment on the session's worker; WorkerFailedError if that worker dies meanwhile.

        See GpuPool.run: with ``on_frames`` the chunks arrive as the worker makes them and the
        result's frames are empty; cancelling the caller sends the worker CancelJob.
        """
        worker = self._bindings.get(session_id)
        if worker is None:
            raise SessionNotBoundError(f"session {session_id!r} is not bound to a worker")
        if not worker.ready:
            raise WorkerFailedError(f"{worker.worker_id} is {worker.state.value}")
        assert self._loop is not None
        shape_bytes = request.width * request.height * 3 * request.num_frames
        if shape_bytes > self._settings.max_frame_bytes:
            raise GeneratorError(f"a {shape_bytes} byte segment exceeds the pool's {self._settings.max_frame_bytes} byte slots")
        sound = self._audio_format
        if sound is not None:
            audio_bytes = audio_slot_bytes(request.num_frames, request.fps, sound)
            if audio_bytes > self._settings.max_audio_bytes:
                raise GeneratorError(
                    f"a segment's {audio_bytes} bytes of audio exceed the pool's {self._settings.max_audio_bytes} byte allowance"
                )
        relay = JobRelay(
            self._loop,
            label=f"session {session_id} on {worker.worker_id}",
            on_step=on_step,
            on_frames=on_frames,
            on_abandon=lambda: self._abandon(worker, job),
            owner=asyncio.current_task(),
        )
        job = _Job(next(self._job_ids), self._loop.create_future(), relay=relay, request=request)
        worker.jobs[job.id] = job
        worker.send(RunJob(job.id, request))
        try:
            result: SegmentResult = await job.future
            if job.chunks:
                frames, audio = await asyncio.to_thread(_join_result, job.chunks, job.audio_chunks)
                result = SegmentResult(frames, result.continuation, audio)
        except asyncio.CancelledError:
            relay.abandon()
            raise
        finally:
            worker.jobs.pop(job.id, None)
        return result

    def _abandon(self, worker: _Worker, job: _Job) -> None:
        """Nobody takes this job's callbacks any more: stop it on the worker, and end the wait now."""
        worker.send(CancelJob(job.id))
        if job.relay is not None and job.relay.failure is not None and not job.future.done():
            job.future.set_exception(job.relay.failure)

    async def check_state(self, state: ContinuationState) -> None:
        """Ask a ready worker's generator whether it can continue from ``state``."""
        worker = next((w for w in self._workers if w.ready), None)
        if worker is None:
            raise PoolUnavailableError("no worker is ready to check a continuation state")
        assert self._loop is not None
        job = _Job(next(self._job_ids), self._loop.create_future())
        worker.jobs[job.id] = job
        worker.send(CheckState(job.id, state.to_wire()))
        try:
            await job.future
        finally:
            worker.jobs.pop(job.id, None)

    async def release(self, session_id: str) -> None:
        """Unbind ``session_id``; idempotent."""
        worker = self._bindings.pop(session_id, None)
        if worker is not None:
            worker.sessions.discard(session_id)
            self._notify()

    def status(self) -> PoolStatus:
        """Counts for ``/status``: a worker that could not boot counts as a failed warm-up.

        ``queue_size`` counts the sessions waiting in ``acquire`` for a worker with room (the
        server's admission queue adds its own); ``queued_segments`` the segments sent to a worker
        that it has not started yet.
        """
        workers = [self._worker_status(w) for w in self._workers]
        return PoolStatus(
            total_gpus=len(self._workers),
            available_gpus=sum(1 for w in workers if w.available),
            queue_size=len(self._waiters),
            queued_segments=sum(
                1 for w in self._workers for job in w.jobs.values() if job.relay is not None and not job.started
            ),
            warmup_enabled=self._settings.warmup,
            warmup_successful_gpus=sum(1 for w in workers if w.warmup_success),
            warmup_failed_gpus=sum(1 for w in workers if w.warmup_error is not None),
            gpu_status={w.worker_id: status for w, status in zip(self._workers, workers, strict=True)},
        )

    def _worker_status(self, worker: _Worker) -> WorkerStatus:
        # The latest boot warmed up unless it is still booting or failed: a worker lost since
        # (restarting) or stopping keeps its success, as the original's slots do until they restart.
        warmed = worker.warmup_ms is not None and worker.state not in (WorkerState.BOOTING, WorkerState.FAILED)
        return WorkerStatus(
            gpu_id=worker.gpu_id,
            state=worker.state,
            ready=worker.ready,
            alive=worker.alive,
            pid=worker.process.pid if worker.process is not None else None,
            sessions=len(worker.sessions),
            running=0 if worker.running_job is None else 1,
            segments_done=worker.segments_done,
            last_error=worker.last_error,
            warmup_ms=worker.warmup_ms,
            boot_ms=worker.boot_ms,
            restarts=worker.restarts,
            warmup_enabled=self._settings.warmup,
            warmup_success=self._settings.warmup and warmed,
            warmup_error=worker.last_error if worker.state is WorkerState.FAILED else None,
            current_model_id=self._settings.backend if worker.ready else None,
        )

    def worker_pids(self) -> list[int]:
        """Process ids of live workers (for tests and operators)."""
        return [w.process.pid for w in self._workers if w.alive]

    def kill_worker(self, worker_id: str) -> None:
        """SIGKILL one worker, as a crash would (for tests and operators)."""
        for worker in self._workers:
            if worker.worker_id == worker_id:
                self._kill(worker)

    async def shutdown(self) -> None:
        """Stop every worker and free the shared memory; idempotent, concurrent callers wait for the first."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self) -> None:
        for worker in self._workers:
            if worker.state is not WorkerState.STOPPING:
                worker.state = advance(worker.state, WorkerState.STOPPING)
            self._job_ended(worker)
            self._fail_jobs(worker, PoolUnavailableError("pool shut down"))
        self._notify()  # waiting acquire() calls see the shutdown and give up
        for task in list(self._background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for worker in self._workers:
            worker.send(StopWorker())
            worker.outbox.put(_STOP)
        for worker in self._workers:
            await asyncio.to_thread(self._reap, worker, STOP_GRACE_S)
            worker.state = advance(worker.state, WorkerState.STOPPED)
        logger.info("pool: all workers stopped")

    # -- process handling (blocking; called from threads) -----------------

    def _kill(self, worker: _Worker) -> None:
        if worker.process is not None and worker.process.is_alive():
            worker.process.kill()

    def _reap(self, worker: _Worker, grace_s: float = 0.0) -> None:
        """Wait for the process to end (killing it after ``grace_s``), then free its pipe and slots."""
        with worker.reap_lock:
            self._reap_locked(worker, grace_s)

    def _reap_locked(self, worker: _Worker, grace_s: float) -> None:
        process = worker.process
        if process is not None:
            process.join(grace_s)
            if process.is_alive():
                process.kill()
                process.join()
            with contextlib.suppress(ValueError):
                process.close()
            worker.process = None
        worker.outbox.put(_STOP)
        if worker.conn is not None:
            with contextlib.suppress(OSError):
                worker.conn.close()
        for thread in worker.threads:
            if thread is not threading.current_thread():
                thread.join(timeout=1.0)
        if worker.slots is not None:
            worker.slots.close()
            worker.slots = None
