"""SessionController: one session's life, independent of the transport.

It applies client messages, keeps the prompt schedule, asks the pool for
segments one look-ahead ahead of playback, and hands events and frames to the
transport's sink. Every end of a session goes through ``_finish``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from gpu.generator import ContinuationState, GeneratorError, IncompatibleStateError, SegmentRequest
from gpu.pool import GpuPool, PoolError, PoolUnavailableError
from rtc_server.config import DefaultRequestConfig, StreamingConfig
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
    QueueStatus,
    RewriteSeedPrompts,
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
from rtc_server.sink import CloseReason, SessionSink

__all__ = ["SessionController"]

logger = logging.getLogger(__name__)


class SessionController:
    """Drives one session from ``session_init_v2`` to its end."""

    def __init__(
        self,
        *,
        session: Session,
        pool: GpuPool,
        sink: SessionSink,
        streaming: StreamingConfig,
        defaults: DefaultRequestConfig,
        on_closed: Callable[[SessionController], None] | None = None,
    ) -> None:
        self._session = session
        self._pool = pool
        self._sink = sink
        self._streaming = streaming
        self._defaults = defaults
        self._on_closed = on_closed
        self._schedule = PromptSchedule(default_prompt=defaults.prompt)
        self._init: SessionInitV2 | None = None
        self._paused = False
        self._single_clip = False
        self._enhancement = False
        self._state: ContinuationState | None = None
        self._segment_idx = 0
        self._segments_done = 0
        self._generating = False
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
        if init.continuation_state is not None:
            self._state = ContinuationState(init.continuation_state.kind, init.continuation_state.payload)
            resumed_idx = init.continuation_state.payload.get("segment_idx")
            if isinstance(resumed_idx, int) and resumed_idx >= 0:
                self._segment_idx = resumed_idx
        self._task = asyncio.create_task(self._run(), name=f"session-{self._session.short_id}")

    def handle(self, message: ClientMessage) -> None:
        """Apply one parsed client message."""
        if self._finishing:
            return
        self._session.touch()
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
            self._accept_prompt(message)
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
            self._send_snapshot()
        elif isinstance(message, RewriteSeedPrompts):
            self.report_error("invalid_message", "prompt rewriting is not enabled on this server")
        self._changed.set()

    def report_error(self, code: ErrorCode, message: str, *, retryable: bool = False) -> None:
        """Tell the client about a problem without ending the session."""
        self._sink.send_event(ErrorMessage(code=code, message=message, retryable=retryable))

    def _accept_prompt(self, message: SegmentPromptSource) -> None:
        choice = PromptChoice(
            text=message.prompt,
            origin=PromptOrigin.USER,
            negative_prompt=message.negative_prompt,
            seed=message.seed,
            num_inference_steps=message.num_inference_steps,
            guidance_scale=message.guidance_scale,
        )
        self._schedule.submit_user(choice)
        next_idx = self._segment_idx + (1 if self._generating else 0)
        self._sink.send_event(
            PromptReceived(
                prompt=message.prompt,
                prompt_used=message.prompt,
                source=message.source,
                enhanced=False,
                segment_idx=next_idx,
            )
        )

    def _send_snapshot(self) -> None:
        if self._state is None:
            self.report_error("invalid_message", "no segment has been generated yet; nothing to snapshot")
            return
        self._sink.send_event(ContinuationStateSnapshot(state=self._state.to_wire()))

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
            task = self._task
            if task is not None and task is not asyncio.current_task() and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._enter_terminal(target)
            try:
                await self._pool.release(self._session.id)
            except PoolError:
                logger.exception("session %s: releasing the pool binding failed", self._session.short_id)
            await self._sink.close(reason)
        finally:
            self._closed.set()
            if self._on_closed is not None:
                self._on_closed(self)
            logger.info("session %s: ended as %s (%s)", self._session.short_id, self._session.state.value, reason.value)

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
            await self._bind()
            await self._stream()
        except asyncio.CancelledError:
            raise
        except PoolUnavailableError as exc:
            await self._fail("gpu_unavailable", str(exc), retryable=True)
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
        await self._finish(SessionState.ERROR, CloseReason.ERROR)

    async def _bind(self) -> None:
        self._session.transition(SessionState.GPU_BINDING)
        self._sink.send_event(QueueStatus(position=0, queue_depth=0))
        assignment = await self._pool.acquire(self._session.id)
        self._session.transition(SessionState.ACTIVE)
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
            await self._generate(self._schedule.next())

    def _may_generate(self) -> bool:
        if self._paused:
            return False
        if self._single_clip:
            return self._segments_done == 0 or self._schedule.has_pending_user_prompt
        return True

    async def _wait_for_permission(self) -> None:
        while not self._may_generate():
            self._changed.clear()
            await self._changed.wait()

    async def _generate(self, choice: PromptChoice) -> None:
        idx = self._segment_idx
        sampling = self._defaults.sampling
        steps = choice.num_inference_steps or sampling.num_inference_steps
        request = SegmentRequest(
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
            continuation=self._state,
        )
        sink = self._sink

        def on_step(step: int, total: int) -> None:
            sink.send_event(StepComplete(segment_idx=idx, step=step, total_steps=total))

        sink.send_event(SegmentStart(segment_idx=idx, prompt=choice.text, total_steps=steps))
        started = time.monotonic()
        self._generating = True
        try:
            result = await self._pool.run(self._session.id, request, on_step)
        finally:
            self._generating = False
        generation_ms = (time.monotonic() - started) * 1000.0
        self._state = result.continuation
        await sink.send_segment(idx, result.frames)
        sink.send_event(
            SegmentComplete(
                segment_idx=idx,
                generation_time_ms=round(generation_ms, 2),
                e2e_latency_ms=round((time.monotonic() - started) * 1000.0, 2),
            )
        )
        self._segment_idx = idx + 1
        self._segments_done += 1
        self._session.transition(SessionState.ACTIVE)
