"""SubprocessGpuPool: one worker process per GPU, so a crashed or hung model never takes the server down.

Each worker builds its generator after CUDA_VISIBLE_DEVICES is set, warms up
(two segments, the second continuing the first) and reports ready. Frames come
back through shared-memory slots; only small dicts cross the pipes. A worker
that dies or overruns the segment deadline is killed, its jobs fail with
WorkerFailedError (the sessions retry elsewhere from their stored state), and
it is restarted in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing as mp
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from gpu.frame_slots import FrameSlots, SlotRef
from gpu.generator import ContinuationState, GeneratorError, IncompatibleStateError, SegmentRequest, SegmentResult, StepCallback
from gpu.pool import DEFAULT_WARMUP_REQUEST, PoolAssignment, PoolUnavailableError, SessionNotBoundError, WorkerFailedError
from gpu.worker import request_to_wire, worker_main

__all__ = ["SubprocessGpuPool", "WorkerSettings"]

logger = logging.getLogger(__name__)

SLOTS_PER_WORKER = 2  # frame slots per worker: one being filled while the server copies the other
STOP_GRACE_S = 5.0  # a worker asked to stop is killed after this long
_STOP = object()


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """How workers are built and supervised."""

    backend: str
    options: Mapping[str, Any] = field(default_factory=dict)
    per_worker_options: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    num_workers: int = 1
    gpu_ids: tuple[int, ...] | None = None
    sessions_per_worker: int = 1
    max_frame_bytes: int = 512 * 512 * 3 * 24
    warmup: bool = True
    warmup_request: SegmentRequest = DEFAULT_WARMUP_REQUEST
    boot_timeout_s: float = 300.0
    segment_timeout_s: float = 120.0
    restart_delay_s: float = 1.0


@dataclass
class _Job:
    id: int
    session_id: str
    future: asyncio.Future[SegmentResult]
    on_step: StepCallback | None
    deadline: asyncio.TimerHandle | None = None


class _Worker:
    """The server's handle on one worker process and the threads that talk to it."""

    def __init__(self, index: int, gpu_id: int) -> None:
        self.index = index
        self.gpu_id = gpu_id
        self.worker_id = f"gpu-{index}"
        self.process: Any = None
        self.conn: Connection | None = None
        self.slots: FrameSlots | None = None
        self.outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.state = "new"  # new | booting | ready | failed | restarting | stopped
        self.booted: asyncio.Future[None] | None = None
        self.sessions: set[str] = set()
        self.jobs: dict[int, _Job] = {}
        self.segments_done = 0
        self.last_error: str | None = None
        self.warmup_ms: float | None = None
        self.boot_ms: float | None = None
        self.restarts = 0
        self.threads: list[threading.Thread] = []

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()


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
        self._changed: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._shutdown_task: asyncio.Task[None] | None = None
        self._restarts: set[asyncio.Task[None]] = set()

    # -- lifecycle --------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._shutdown_task is None and any(worker.ready for worker in self._workers)

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
        self._changed = asyncio.Condition()
        for worker in self._workers:
            await self._spawn(worker)
        for worker in self._workers:
            await self._await_boot(worker)

    async def _spawn(self, worker: _Worker) -> None:
        settings = self._settings
        options = {**settings.options, **settings.per_worker_options.get(worker.index, {})}
        worker.slots = FrameSlots.create(count=SLOTS_PER_WORKER, slot_bytes=settings.max_frame_bytes)
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        warmup = request_to_wire(settings.warmup_request) if settings.warmup else None
        worker.process = self._context.Process(
            target=worker_main,
            kwargs={
                "conn": child_conn,
                "gpu_id": worker.gpu_id,
                "backend": settings.backend,
                "options": options,
                "warmup_request": warmup,
                "slot_names": worker.slots.names,
            },
            name=f"rtc-{worker.worker_id}",
            daemon=True,
        )
        worker.conn = parent_conn
        worker.outbox = queue.SimpleQueue()
        worker.state = "booting"
        assert self._loop is not None
        worker.booted = self._loop.create_future()
        await asyncio.to_thread(worker.process.start)
        child_conn.close()
        reader = threading.Thread(target=self._read_loop, args=(worker, parent_conn), daemon=True, name=f"{worker.worker_id}-reader")
        writer = threading.Thread(target=self._write_loop, args=(worker, parent_conn), daemon=True, name=f"{worker.worker_id}-writer")
        worker.threads = [reader, writer]
        reader.start()
        writer.start()
        logger.info("pool: %s starting on GPU %d (pid %s)", worker.worker_id, worker.gpu_id, worker.process.pid)

    async def _await_boot(self, worker: _Worker) -> None:
        assert worker.booted is not None
        try:
            await asyncio.wait_for(asyncio.shield(worker.booted), self._settings.boot_timeout_s)
        except TimeoutError:
            self._mark_failed(worker, f"no ready report within {self._settings.boot_timeout_s:.0f}s")
            await asyncio.to_thread(self._kill, worker)

    # -- threads talking to one worker -----------------------------------

    def _write_loop(self, worker: _Worker, conn: Connection) -> None:
        # Sends can block while the worker is busy generating; never on the event loop.
        outbox = worker.outbox
        while True:
            message = outbox.get()
            if message is _STOP:
                return
            try:
                conn.send(message)
            except (OSError, ValueError):
                return

    def _read_loop(self, worker: _Worker, conn: Connection) -> None:
        assert self._loop is not None
        loop = self._loop
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                with contextlib.suppress(RuntimeError):  # the loop may be closed at exit
                    loop.call_soon_threadsafe(self._on_lost, worker, conn)
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._on_message, worker, message)

    # -- messages from a worker (on the event loop) ------------------------

    def _on_message(self, worker: _Worker, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "ready":
            worker.state = "ready"
            worker.warmup_ms = message.get("warmup_ms")
            worker.boot_ms = message.get("boot_ms")
            logger.info("pool: %s ready (boot %.0f ms, warm-up %s ms)", worker.worker_id, worker.boot_ms or 0, worker.warmup_ms)
            self._resolve_boot(worker)
            self._notify()
        elif op == "boot_failed":
            self._mark_failed(worker, str(message.get("error")))
            logger.error("pool: %s failed to boot: %s", worker.worker_id, message.get("trace") or message.get("error"))
            self._resolve_boot(worker)
        elif op in ("started", "step", "result", "failed", "checked"):
            job = worker.jobs.get(message["job"])
            if job is not None:
                self._on_job_message(worker, job, op, message)

    def _on_job_message(self, worker: _Worker, job: _Job, op: str, message: dict[str, Any]) -> None:
        if op == "started":
            assert self._loop is not None
            job.deadline = self._loop.call_later(self._settings.segment_timeout_s, self._on_deadline, worker, job.id)
        elif op == "step":
            if job.on_step is not None:
                try:
                    job.on_step(message["step"], message["total"])
                except Exception:
                    logger.exception("pool: step callback failed")
        elif op == "result":
            self._finish_job(worker, job)
            assert worker.slots is not None
            frames = worker.slots.read(SlotRef(message["slot"], tuple(message["shape"])))
            worker.outbox.put({"op": "release", "slot": message["slot"]})
            state = message["state"]
            worker.segments_done += 1
            if not job.future.done():
                job.future.set_result(SegmentResult(frames, ContinuationState(state["kind"], state["payload"])))
        elif op == "checked":
            self._finish_job(worker, job)
            if not job.future.done():
                job.future.set_result(None)  # type: ignore[arg-type]
        elif op == "failed":
            self._finish_job(worker, job)
            error = str(message.get("error"))
            worker.last_error = error
            exc: Exception = IncompatibleStateError(error) if message.get("incompatible") else GeneratorError(error)
            if not job.future.done():
                job.future.set_exception(exc)

    def _finish_job(self, worker: _Worker, job: _Job) -> None:
        worker.jobs.pop(job.id, None)
        if job.deadline is not None:
            job.deadline.cancel()

    def _on_deadline(self, worker: _Worker, job_id: int) -> None:
        if job_id not in worker.jobs:
            return
        message = f"{worker.worker_id} overran the {self._settings.segment_timeout_s:.0f}s segment deadline"
        logger.error("pool: %s; killing it", message)
        worker.last_error = message
        # Killing closes its pipe; the reader then reports the loss like any crash.
        self._kill(worker)

    def _on_lost(self, worker: _Worker, conn: Connection) -> None:
        if worker.conn is not conn:
            return  # a previous incarnation's pipe
        was = worker.state
        if was in ("stopped", "failed") and not worker.jobs:
            return
        reason = worker.last_error if worker.last_error and "deadline" in worker.last_error else "worker process died"
        exitcode = worker.process.exitcode if worker.process is not None else None
        logger.error("pool: %s lost (%s, exit code %s)", worker.worker_id, reason, exitcode)
        worker.last_error = f"{reason} (exit code {exitcode})"
        self._resolve_boot(worker)
        self._fail_jobs(worker, WorkerFailedError(f"{worker.worker_id} failed mid-segment: {reason}"))
        if was == "booting":
            # A worker that cannot even boot would only crash again: keep it out of service.
            self._mark_failed(worker, f"died while booting (exit code {exitcode})")
            asyncio.ensure_future(asyncio.to_thread(self._reap, worker))
            return
        for session_id in list(worker.sessions):
            self._bindings.pop(session_id, None)
        worker.sessions.clear()
        if was == "stopped" or self._shutdown_task is not None:
            return
        worker.state = "restarting"
        task = asyncio.ensure_future(self._restart(worker))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)
        self._notify()

    def _fail_jobs(self, worker: _Worker, exc: Exception) -> None:
        for job in list(worker.jobs.values()):
            self._finish_job(worker, job)
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

    def _resolve_boot(self, worker: _Worker) -> None:
        if worker.booted is not None and not worker.booted.done():
            worker.booted.set_result(None)

    def _mark_failed(self, worker: _Worker, error: str) -> None:
        worker.state = "failed"
        worker.last_error = error

    def _notify(self) -> None:
        if self._changed is None:
            return

        async def notify() -> None:
            assert self._changed is not None
            async with self._changed:
                self._changed.notify_all()

        asyncio.ensure_future(notify())

    # -- GpuPool ----------------------------------------------------------

    def _pick_worker(self) -> _Worker | None:
        candidates = [w for w in self._workers if w.ready and len(w.sessions) < self._settings.sessions_per_worker]
        return min(candidates, key=lambda w: (len(w.sessions), w.index), default=None)

    async def acquire(self, session_id: str) -> PoolAssignment:
        """Bind to the least loaded ready worker, waiting for room if every worker is full."""
        if self._shutdown_task is not None or self._changed is None:
            raise PoolUnavailableError("pool is not running")
        bound = self._bindings.get(session_id)
        if bound is not None:
            return PoolAssignment(gpu_id=bound.gpu_id, worker_id=bound.worker_id)
        async with self._changed:
            while (worker := self._pick_worker()) is None:
                if self._shutdown_task is not None:
                    raise PoolUnavailableError("pool is shutting down")
                await self._changed.wait()
        worker.sessions.add(session_id)
        self._bindings[session_id] = worker
        return PoolAssignment(gpu_id=worker.gpu_id, worker_id=worker.worker_id)

    def binding(self, session_id: str) -> str | None:
        """The worker id a session is bound to, if any."""
        worker = self._bindings.get(session_id)
        return worker.worker_id if worker else None

    async def run(self, session_id: str, request: SegmentRequest, on_step: StepCallback | None = None) -> SegmentResult:
        """Generate a segment on the session's worker; WorkerFailedError if that worker dies meanwhile."""
        worker = self._bindings.get(session_id)
        if worker is None:
            raise SessionNotBoundError(f"session {session_id!r} is not bound to a worker")
        if not worker.ready:
            raise WorkerFailedError(f"{worker.worker_id} is {worker.state}")
        assert self._loop is not None
        shape_bytes = request.width * request.height * 3 * request.num_frames
        if shape_bytes > self._settings.max_frame_bytes:
            raise GeneratorError(f"a {shape_bytes} byte segment exceeds the pool's {self._settings.max_frame_bytes} byte slots")
        job = _Job(next(self._job_ids), session_id, self._loop.create_future(), on_step)
        worker.jobs[job.id] = job
        worker.outbox.put({"op": "job", "job": job.id, "request": request_to_wire(request)})
        try:
            return await job.future
        finally:
            self._finish_job(worker, job)

    async def check_state(self, state: ContinuationState) -> None:
        """Ask a ready worker's generator whether it can continue from ``state``."""
        worker = next((w for w in self._workers if w.ready), None)
        if worker is None:
            raise PoolUnavailableError("no worker is ready to check a continuation state")
        assert self._loop is not None
        job = _Job(next(self._job_ids), "", self._loop.create_future(), None)
        worker.jobs[job.id] = job
        worker.outbox.put({"op": "check", "job": job.id, "state": state.to_wire()})
        try:
            await job.future
        finally:
            self._finish_job(worker, job)

    async def release(self, session_id: str) -> None:
        worker = self._bindings.pop(session_id, None)
        if worker is not None:
            worker.sessions.discard(session_id)
            self._notify()

    def status(self) -> dict[str, Any]:
        ready = [w for w in self._workers if w.ready]
        return {
            "total_gpus": len(self._workers),
            "available_gpus": sum(1 for w in ready if len(w.sessions) < self._settings.sessions_per_worker),
            "queue_size": sum(len(w.jobs) for w in self._workers),
            "warmup_enabled": self._settings.warmup,
            "warmup_successful_gpus": sum(1 for w in self._workers if w.warmup_ms is not None and w.ready),
            "warmup_failed_gpus": sum(1 for w in self._workers if w.state == "failed"),
            "gpu_status": {
                w.worker_id: {
                    "gpu_id": w.gpu_id,
                    "state": w.state,
                    "ready": w.ready,
                    "alive": w.alive,
                    "pid": w.process.pid if w.process is not None else None,
                    "sessions": len(w.sessions),
                    "segments_done": w.segments_done,
                    "running": len(w.jobs),
                    "last_error": w.last_error,
                    "warmup_ms": w.warmup_ms,
                    "boot_ms": w.boot_ms,
                    "restarts": w.restarts,
                }
                for w in self._workers
            },
        }

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
        for task in list(self._restarts):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for worker in self._workers:
            worker.state = "stopped"
            self._fail_jobs(worker, PoolUnavailableError("pool shut down"))
            worker.outbox.put({"op": "stop"})
            worker.outbox.put(_STOP)
        for worker in self._workers:
            await asyncio.to_thread(self._reap, worker, STOP_GRACE_S)
        self._notify()
        logger.info("pool: all workers stopped")

    # -- process handling (blocking; called from threads) -----------------

    def _kill(self, worker: _Worker) -> None:
        if worker.process is not None and worker.process.is_alive():
            worker.process.kill()

    def _reap(self, worker: _Worker, grace_s: float = 0.0) -> None:
        """Wait for the process to end (killing it after ``grace_s``), then free its pipe and slots."""
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

