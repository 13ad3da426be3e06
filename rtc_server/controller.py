"""SessionController: one session's life, independent of the transport.

Lifecycle and I/O: client messages (dispatched by type), admission, binding a worker, the
generation loop, teardown. What to generate next is the GenerationPolicy's call; prompt work
that awaits the LLM or the safety filter is the PromptIntake's; making, retrying, persisting and
taking back segments is the SegmentRunner's; its resume token and record are the SessionContinuity's.
Every end of a session goes through ``_finish``: one that moves on (server shutdown, resumed on
another connection) keeps its stored state and record for the next owner, any other drops both.

How a session that was streaming ends, as the original system (its server.py sends
``ltx2_stream_complete{reason:"stop_requested"}`` whenever the segment loop returns, an idle
timeout included): idle timeout ``ltx2_stream_complete{stop_requested}`` then ``session_timeout``,
state TIMEOUT, close; server shutdown ``error{gpu_unavailable, retryable}`` (resume elsewhere) then
``ltx2_stream_complete{stop_requested}``, close 1012. A session that got no worker within
``pool.acquire_timeout_seconds`` gets ``error{gpu_unavailable, retryable}`` and ends in TIMEOUT (the
original's PoolAcquireTimeout). REJECTED is for a session whose opening message is refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gpu.pool import PoolAcquireTimeout, PoolError
from rtc_server import protocol as wire
from rtc_server.delivery import DeliveryLog
from rtc_server.generation_policy import GenerationPolicy, Hold
from rtc_server.prompt_intake import PromptIntake
from rtc_server.segment_runner import SegmentRunner
from rtc_server.session import Session, SessionState
from rtc_server.session_continuity import SHUTDOWN_MESSAGE, SUSPEND_WAIT_S, SessionContinuity
from rtc_server.session_dispatch import Handlers, dispatch_table
from rtc_server.session_events import SessionEvents
from rtc_server.session_failures import SessionFailure, failure_for
from rtc_server.session_services import Admission, SessionDirectory, SessionServices
from rtc_server.session_start import SessionRefused, describe_init, generation_settings, stream_start
from rtc_server.sink import CloseReason, SessionSink
from rtc_server.tasks import TaskSet, cancel_and_wait
from rtc_server.viewers.fmp4_fanout import WatchHub
from rtc_server.viewers.recording import SessionRecording

__all__ = ["SessionController"]

logger = logging.getLogger(__name__)


class SessionController:
    """Drives one session from ``session_init_v2`` to its end."""

    def __init__(
        self,
        *,
        session: Session,
        services: SessionServices,
        sink: SessionSink,
        delivery: DeliveryLog,
        admission: Admission,
        on_closed: Callable[[SessionController], None] | None = None,
        directory: SessionDirectory | None = None,
        acquire_timeout_s: float | None = None,
    ) -> None:
        self._session = session
        self._acquire_timeout_s = acquire_timeout_s  # how long binding waits for a worker (None: no limit)
        self._services = services
        self._sink = sink
        self.delivery = delivery
        self._admission = admission
        self._on_closed = on_closed
        self._events = SessionEvents(session=session, sink=sink, log=services.log, metrics=services.metrics)
        self._side_tasks = TaskSet(f"session {session.short_id}")
        # A record another server took over: this copy ends, leaving the state alone.
        on_lost = lambda: self._side_tasks.spawn(self.hand_over())
        self._continuity = SessionContinuity(session=session, services=services, directory=directory, on_lost=on_lost)
        # Recorded from its start when the server records (streaming.recording_dir); recording_updated toggles it.
        self._recording: SessionRecording | None = None
        hub = self._continuity.viewers
        if services.recordings is not None and hub is not None:
            owner = lambda: (self._session.id, self._continuity.token_hash)
            self._recording = services.recordings.session(hub, owner=owner, label=f"session {session.short_id} recording")
        self._deferred: list[wire.ClientMessage] | None = None  # messages held while a resumed policy loads
        self._init: wire.SessionInitV2 | None = None
        self._policy: GenerationPolicy | None = None
        self._intake: PromptIntake | None = None
        self._runner: SegmentRunner | None = None
        self._handlers: Handlers | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._finishing = False
        self._closed = asyncio.Event()

    @property
    def session(self) -> Session:
        return self._session

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def viewers(self) -> WatchHub | None:
        """The session's viewers (None when viewers are off)."""
        return self._continuity.viewers

    @property
    def segments_done(self) -> int:
        return self._policy.segments_done if self._policy is not None else 0

    # -- client messages -------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether ``session_init_v2`` has been received."""
        return self._init is not None

    async def begin(self, init: wire.SessionInitV2) -> None:
        """Apply the opening message and check what the session starts from (initial image, resumed
        state) before it takes a slot; SessionRefused when it cannot start (end it with ``refuse``)."""
        await self._start(self._setup(init), init)

    async def refuse(self, failure: SessionFailure, *, tell_client: bool = True) -> None:
        """End a session that could not start; ``tell_client=False`` when the transport answers with an HTTP error.

        A refused opening message (``invalid_message``) ends it REJECTED, as the original; a server
        failure while starting (the store, the pool) ends it ERROR."""
        state = SessionState.REJECTED if failure.code == "invalid_message" else SessionState.ERROR
        await self._end(failure, state, tell_client=tell_client)

    async def _start(self, runner: SegmentRunner, init: wire.SessionInitV2) -> None:
        policy = self._policy
        assert policy is not None
        try:
            start, self._init = await self._continuity.resume(init, policy=policy, events=self._events)
            await runner.prepare(init, start)
        except Exception as exc:
            raise SessionRefused(failure_for(exc, label=f"session {self._session.short_id}")) from exc
        self._continuity.start(self._init, lambda: (runner.stored_index, policy.resume_state()))
        deferred, self._deferred = self._deferred or [], None
        for message in deferred:
            self.handle(message)
        self._task = asyncio.create_task(self._run(), name=f"session-{self._session.short_id}")

    async def _start_or_refuse(self, runner: SegmentRunner, init: wire.SessionInitV2) -> None:
        try:
            await self._start(runner, init)
        except SessionRefused as exc:
            await self.refuse(exc.failure)

    def _setup(self, init: wire.SessionInitV2) -> SegmentRunner:
        if self._init is not None:
            raise RuntimeError(f"session {self._session.short_id}: already started")
        self._init, self._session.client_id = init, init.client_id
        services = self._services
        policy = self._policy = GenerationPolicy(generation_settings(init, services))
        runner = self._runner = SegmentRunner(
            session=self._session,
            services=services,
            sink=self._sink,
            events=self._events,
            policy=policy,
            rebind=lambda: self._bind(after="worker_failed"),
            on_change=self._changed.set,
            resume_points=self._continuity,
            viewers=self._continuity.viewers,
        )
        intake = self._intake = PromptIntake(
            policy=policy,
            prompts=services.prompts,
            events=self._events,
            wait_s=services.streaming.prompt.wait_ms / 1000.0,
            llm_calls_per_minute=services.limits.llm_calls_per_minute,
            spawn=self._side_tasks.spawn,
            on_user_prompt=runner.supersede,
        )
        self._handlers = dispatch_table(
            policy, intake, runner, spawn=self._side_tasks.spawn, report_error=self.report_error
        )
        self._handlers[wire.RecordingUpdated] = self._recording_updated
        if policy.per_prompt:  # every prompt waits for its own segment, a bounded number of them
            queue = lambda m: self._side_tasks.spawn(runner.queue_prompt(intake.accept, m))
            self._handlers[wire.SegmentPromptSource] = queue
        if init.resume_session is None:
            self._events.log("init", transport=self._session.transport, **describe_init(init))
        else:
            self._deferred = []  # what follows the init applies to the policy the record restores
        return runner

    def handle(self, message: wire.ClientMessage) -> None:
        """Apply one parsed client message."""
        if self._finishing:
            return
        self._session.touch()
        self._services.metrics.control_messages.labels(type=message.type).inc()
        if self._handlers is None:
            if isinstance(message, wire.SessionInitV2):
                # Set up now, so that messages right behind the init find the session started.
                self._side_tasks.spawn(self._start_or_refuse(self._setup(message), message))
            else:
                self.report_error("invalid_message", f"send session_init_v2 before {message.type}")
            return
        if self._deferred is not None:
            self._deferred.append(message)
            return
        self._handlers[type(message)](message)
        self._changed.set()
        self._continuity.touch()  # toggles, curated prompts, a user prompt: a resumed stream keeps them

    def _recording_updated(self, message: wire.RecordingUpdated) -> None:
        if self._recording is None:
            self.report_error("invalid_message", "recording is not enabled on this server (streaming.recording_dir is unset)")
            return
        self._recording.set_enabled(message.enabled)
        self._events.send(wire.RecordingState(enabled=self._recording.enabled))

    def report_error(self, code: wire.ErrorCode, message: str, *, retryable: bool = False) -> None:
        """Tell the client about a problem without ending the session."""
        self._events.error(code, message, retryable=retryable)

    # -- ending ----------------------------------------------------------

    async def request_stop(self) -> None:
        """End the stream on request (DELETE /v1/sessions/{id})."""
        if not self._finishing:
            self._events.send(wire.StreamComplete(reason="stop_requested"))
            await self._finish(SessionState.COMPLETE, CloseReason.NORMAL)

    async def expire(self) -> None:
        """End an idle session: its stream's end (when it was streaming), ``session_timeout``, then close."""
        if not self._finishing:
            timeout_s = self._services.streaming.session_timeout_seconds
            logger.info("session %s: idle for %ss, closing", self._session.short_id, timeout_s)
            self._complete_stream("stop_requested")
            self._events.send(wire.SessionTimeout(timeout_seconds=timeout_s))
            await self._finish(SessionState.TIMEOUT, CloseReason.TIMEOUT)

    async def client_left(self) -> None:
        """The transport lost its client; release everything without sending."""
        await self._finish(self._session.end_state_for_departure(), CloseReason.CLIENT_LEFT)

    async def shutdown(self) -> None:
        """The server is stopping: store where the stream stands (at a segment the client has seen),
        tell the client to resume elsewhere, close. The state and record stay for the next server."""
        if self._finishing:
            return
        if self._runner is not None and self._task is not None:
            await self._runner.suspend(wait_s=SUSPEND_WAIT_S)
            if self._finishing:  # the client left meanwhile: that end stands
                return
            await self._continuity.final_write()
        # The retryable error first: resuming clients take what follows it as the old connection's end,
        # not the session's (rtc_server/clients/resuming.py, web_client/app.js).
        self.report_error("gpu_unavailable", SHUTDOWN_MESSAGE, retryable=True)
        self._complete_stream("stop_requested")
        await self._finish(SessionState.ERROR, CloseReason.SHUTDOWN, keep=True)

    async def hand_over(self) -> None:
        """The client resumed this session on a new connection: end this one, leaving state and record to it."""
        if not self._finishing:
            self.report_error("session_rejected", "this session was resumed on another connection", retryable=False)
            await self._finish(SessionState.ERROR, CloseReason.NORMAL, keep=True)

    def _complete_stream(self, reason: wire.StreamCompleteReason) -> None:
        """``ltx2_stream_complete`` for a session whose stream started (it had ``ltx2_stream_start``)."""
        if self._session.state is SessionState.ACTIVE:
            self._events.send(wire.StreamComplete(reason=reason))

    async def _finish(self, target: SessionState, reason: CloseReason, *, keep: bool = False) -> None:
        if self._finishing:
            await self._closed.wait()
            return
        self._finishing = True
        keep = keep or self._continuity.unsent_resume  # a failed reconnection: the session stays resumable
        try:
            if self._task is not None and self._task is not asyncio.current_task() and not self._task.done():
                await cancel_and_wait(self._task)
            await self._side_tasks.cancel_all()
            self._session.end(target)
            self._admission.leave(self._session.id)
            try:
                await self._release_resources(keep=keep)
            finally:
                await self._sink.close(reason)  # even when cancelled meanwhile: the sink owns threads
        finally:
            if self._recording is not None:
                self._recording.close()  # after the transport: the last media it sent goes in
            self._closed.set()
            if self._on_closed is not None:
                self._on_closed(self)
            self._events.log("end", state=self._session.state.value, reason=reason.value, segments=self.segments_done)
            logger.info("session %s: ended as %s (%s)", self._session.short_id, self._session.state.value, reason.value)
            # Its parts hold callbacks into this controller: let go of them, so nothing waits for a GC pass.
            self._handlers = self._intake = self._runner = self._task = None

    async def _release_resources(self, *, keep: bool) -> None:
        # One by one, each failure logged: a broken store must not keep the GPU binding.
        try:
            await self._services.pool.release(self._session.id)
        except PoolError:
            logger.exception("session %s: releasing the pool binding failed", self._session.short_id)
        await self._continuity.close(delete=not keep)  # the record first: a resume in between finds nothing
        if self._runner is not None:
            await self._runner.close(keep_state=keep)

    async def _end(self, failure: SessionFailure, state: SessionState, *, tell_client: bool = True) -> None:
        if self._finishing:
            return
        if tell_client:
            self.report_error(failure.code, failure.message, retryable=failure.retryable)
            self._events.send(wire.StreamComplete(reason="error"))
        await self._finish(state, CloseReason.INVALID if failure.code == "invalid_message" else CloseReason.ERROR)

    # -- the session's life ----------------------------------------------

    async def _run(self) -> None:
        try:
            await self._sink.wait_connected()
            await self._admit()
            await self._bind()
            await self._stream()
        except asyncio.CancelledError:
            raise
        except PoolAcquireTimeout as exc:
            await self._no_worker(exc)
        except Exception as exc:  # noqa: BLE001  (the top of the session's task: every failure ends it, told)
            await self._end(failure_for(exc, label=f"session {self._session.short_id}"), SessionState.ERROR)

    async def _no_worker(self, exc: PoolAcquireTimeout) -> None:
        """No worker had room within the acquire timeout: ``error{gpu_unavailable, retryable}``, TIMEOUT.

        A stream that had started (its worker failed and no other took it back) also gets its end and
        stays resumable: its client may take it to another server."""
        if self._finishing:
            return
        failure = failure_for(exc, label=f"session {self._session.short_id}")
        logger.info("session %s: %s", self._session.short_id, failure.message)
        self.report_error(failure.code, failure.message, retryable=failure.retryable)
        streaming = self._session.state is SessionState.ACTIVE
        self._complete_stream("error")
        await self._finish(SessionState.TIMEOUT, CloseReason.REJECTED, keep=streaming)

    async def _admit(self) -> None:
        def on_position(position: int, depth: int) -> None:
            self._events.log("queue", position=position, queue_depth=depth)
            self._events.send(wire.QueueStatus(position=position, queue_depth=depth))

        if not self._admission.try_enter(self._session.id):
            self._session.transition(SessionState.QUEUED)
            await self._admission.wait(self._session.id, on_position)
        self._session.transition(SessionState.GPU_BINDING)
        on_position(0, self._admission.depth)

    async def _bind(self, *, after: str | None = None) -> None:
        """Bind to a worker and tell the client (again with ``after`` when its worker failed)."""
        assignment = await self._services.pool.acquire(self._session.id, timeout=self._acquire_timeout_s)
        if self._session.state is SessionState.GPU_BINDING:
            self._session.transition(SessionState.ACTIVE)
        reason = {"after": after} if after else {}
        self._events.log("gpu_assigned", gpu_id=assignment.gpu_id, worker_id=assignment.worker_id, **reason)
        logger.info("session %s: bound to %s", self._session.short_id, assignment.worker_id)
        timeout_s = self._services.streaming.session_timeout_seconds
        self._events.send(wire.GpuAssigned(gpu_id=assignment.gpu_id, session_timeout=timeout_s))
        if after is None:
            if (info := self._continuity.session_info()) is not None:
                self._events.send(info)  # right after gpu_assigned, once
            assert self._init is not None
            self._events.send(stream_start(self._init, self._services.defaults.sampling))
            if self._recording is not None and self._recording.enabled:
                self._events.send(wire.RecordingState(enabled=True))  # the owner knows it is recorded

    async def _stream(self) -> None:
        policy, intake, runner = self._policy, self._intake, self._runner
        assert policy is not None and intake is not None and runner is not None
        while True:
            while await self._may_generate(policy):
                choice = await intake.next_choice()
                if choice is not None:
                    await runner.generate(choice)
            await self._sink.drain()
            if policy.hold() is Hold.SEGMENT_CAP:  # a prompt during the drain may have taken a segment back
                break
        self._events.send(wire.StreamComplete(reason="segment_cap"))
        await self._finish(SessionState.COMPLETE, CloseReason.NORMAL)

    async def _may_generate(self, policy: GenerationPolicy) -> bool:
        """Wait until a segment may start (and the sink has room); False once the stream is over."""
        while (hold := policy.hold()) is not Hold.SEGMENT_CAP:
            if hold is None:
                await self._sink.wait_for_room()
                if policy.hold() is None:
                    return True
                continue
            self._changed.clear()
            await self._changed.wait()
        return False
