"""The live sessions of one server, in one place: capacity, admission, lookup, the idle reaper, shutdown.

Transports open sessions here and look them up by id; controllers take and give back their
streaming slot here (FIFO, with queue positions); the metrics read the live counts here. A session
resuming an earlier one takes its id here, ending an older copy of it first.

Graceful shutdown (``drain``): from its first moment new sessions are refused (``gpu_unavailable``,
retryable) and readiness says "draining"; then every live session stores where its stream stands and
is told to resume elsewhere (``error{gpu_unavailable, retryable}``, then, for a session that was
streaming, ``ltx2_stream_complete{stop_requested}``). Sessions are suspended side by side (each may
wait for the segment its client is watching) and awaited one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from rtc_server.admission import AdmissionQueue, PositionCallback
from rtc_server.auth import Principal
from rtc_server.client_limits import ClientLimits, TooManyRequests
from rtc_server.config import ServiceConfig
from rtc_server.controller import SessionController
from rtc_server.delivery import DeliveryLog
from rtc_server.metrics import LiveCounts, ServiceMetrics
from rtc_server.process_memory import resident_bytes
from rtc_server.session import Session, SessionRejected, SessionState
from rtc_server.session_continuity import SHUTDOWN_MESSAGE
from rtc_server.session_services import SessionServices
from rtc_server.sink import SessionSink

__all__ = ["Capacity", "SessionRegistry"]

logger = logging.getLogger(__name__)

# Sessions that have not started (offers waiting for ICE, sockets waiting for their init) are held
# against their client's share; this bounds them all together, whoever opens them.
PENDING_FACTOR = 4


@dataclass(frozen=True)
class Capacity:
    """How many sessions a server takes: streaming at once (``slots``) and waiting for a slot (``queue``)."""

    slots: int
    queue: int

    @property
    def total(self) -> int:
        """Sessions open at once; beyond it new ones are rejected."""
        return self.slots + self.queue

    @classmethod
    def for_config(cls, config: ServiceConfig) -> Capacity:
        """The configured limit, and no more streaming sessions than the workers can hold."""
        slots = config.streaming.max_sessions
        if config.pool.backend == "subprocess":
            slots = min(slots, config.pool.num_workers * config.pool.sessions_per_worker)
        return cls(slots=slots, queue=config.streaming.max_queue)


class SessionRegistry:
    """Owns every SessionController of the server, their admission slots, and the task that expires idle ones."""

    def __init__(
        self, *, config: ServiceConfig, services: SessionServices, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._services = services
        self._clock = clock
        self.capacity = Capacity.for_config(config)
        self._admission = AdmissionQueue(slots=self.capacity.slots)
        self._controllers: dict[str, SessionController] = {}
        self._owners: dict[str, str] = {}
        self._clients = ClientLimits(
            sessions_per_client=config.limits.sessions_per_client, starts_per_minute=config.limits.offers_per_minute, clock=clock
        )
        self._reaper: asyncio.Task[None] | None = None
        self._draining = False

    def __len__(self) -> int:
        return len(self._controllers)

    @property
    def services(self) -> SessionServices:
        return self._services

    # -- transports --------------------------------------------------------

    def open(
        self, *, transport: str, sink: SessionSink, client: str, principal: Principal | None = None
    ) -> SessionController:
        """Register a session of ``client`` (token subject, else address) for ``sink``.

        SessionRejected when the server is full, warming or at its memory bound; TooManyRequests
        when the client is over its own share. Only sessions that started (connected, with a valid
        init) count against the server's capacity: offers that never connect count against their
        client alone.
        """
        metrics = self._services.metrics
        self._check_room(metrics)
        try:
            self._clients.open(client, max_sessions=principal.max_sessions if principal else None)
        except TooManyRequests:
            metrics.admission_rejections.labels(reason="client").inc()
            raise
        session = Session(clock=self._clock, transport=transport, client_id=None)
        delivery = DeliveryLog(transport=transport, metrics=metrics, keep_frames=self._config.streaming.frame_log_size)
        controller = SessionController(
            session=session,
            services=self._services,
            sink=sink,
            delivery=delivery,
            admission=self,
            on_closed=self._forget,
            directory=self,
            acquire_timeout_s=self._config.pool.acquire_timeout_seconds,
        )
        self._controllers[session.id] = controller
        self._owners[session.id] = client
        logger.info("session %s: opened over %s (%d live)", session.short_id, transport, len(self._controllers))
        return controller

    def _check_room(self, metrics: ServiceMetrics) -> None:
        if self._draining:
            metrics.admission_rejections.labels(reason="draining").inc()
            raise SessionRejected(SHUTDOWN_MESSAGE, code="gpu_unavailable")
        if not self._services.pool.ready:
            metrics.admission_rejections.labels(reason="warming").inc()
            raise SessionRejected("no GPU worker is ready yet", code="gpu_unavailable")
        started = sum(1 for c in self._controllers.values() if c.session.state is not SessionState.INITIALIZING)
        if started >= self.capacity.total or len(self._controllers) >= PENDING_FACTOR * self.capacity.total:
            metrics.admission_rejections.labels(reason="full").inc()
            raise SessionRejected(f"server is full: {self.capacity.total} sessions are streaming or waiting")
        if self._over_memory_bound():
            metrics.admission_rejections.labels(reason="memory").inc()
            raise SessionRejected("server is at its memory bound; try again shortly")

    def owner(self, session_id: str) -> str | None:
        """The client (token subject, else address) that opened a live session."""
        return self._owners.get(session_id)

    def _over_memory_bound(self) -> bool:
        bound = self._config.limits.max_rss_bytes
        if bound is None:
            return False
        resident = resident_bytes()
        return resident is not None and resident > bound

    def get(self, session_id: str) -> SessionController | None:
        return self._controllers.get(session_id)

    async def hand_over(self, session_id: str) -> bool:
        """End the live session ``session_id`` here (its client resumed it on a new connection); True if one was."""
        controller = self._controllers.get(session_id)
        if controller is None or controller.closed:
            return False
        logger.info("session %s: resumed on a new connection, ending the old one", controller.session.short_id)
        await controller.hand_over()
        return True

    def rename(self, old_id: str, session_id: str) -> None:
        """The live session ``old_id`` resumed session ``session_id`` and goes by that id from now on."""
        controller = self._controllers.pop(old_id)
        owner = self._owners.pop(old_id, None)
        controller.session.id = session_id
        self._controllers[session_id] = controller
        if owner is not None:
            self._owners[session_id] = owner

    def _forget(self, controller: SessionController) -> None:
        self._controllers.pop(controller.session.id, None)
        owner = self._owners.pop(controller.session.id, None)
        if owner is not None:
            self._clients.close(owner)

    # -- admission (what controllers use) ---------------------------------

    @property
    def depth(self) -> int:
        """Sessions waiting for a streaming slot."""
        return self._admission.depth

    @property
    def active(self) -> int:
        """Sessions holding a streaming slot."""
        return self._admission.active

    def try_enter(self, session_id: str) -> bool:
        return self._admission.try_enter(session_id)

    async def wait(self, session_id: str, on_position: PositionCallback) -> None:
        await self._admission.wait(session_id, on_position)

    def leave(self, session_id: str) -> None:
        self._admission.leave(session_id)

    # -- what the metrics read ----------------------------------------------

    def live_counts(self) -> LiveCounts:
        pool = self._services.pool.status()
        return LiveCounts(
            sessions_active=self._admission.active,
            sessions_queued=self._admission.depth,
            workers_total=pool.total_gpus,
            workers_ready=pool.ready_workers,
            workers_busy=pool.busy_workers,
        )

    # -- idle sessions and shutdown -------------------------------------------

    def timed_out(self, now: float | None = None) -> list[SessionController]:
        """Live sessions idle for longer than the session timeout."""
        now = self._clock() if now is None else now
        limit = self._config.streaming.session_timeout_seconds
        return [
            c for c in self._controllers.values() if not c.session.state.terminal and c.session.idle_for(now) > limit
        ]

    def start_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_forever(), name="idle-reaper")

    async def _reap_forever(self) -> None:
        interval = self._config.streaming.reaper_interval_seconds
        while True:
            await asyncio.sleep(interval)
            for controller in self.timed_out():
                try:
                    await controller.expire()
                except Exception:
                    logger.exception("session %s: expiring failed", controller.session.short_id)

    @property
    def draining(self) -> bool:
        """True once shutdown began: new sessions are refused."""
        return self._draining

    async def drain(self) -> None:
        """Refuse new sessions, then move every live one elsewhere (see the module docstring). Idempotent."""
        self._draining = True
        await self._stop_reaper()
        controllers = list(self._controllers.values())
        if controllers:
            logger.info("shutting down: %d sessions store their place and move to another server", len(controllers))
        # Started together, so the waits for segments being watched overlap; awaited one by one.
        tasks = [asyncio.create_task(c.shutdown(), name=f"suspend-{c.session.short_id}") for c in controllers]
        for controller, task in zip(controllers, tasks, strict=True):
            try:
                await task
            except Exception:
                logger.exception("session %s: shutdown failed", controller.session.short_id)

    async def close(self) -> None:
        """Stop the reaper, then end every session one by one. Idempotent."""
        await self._stop_reaper()
        for controller in list(self._controllers.values()):
            try:
                await controller.shutdown()
            except Exception:
                logger.exception("session %s: shutdown failed", controller.session.short_id)

    async def _stop_reaper(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
