"""One session's segments: made one after another, each continuing from the state the last one left.

Frames flow to the sink chunk by chunk as the pool hands them over, so a segment's first frame
leaves as soon as it exists. A segment whose worker dies is made again on another worker from the
stored state, skipping the frames the client already has. A newer user prompt takes back every
segment none of whose frames was shown yet (``supersede``): generation resumes from the last state
that was shown, with the new prompt. In ``per_prompt`` mode nothing is taken back: each user prompt
waits for its own segment (``queue_prompt`` bounds how many wait).

Where another server would go on (``stored_index``, with the policy's marked position) moves at each
segment boundary whose state is stored; the resume record follows (``ResumePoints``): awaited before
the segment is reported complete, in the background after a take-back. ``suspend`` (the server is
shutting down) stops the stream at a boundary the client has seen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from gpu.generator import ContinuationState, SegmentRequest, SegmentResult
from gpu.pool import WorkerFailedError
from rtc_server.generation_policy import GenerationPolicy, PolicyPosition
from rtc_server.init_image import discard_init_image
from rtc_server.lookahead import Lookahead, PendingSegment
from rtc_server.prompt_schedule import PromptChoice, PromptOrigin
from rtc_server.protocol import (
    ContinuationStateSnapshot,
    SegmentComplete,
    SegmentPromptSource,
    SegmentStart,
    SessionInitV2,
    StepComplete,
)
from rtc_server.redact import redact_paths
from rtc_server.segment_feed import SegmentFeed
from rtc_server.session import Session, SessionState
from rtc_server.session_events import SessionEvents
from rtc_server.session_services import SessionServices
from rtc_server.session_start import StartPoint, resume_point, store_initial_image
from rtc_server.sink import SessionSink
from rtc_server.store.base import StoreError
from rtc_server.tasks import cancel_and_wait
from rtc_server.viewers.fmp4_fanout import WatchHub

__all__ = ["MAX_SEGMENT_ATTEMPTS", "ResumePoints", "SegmentRunner"]

logger = logging.getLogger(__name__)

MAX_SEGMENT_ATTEMPTS = 3  # a segment whose worker dies is retried on another worker this many times in all


class ResumePoints(Protocol):
    """Who keeps the resume record: told when where a resumed stream would go on has moved."""

    def touch(self) -> None:
        """Moved: write it in the background."""
        ...

    async def sync(self) -> None:
        """Moved: return once it is written."""
        ...


class _NoRecord:
    def touch(self) -> None:
        pass

    async def sync(self) -> None:
        pass


class SegmentRunner:
    """Makes, retries, persists and takes back one session's segments."""

    def __init__(
        self,
        *,
        session: Session,
        services: SessionServices,
        sink: SessionSink,
        events: SessionEvents,
        policy: GenerationPolicy,
        rebind: Callable[[], Awaitable[None]],
        on_change: Callable[[], None],
        resume_points: ResumePoints | None = None,
        viewers: WatchHub | None = None,
    ) -> None:
        """``rebind`` binds the session to a worker again (and tells the client) after one died;
        ``on_change`` tells the generation loop to look at the policy again (a prompt superseded);
        ``resume_points`` keeps the resume record; ``viewers`` get each segment too."""
        self._session = session
        self._services = services
        self._sink = sink
        self._events = events
        self._policy = policy
        self._rebind_worker = rebind
        self._on_change = on_change
        self._record: ResumePoints = resume_points or _NoRecord()
        self._viewers = viewers
        self._state: ContinuationState | None = None  # what the next segment continues from
        self._persisted: ContinuationState | None = None
        self._next_idx = 0
        self._stored_idx = 0  # the index the stored state continues to
        self._inflight: PendingSegment | None = None  # the segment being made
        self._opening = False  # a segment's prompt was taken and its index is not counted yet
        self._idle = asyncio.Event()  # set while no generate() runs
        self._idle.set()
        self._image_path: Path | None = None
        self._lookahead = Lookahead()
        self._task: asyncio.Task[tuple[SegmentResult, float]] | None = None

    @property
    def next_index(self) -> int:
        """The index of the next segment to start."""
        return self._next_idx

    @property
    def stored_index(self) -> int:
        """The index of the segment the stored state continues to: where a resumed stream goes on."""
        return self._stored_idx

    async def prepare(self, init: SessionInitV2, start: StartPoint | None = None) -> None:
        """Where the stream starts: ``start`` (a session resumed from its record, its state already in
        the store), else the initial image kept on disk and a resumed state installed and stored."""
        if start is not None:
            self._state = self._persisted = start.state
            self._next_idx = self._stored_idx = start.segment_idx
            return
        services = self._services
        self._image_path = await store_initial_image(
            init,
            max_bytes=services.streaming.max_init_image_bytes,
            max_pixels=services.limits.max_image_pixels,
            directory=services.image_dir,
            events=self._events,
        )
        start = await resume_point(
            init, session_id=self._session.id, store=services.store, pool=services.pool, events=self._events
        )
        self._state = self._persisted = start.state
        self._next_idx = self._stored_idx = start.segment_idx

    async def close(self, *, keep_state: bool = False) -> None:
        """Abandon the segment being made, drop the stored state (unless the session goes on elsewhere:
        ``keep_state``), delete the initial image."""
        if self._task is not None and not self._task.done():
            await cancel_and_wait(self._task)
        try:
            if not keep_state:
                await self._services.store.drop(self._session.id)
        except StoreError:
            logger.exception("session %s: dropping the stored state failed", self._session.short_id)
        if self._image_path is not None:
            await asyncio.to_thread(discard_init_image, self._image_path)
            self._image_path = None

    async def queue_prompt(
        self, accept: Callable[[SegmentPromptSource], Awaitable[None]], message: SegmentPromptSource
    ) -> None:
        """per_prompt: ``accept`` (check and queue) a user prompt unless ``max_queued_prompts`` are
        already waiting, in which case it is dropped and the client told (it may send it again later)."""
        if not self._policy.admit_prompt():
            limit = self._policy.max_queued_prompts
            self._events.log("prompt_dropped", prompt=message.prompt, queued=limit)
            self._events.error(
                "rate_limited",
                f"{limit} prompts are already waiting for their segments (streaming.max_queued_prompts); "
                "this one was dropped: send it again once a segment has started",
                retryable=True,
            )
            return
        try:
            await accept(message)
        finally:
            self._policy.prompt_settled()
            self._on_change()

    def supersede(self) -> int:
        """A user prompt was queued: take back look-ahead none of whose frames was shown; returns
        the index of the segment the prompt lands on."""
        if self._policy.per_prompt:  # nothing is taken back: it lands behind the prompts waiting before it
            self._on_change()
            self._record.touch()
            return self._next_idx + int(self._opening) + self._policy.queued_prompts - 1
        # While nothing may be made (paused), nothing is taken back: the prompt lands on the next segment made.
        taken = self._lookahead.take_back() if self._policy.hold() is None else []
        if taken:
            if self._task is not None:
                self._task.cancel()  # the segment being made is the newest, so it was taken back too
            self._state, self._next_idx = taken[0].state_before, taken[0].idx
            self._policy.retracted([p.choice for p in taken if p.generated])
            self._policy.mark()  # the new prompt is pending: a resumed stream shows it next
            self._events.log("superseded", segment_idx=taken[0].idx, segments=len(taken))
        self._on_change()
        self._record.touch()
        return self._next_idx

    async def suspend(self, *, wait_s: float) -> None:
        """Stop the stream for good at a boundary the client has seen (the session moves to another server).

        Segments none of whose frames the client got are taken back (the one being made is cancelled);
        a segment it is watching while it is still being made may finish within ``wait_s``, else it is
        cancelled and made again from its start elsewhere. Then the state the stream goes on from is stored.
        """
        self._policy.suspended = True
        self._on_change()
        taken = self._lookahead.take_back()
        if taken:
            if self._task is not None:
                self._task.cancel()  # the segment being made is the newest, so it was taken back too
            self._rewind(taken[0], [p.choice for p in taken])
        try:
            await asyncio.wait_for(self._idle.wait(), wait_s)
        except TimeoutError:
            inflight = self._inflight
            if self._task is not None:
                self._task.cancel()
            await self._idle.wait()
            if inflight is not None and not inflight.generated:
                self._rewind(inflight, [inflight.choice])
        await self._persist()
        self._stored_idx = self._next_idx
        await self._record.sync()
        self._events.log("suspended", segment_idx=self._next_idx, taken_back=len(taken))

    def _rewind(self, segment: PendingSegment, choices: list[PromptChoice]) -> None:
        self._state, self._next_idx = segment.state_before, segment.idx
        if segment.position_before is not None:
            self._policy.rewind(segment.position_before, choices)

    async def send_snapshot(self) -> None:
        """Answer snapshot_state with the stored state (exportable: it outlives the session)."""
        try:
            state = await self._services.store.snapshot(self._session.id)
        except StoreError as exc:
            logger.error("session %s: snapshot failed: %s", self._session.short_id, exc)
            self._events.error("internal_error", redact_paths(f"snapshot failed: {exc}"), retryable=True)
            return
        if state is None:
            self._events.error("invalid_message", "no segment has been generated yet; nothing to snapshot")
            return
        self._events.log("snapshot", kind=state.kind)
        self._events.send(ContinuationStateSnapshot(state=state.to_wire()))

    async def generate(self, choice: PromptChoice) -> None:
        """Make one segment, its frames flowing to the sink as they come (nothing once suspended)."""
        if self._policy.suspended:
            return
        self._idle.clear()
        self._opening = True
        try:
            await self._generate(choice, self._policy.marked)
        finally:
            self._inflight = None
            self._opening = False
            self._idle.set()

    async def _generate(self, choice: PromptChoice, position: PolicyPosition) -> None:
        await self._persist()
        if choice.origin is not PromptOrigin.USER and self._policy.has_pending_user_prompt:
            return  # a user prompt came in while this one was chosen or checked: it goes first
        idx, started = self._next_idx, time.monotonic()
        num_frames = self._services.defaults.sampling.num_frames
        if self._viewers is not None:
            output = self._viewers.open_segment(self._sink, idx, num_frames=num_frames)
        else:
            output = self._sink.open_segment(idx, num_frames=num_frames)
        pending = self._inflight = self._lookahead.add(idx, self._state, output, choice, position)
        self._next_idx, self._opening = idx + 1, False
        task = self._task = asyncio.create_task(self._produce(pending), name=f"segment-{idx}")
        try:
            await asyncio.wait({task})
        finally:
            self._task = None
            if not task.done():  # the session itself is being cancelled
                await cancel_and_wait(task)
        if task.cancelled() or pending.retracted:
            return  # superseded: the index and the state were rewound
        result, generation_ms = task.result()
        self._state, pending.generated = result.continuation, True
        self._policy.generated(choice)
        await self._persist(boundary=True)
        await output.finish()
        if not pending.retracted:
            self._report(pending, generation_ms, started)

    async def _produce(self, pending: PendingSegment) -> tuple[SegmentResult, float]:
        idx, choice, state = pending.idx, pending.choice, pending.state_before
        steps = choice.num_inference_steps or self._services.defaults.sampling.num_inference_steps
        feed = SegmentFeed(
            pending.output, fps=self._services.defaults.sampling.fps, audio_format=self._services.pool.audio_format
        )

        def on_step(step: int, total: int) -> None:
            self._events.send(StepComplete(segment_idx=idx, step=step, total_steps=total))

        for attempt in range(1, MAX_SEGMENT_ATTEMPTS + 1):
            start = SegmentStart(segment_idx=idx, prompt=choice.text, total_steps=steps)
            self._events.send(start)
            if self._viewers is not None:
                self._viewers.event(start, idx)
            feed.restart()
            started = time.monotonic()
            request = self._request(idx, choice, steps, state)
            try:
                result = await self._services.pool.run(self._session.id, request, on_step, feed.put)
            except WorkerFailedError as exc:
                if attempt == MAX_SEGMENT_ATTEMPTS:
                    raise
                self._events.error("worker_failed", redact_paths(f"{exc}; continuing on another worker"), retryable=True)
                state = await self._rebind()
                continue
            return result, (time.monotonic() - started) * 1000.0
        raise AssertionError("unreachable")

    async def _rebind(self) -> ContinuationState | None:
        """Move to a healthy worker; the segment is made again from the state the store holds."""
        await self._services.pool.release(self._session.id)
        state = await self._services.store.load(self._session.id)
        await self._rebind_worker()
        return state

    async def _persist(self, *, boundary: bool = False) -> None:
        """Store the state the next segment continues from, when it changed; at a segment ``boundary``
        (a segment was just made) the policy's position is marked there too."""
        state, stored = self._state, False
        if state is not None and state is not self._persisted:
            await self._services.store.store(self._session.id, state)
            self._persisted, stored = state, True
        if stored or boundary:
            self._stored_idx = self._next_idx
            if boundary:
                self._policy.mark()
            await self._record.sync()

    def _request(self, idx: int, choice: PromptChoice, steps: int, state: ContinuationState | None) -> SegmentRequest:
        defaults = self._services.defaults
        sampling = defaults.sampling
        return SegmentRequest(
            prompt=choice.text,
            negative_prompt=choice.negative_prompt or defaults.negative_prompt,
            seed=sampling.seed if choice.seed is None else choice.seed,
            num_inference_steps=steps,
            guidance_scale=sampling.guidance_scale if choice.guidance_scale is None else choice.guidance_scale,
            width=sampling.width,
            height=sampling.height,
            num_frames=sampling.num_frames,
            fps=sampling.fps,
            segment_idx=idx,
            init_image_path=str(self._image_path) if self._image_path and state is None else None,
            continuation=state,
        )

    def _report(self, pending: PendingSegment, generation_ms: float, started: float) -> None:
        e2e_ms = (time.monotonic() - started) * 1000.0
        metrics = self._services.metrics
        metrics.segments.labels(transport=self._session.transport).inc()
        metrics.generation_seconds.observe(generation_ms / 1000.0)
        complete = SegmentComplete(
            segment_idx=pending.idx, generation_time_ms=round(generation_ms, 2), e2e_latency_ms=round(e2e_ms, 2)
        )
        self._events.send(complete)
        if self._viewers is not None:
            self._viewers.event(complete, pending.idx)
        self._events.log(
            "segment",
            segment_idx=pending.idx,
            prompt=pending.choice.text,
            origin=pending.choice.origin.value,
            generation_ms=round(generation_ms, 2),
            e2e_ms=round(e2e_ms, 2),
        )
        self._session.transition(SessionState.ACTIVE)

