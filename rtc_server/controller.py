"""SessionController: one session's life, independent of the transport.

It applies client messages, keeps the prompt schedule, asks the pool for
segments one look-ahead ahead of playback, and hands events and frames to the
transport's sink. Every end of a session goes through ``_finish``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gpu.generator import ContinuationState, GeneratorError, IncompatibleStateError, SegmentRequest, SegmentResult
from gpu.pool import GpuPool, PoolError, PoolUnavailableError, WorkerFailedError
from rtc_server.store.base import InvalidStateError, SessionStore, StoreError
from rtc_server.admission import AdmissionQueue
from rtc_server.config import DefaultRequestConfig, StreamingConfig
from rtc_server.delivery import DeliveryLog
from rtc_server.metrics import ServiceMetrics
from rtc_server.prompt_pipeline import PromptPipeline, PromptUnavailable
from rtc_server.init_image import InitImageError, decode_init_image, discard_init_image, persist_init_image
from rtc_server.prompt_schedule import PromptChoice, PromptOrigin, PromptSchedule
from rtc_server.protocol import (
    AutoExtensionUpdated,
    ClientMessage,
    ContinuationStateSnapshot,
    EnhancementUpdated,
    ErrorCode,
    ErrorMessage,
    GenerationPausedUpdated,
    GpuAssigned,
    LoopGenerationUpdated,
    PromptReceived,
    PromptRejected,
    QueueStatus,
    RewriteSeedPrompts,
    RewriteSeedPromptsComplete,
    RewriteSeedPromptsStarted,
    SeedPromptsUpdated,
    SegmentComplete,
    SegmentPromptSource,
    SegmentStart,
    SessionInitV2,
    SessionTimeout,
    SnapshotState,
    StepComplete,
    StreamComplete,
    StreamStart,
)
from rtc_server.session import InvalidSessionTransition, Session, SessionState
from rtc_server.session_log import SessionLogger
from rtc_server.sink import CloseReason, SessionSink

__all__ = ["SessionController", "SessionServices"]

logger = logging.getLogger(__name__)

MAX_SEGMENT_ATTEMPTS = 3  # a segment whose worker dies is retried on another worker this many times in all


@dataclass(frozen=True, kw_only=True)
class SessionServices:
    """What every session of a server shares."""

    pool: GpuPool
    store: SessionStore
    admission: AdmissionQueue
    log: SessionLogger
    metrics: ServiceMetrics
    prompts: PromptPipeline
    streaming: StreamingConfig
    defaults: DefaultRequestConfig
    image_dir: Path


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it; a failure while it unwinds is logged, never raised."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        logger.exception("%s failed while being cancelled", task.get_name())


class _ResumeRefused(Exception):
    """A continuation_state that cannot be continued from."""


class SessionController:
    """Drives one session from ``session_init_v2`` to its end."""

    def __init__(
        self,
        *,
        session: Session,
        services: SessionServices,
        sink: SessionSink,
        delivery: DeliveryLog,
        on_closed: Callable[[SessionController], None] | None = None,
    ) -> None:
        self._session = session
        self.delivery = delivery
        self._services = services
        self._pool = services.pool
        self._store = services.store
        self._sink = sink
        self._streaming = services.streaming
        self._defaults = services.defaults
        self._on_closed = on_closed
        self._image_path: Path | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._prompt_lock = asyncio.Lock()
        self._last_used: PromptChoice | None = None
        self._recent_prompts: deque[str] = deque(maxlen=services.streaming.prompt.history)
        self._awaiting_user_prompt = False
        self._extension: asyncio.Task[str | None] | None = None
        self._enhancing: dict[str, asyncio.Task[Any]] = {}
        self._schedule = PromptSchedule(default_prompt=services.defaults.prompt)
        self._init: SessionInitV2 | None = None
        self._paused = False
        self._single_clip = False
        self._enhancement = False
        self._state: ContinuationState | None = None
        self._segment_idx = 0
        self._segments_done = 0
        self._in_segment = False
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._finishing = False
        self._closed = asyncio.Event()

    @property
    def session(self) -> Session:
        return self._session

    @property
    def initialised(self) -> bool:
        return self._init is not None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def segments_done(self) -> int:
        return self._segments_done

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # -- client messages -------------------------------------------------

    def start(self, init: SessionInitV2) -> None:
        """Apply the session's opening message and start generating."""
        if self._init is not None:
            raise RuntimeError(f"session {self._session.short_id}: already started")
        self._init = init
        self._session.client_id = init.client_id
        self._schedule = PromptSchedule(
            default_prompt=self._defaults.prompt, curated=init.curated_prompts, loop=init.loop_generation_enabled
        )
        self._schedule.auto_extension_enabled = init.auto_extension_enabled
        self._enhancement = init.enhancement_enabled
        self._single_clip = init.single_clip_mode
        self._log(
            "init",
            transport=self._session.transport,
            client_id=init.client_id,
            curated_prompts=len(init.curated_prompts),
            loop_generation=init.loop_generation_enabled,
            single_clip=init.single_clip_mode,
            initial_image=init.initial_image is not None,
            resume_kind=init.continuation_state.kind if init.continuation_state else None,
        )
        self._task = asyncio.create_task(self._run(), name=f"session-{self._session.short_id}")

    def _log(self, event: str, **fields: Any) -> None:
        self._services.log.event(self._session.id, event, **fields)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run work that must await (store I/O, LLM calls); the controller cancels it at the end."""
        task = asyncio.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)
        return task

    async def _briefly(self, task: asyncio.Task[Any]) -> tuple[bool, Any]:
        """Wait for ``task`` at most the prompt wait budget: (done, result)."""
        done, _ = await asyncio.wait({task}, timeout=self._streaming.prompt.wait_ms / 1000.0)
        return (True, task.result()) if done else (False, None)

    def handle(self, message: ClientMessage) -> None:
        """Apply one parsed client message."""
        if self._finishing:
            return
        self._session.touch()
        self._services.metrics.control_messages.labels(type=message.type).inc()
        if isinstance(message, SessionInitV2):
            if self._init is not None:
                self.report_error("invalid_message", "session_init_v2 was already received for this session")
            else:
                self.start(message)
            return
        if self._init is None:
            self.report_error("invalid_message", f"send session_init_v2 before {message.type}")
            return
        if isinstance(message, SegmentPromptSource):
            self._spawn(self._accept_prompt(message))
        elif isinstance(message, SeedPromptsUpdated):
            self._schedule.set_curated(message.seed_prompts)
        elif isinstance(message, EnhancementUpdated):
            self._enhancement = message.enabled
        elif isinstance(message, AutoExtensionUpdated):
            self._schedule.auto_extension_enabled = message.enabled
        elif isinstance(message, LoopGenerationUpdated):
            self._schedule.loop_enabled = message.enabled
        elif isinstance(message, GenerationPausedUpdated):
            self._paused = message.paused
        elif isinstance(message, SnapshotState):
            self._spawn(self._send_snapshot())
        elif isinstance(message, RewriteSeedPrompts):
            self._spawn(self._rewrite(message))
        self._changed.set()

    def report_error(self, code: ErrorCode, message: str, *, retryable: bool = False) -> None:
        """Tell the client about a problem without ending the session."""
        self._log("error", code=code, message=message)
        self._services.metrics.errors.labels(code=code).inc()
        self._sink.send_event(ErrorMessage(code=code, message=message, retryable=retryable))

    async def _accept_prompt(self, message: SegmentPromptSource) -> None:
        """Safety, then (when on) enhancement, then the schedule; prompts are handled in arrival order."""
        prompts = self._services.prompts
        async with self._prompt_lock:
            if await self._rejected(message.prompt):
                return
            used = await prompts.enhance(message.prompt) if self._enhancement else None
            if used is not None and used.enhanced and await self._rejected(used.text, sent=message.prompt):
                return
            text = used.text if used is not None else message.prompt
            choice = PromptChoice(
                text=text,
                origin=PromptOrigin.USER,
                negative_prompt=message.negative_prompt,
                seed=message.seed,
                num_inference_steps=message.num_inference_steps,
                guidance_scale=message.guidance_scale,
            )
            self._schedule.submit_user(choice)
            next_idx = self._segment_idx + (1 if self._in_segment else 0)
            enhanced = used is not None and used.enhanced
            self._log("prompt_received", prompt=message.prompt, prompt_used=text, enhanced=enhanced, segment_idx=next_idx)
            self._sink.send_event(
                PromptReceived(
                    prompt=message.prompt, prompt_used=text, source=message.source, enhanced=enhanced, segment_idx=next_idx
                )
            )
            self._changed.set()

    async def _rejected(self, text: str, *, sent: str | None = None) -> bool:
        """True (and the client told) when the safety filter blocks ``text``.

        ``sent`` is the client's own prompt when ``text`` is its enhanced version: the client
        is told about what it sent, and the LLM's text is not echoed back.
        """
        blocked = await self._services.prompts.check(text)
        if blocked is None:
            return False
        self._log("prompt_rejected", prompt=text, score=blocked.unsafe_score)
        self._services.metrics.errors.labels(code="prompt_rejected").inc()
        reason = "blocked by the safety filter" if sent is None else "its enhanced version was blocked by the safety filter"
        self._sink.send_event(
            PromptRejected(prompt=sent or text, reason=reason, label="unsafe", score=blocked.unsafe_score)
        )
        return True

    async def _rewrite(self, message: RewriteSeedPrompts) -> None:
        prompts = self._services.prompts
        if not prompts.can_enhance:
            self.report_error("invalid_message", "prompt rewriting is not enabled on this server")
            return
        self._sink.send_event(RewriteSeedPromptsStarted(seed_prompt=message.seed_prompt))
        try:
            result = await prompts.rewrite(message.seed_prompt, message.count)
        except PromptUnavailable as exc:
            self.report_error("upstream_timeout", str(exc), retryable=True)
            return
        self._sink.send_event(
            RewriteSeedPromptsComplete(
                seed_prompt=message.seed_prompt,
                alternatives=list(result.alternatives),
                provider=result.provider,
                model=result.model,
                latency_ms=round(result.latency_ms, 2),
                fallback_used=result.fallback_used,
            )
        )

    async def _send_snapshot(self) -> None:
        try:
            state = await self._store.snapshot(self._session.id)
        except StoreError as exc:
            logger.error("session %s: snapshot failed: %s", self._session.short_id, exc)
            self.report_error("internal_error", f"snapshot failed: {exc}", retryable=True)
            return
        if state is None:
            self.report_error("invalid_message", "no segment has been generated yet; nothing to snapshot")
            return
        self._log("snapshot", kind=state.kind)
        self._sink.send_event(ContinuationStateSnapshot(state=state.to_wire()))

    # -- ending ----------------------------------------------------------

    async def request_stop(self) -> None:
        """End the stream on request (DELETE /v1/sessions/{id})."""
        if self._finishing:
            return
        self._sink.send_event(StreamComplete(reason="stop_requested"))
        await self._finish(SessionState.COMPLETE, CloseReason.NORMAL)

    async def expire(self) -> None:
        """End an idle session: tell the client, then close."""
        if self._finishing:
            return
        logger.info("session %s: idle for %ss, closing", self._session.short_id, self._streaming.session_timeout_seconds)
        self._sink.send_event(SessionTimeout(timeout_seconds=self._streaming.session_timeout_seconds))
        await self._finish(SessionState.TIMEOUT, CloseReason.TIMEOUT)

    async def client_left(self) -> None:
        """The transport lost its client; release everything without sending."""
        await self._finish(self._session.end_state_for_departure(), CloseReason.CLIENT_LEFT)

    async def shutdown(self) -> None:
        """The server is stopping."""
        if self._finishing:
            return
        self.report_error("gpu_unavailable", "the server is shutting down", retryable=True)
        await self._finish(SessionState.ERROR, CloseReason.SHUTDOWN)

    async def _finish(self, target: SessionState, reason: CloseReason) -> None:
        if self._finishing:
            await self._closed.wait()
            return
        self._finishing = True
        try:
            for task in [self._task, *self._side_tasks]:
                if task is not None and task is not asyncio.current_task() and not task.done():
                    await _cancel_and_wait(task)
            self._enter_terminal(target)
            self._services.admission.leave(self._session.id)
            await self._release_resources()
            await self._sink.close(reason)
        finally:
            self._closed.set()
            if self._on_closed is not None:
                self._on_closed(self)
            self._log("end", state=self._session.state.value, reason=reason.value, segments=self._segments_done)
            logger.info("session %s: ended as %s (%s)", self._session.short_id, self._session.state.value, reason.value)

    async def _release_resources(self) -> None:
        # One by one, each failure logged: a broken store must not keep the GPU binding or the image.
        try:
            await self._pool.release(self._session.id)
        except PoolError:
            logger.exception("session %s: releasing the pool binding failed", self._session.short_id)
        try:
            await self._store.drop(self._session.id)
        except StoreError:
            logger.exception("session %s: dropping the stored state failed", self._session.short_id)
        if self._image_path is not None:
            await asyncio.to_thread(discard_init_image, self._image_path)
            self._image_path = None

    def _enter_terminal(self, target: SessionState) -> None:
        state = self._session.state
        if state.terminal:
            return
        # Not every terminal state is reachable from every state (a session still
        # initialising cannot "complete"); error is, so it is the fallback.
        try:
            self._session.transition(target)
        except InvalidSessionTransition:
            self._session.transition(SessionState.ERROR)

    # -- generation ------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._prepare()
            await self._admit()
            await self._bind()
            await self._stream()
        except asyncio.CancelledError:
            raise
        except InitImageError as exc:
            await self._fail("invalid_message", str(exc), retryable=False)
        except _ResumeRefused as exc:
            await self._fail("invalid_message", str(exc), retryable=False)
        except StoreError as exc:
            logger.error("session %s: session store failed: %s", self._session.short_id, exc)
            await self._fail("internal_error", f"session store failed: {exc}", retryable=True)
        except PoolUnavailableError as exc:
            await self._fail("gpu_unavailable", str(exc), retryable=True)
        except WorkerFailedError as exc:
            await self._fail("worker_failed", str(exc), retryable=True)
        except IncompatibleStateError as exc:
            await self._fail("invalid_message", f"continuation_state refused: {exc}", retryable=False)
        except (GeneratorError, PoolError) as exc:
            logger.error("session %s: generation failed: %s", self._session.short_id, exc)
            await self._fail("internal_error", f"generation failed: {exc}", retryable=True)
        except Exception:
            logger.exception("session %s: unexpected failure", self._session.short_id)
            await self._fail("internal_error", "unexpected server error", retryable=True)

    async def _fail(self, code: ErrorCode, message: str, *, retryable: bool) -> None:
        self.report_error(code, message, retryable=retryable)
        self._sink.send_event(StreamComplete(reason="error"))
        await self._finish(SessionState.ERROR, CloseReason.INVALID if code == "invalid_message" else CloseReason.ERROR)

    async def _prepare(self) -> None:
        """Persist the initial image and install a resumed state, before taking a slot."""
        assert self._init is not None
        if self._init.initial_image is not None:
            image = await asyncio.to_thread(
                decode_init_image, self._init.initial_image, max_bytes=self._streaming.max_init_image_bytes
            )
            if image is not None:
                self._image_path = await asyncio.to_thread(persist_init_image, image, self._services.image_dir)
                self._log("initial_image", name=image.display_name, mime=image.mime, bytes=len(image.data))
        wire = self._init.continuation_state
        if wire is None:
            return
        try:
            await self._resume(ContinuationState(wire.kind, wire.payload))
        except _ResumeRefused as exc:
            if self._init.continuation_fallback != "fresh":
                raise
            self.report_error("invalid_message", f"{exc}; starting a fresh stream as asked", retryable=False)
            self._state = None
            self._segment_idx = 0

    async def _resume(self, wire_state: ContinuationState) -> None:
        try:
            await self._store.hydrate(wire_state, session_id=self._session.id)
            state = await self._store.load(self._session.id)
            if state is None:
                raise _ResumeRefused("continuation_state refused: it vanished from the store")
            await self._pool.check_state(state)
        except IncompatibleStateError as exc:
            await self._store.drop(self._session.id)
            raise _ResumeRefused(f"continuation_state refused: {exc}") from exc
        except InvalidStateError as exc:
            raise _ResumeRefused(f"continuation_state refused: {exc}") from exc
        self._state = state
        resumed_idx = state.payload.get("segment_idx")
        if isinstance(resumed_idx, int) and resumed_idx >= 0:
            self._segment_idx = resumed_idx
        self._log("resumed", kind=state.kind, segment_idx=self._segment_idx)

    async def _admit(self) -> None:
        admission = self._services.admission
        if admission.try_enter(self._session.id):
            self._session.transition(SessionState.GPU_BINDING)
            self._sink.send_event(QueueStatus(position=0, queue_depth=admission.depth))
            self._log("queue", position=0, queue_depth=admission.depth)
            return
        self._session.transition(SessionState.QUEUED)

        def on_position(position: int, depth: int) -> None:
            self._log("queue", position=position, queue_depth=depth)
            self._sink.send_event(QueueStatus(position=position, queue_depth=depth))

        await admission.wait(self._session.id, on_position)
        self._session.transition(SessionState.GPU_BINDING)
        self._sink.send_event(QueueStatus(position=0, queue_depth=admission.depth))
        self._log("queue", position=0, queue_depth=admission.depth)

    async def _bind(self) -> None:
        assignment = await self._pool.acquire(self._session.id)
        self._session.transition(SessionState.ACTIVE)
        self._log("gpu_assigned", gpu_id=assignment.gpu_id, worker_id=assignment.worker_id)
        logger.info("session %s: bound to %s", self._session.short_id, assignment.worker_id)
        sampling = self._defaults.sampling
        assert self._init is not None
        self._sink.send_event(
            GpuAssigned(gpu_id=assignment.gpu_id, session_timeout=self._streaming.session_timeout_seconds)
        )
        self._sink.send_event(
            StreamStart(
                preset=self._init.preset,
                width=sampling.width,
                height=sampling.height,
                fps=sampling.fps,
                num_frames=sampling.num_frames,
            )
        )

    async def _stream(self) -> None:
        cap = self._streaming.generation_segment_cap
        while True:
            if cap and self._segments_done >= cap:
                await self._sink.drain()
                self._sink.send_event(StreamComplete(reason="segment_cap"))
                await self._finish(SessionState.COMPLETE, CloseReason.NORMAL)
                return
            await self._wait_for_permission()
            await self._sink.wait_for_room()
            await self._wait_for_permission()
            choice = await self._next_prompt()
            if choice is None:
                continue
            await self._generate(choice)
            self._last_used = choice
            self._recent_prompts.append(choice.text)

    async def _next_prompt(self) -> PromptChoice | None:
        """The schedule's next prompt, auto-extended and enhanced as asked, and checked by the safety filter.

        A blocked prompt is reported and the stream continues with the last prompt it used;
        with none, it waits for the user's next prompt.
        """
        prompts = self._services.prompts
        choice: PromptChoice | None = None
        # LLM answers are waited for only briefly: a slow or failing provider delays nothing,
        # its answer (asked for in the background) serves a later segment.
        if self._schedule.wants_auto_extension and prompts.can_enhance:
            if self._extension is None:
                self._extension = self._spawn(prompts.auto_extend(list(self._recent_prompts)))
            done, text = await self._briefly(self._extension)
            if done:
                self._extension = None
                if text is not None:
                    choice = self._schedule.accept_auto_extension(text)
        if choice is None:
            choice = self._schedule.next()
        if choice.origin is PromptOrigin.REPEAT and self._last_used is not None:
            return replace(self._last_used, origin=PromptOrigin.REPEAT)  # as generated: checked and enhanced
        if choice.origin in (PromptOrigin.USER, PromptOrigin.REPEAT):
            return choice  # user prompts were checked (and enhanced) on arrival, repeats when first used
        if self._enhancement and choice.origin in (PromptOrigin.CURATED, PromptOrigin.DEFAULT):
            task = self._enhancing.get(choice.text)
            if task is None:
                task = self._enhancing[choice.text] = self._spawn(prompts.enhance(choice.text, cached=True))
            done, enhanced = await self._briefly(task)
            if done:
                del self._enhancing[choice.text]
                choice = replace(choice, text=enhanced.text)
        if not await self._rejected(choice.text):
            return choice
        if self._last_used is not None:
            return replace(self._last_used, origin=PromptOrigin.REPEAT)
        self._awaiting_user_prompt = True
        return None

    def _may_generate(self) -> bool:
        if self._awaiting_user_prompt:
            if not self._schedule.has_pending_user_prompt:
                return False
            self._awaiting_user_prompt = False
        if self._paused:
            return False
        if self._single_clip:
            return self._segments_done == 0 or self._schedule.has_pending_user_prompt
        return True

    async def _wait_for_permission(self) -> None:
        while not self._may_generate():
            self._changed.clear()
            await self._changed.wait()

    def _request(self, idx: int, choice: PromptChoice, steps: int) -> SegmentRequest:
        sampling = self._defaults.sampling
        return SegmentRequest(
            prompt=choice.text,
            negative_prompt=choice.negative_prompt or self._defaults.negative_prompt,
            seed=sampling.seed if choice.seed is None else choice.seed,
            num_inference_steps=steps,
            guidance_scale=sampling.guidance_scale if choice.guidance_scale is None else choice.guidance_scale,
            width=sampling.width,
            height=sampling.height,
            num_frames=sampling.num_frames,
            fps=sampling.fps,
            segment_idx=idx,
            init_image_path=str(self._image_path) if self._image_path and self._state is None else None,
            continuation=self._state,
        )

    async def _run_segment(self, idx: int, choice: PromptChoice, steps: int) -> tuple[SegmentResult, float]:
        """Generate segment ``idx``; when its worker dies, tell the client and go on elsewhere."""
        sink = self._sink

        def on_step(step: int, total: int) -> None:
            sink.send_event(StepComplete(segment_idx=idx, step=step, total_steps=total))

        for attempt in range(1, MAX_SEGMENT_ATTEMPTS + 1):
            sink.send_event(SegmentStart(segment_idx=idx, prompt=choice.text, total_steps=steps))
            started = time.monotonic()
            try:
                result = await self._pool.run(self._session.id, self._request(idx, choice, steps), on_step)
            except WorkerFailedError as exc:
                if attempt == MAX_SEGMENT_ATTEMPTS:
                    raise
                self.report_error("worker_failed", f"{exc}; continuing on another worker", retryable=True)
                await self._rebind()
                continue
            return result, (time.monotonic() - started) * 1000.0
        raise AssertionError("unreachable")

    async def _rebind(self) -> None:
        """Move to a healthy worker, continuing from the last state the store holds."""
        await self._pool.release(self._session.id)
        self._state = await self._store.load(self._session.id)
        assignment = await self._pool.acquire(self._session.id)
        self._log("gpu_assigned", gpu_id=assignment.gpu_id, worker_id=assignment.worker_id, after="worker_failed")
        self._sink.send_event(
            GpuAssigned(gpu_id=assignment.gpu_id, session_timeout=self._streaming.session_timeout_seconds)
        )

    async def _generate(self, choice: PromptChoice) -> None:
        idx = self._segment_idx
        steps = choice.num_inference_steps or self._defaults.sampling.num_inference_steps
        sink = self._sink
        started = time.monotonic()
        self._in_segment = True
        try:
            result, generation_ms = await self._run_segment(idx, choice, steps)
            self._state = result.continuation
            await self._store.store(self._session.id, result.continuation)
            await sink.send_segment(idx, result.frames)
        finally:
            self._in_segment = False
        e2e_ms = (time.monotonic() - started) * 1000.0
        metrics = self._services.metrics
        metrics.segments.labels(transport=self._session.transport).inc()
        metrics.generation_seconds.observe(generation_ms / 1000.0)
        sink.send_event(
            SegmentComplete(segment_idx=idx, generation_time_ms=round(generation_ms, 2), e2e_latency_ms=round(e2e_ms, 2))
        )
        self._log(
            "segment",
            segment_idx=idx,
            prompt=choice.text,
            origin=choice.origin.value,
            generation_ms=round(generation_ms, 2),
            e2e_ms=round(e2e_ms, 2),
        )
        self._segment_idx = idx + 1
        self._segments_done += 1
        self._session.transition(SessionState.ACTIVE)
