"""The live sessions of one server: admission, lookup, the idle reaper, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from rtc_server.config import ServiceConfig
from rtc_server.controller import SessionController, SessionServices
from rtc_server.delivery import DeliveryLog
from rtc_server.session import SessionManager, SessionRejected
from rtc_server.sink import SessionSink

__all__ = ["SessionRegistry"]

logger = logging.getLogger(__name__)


class SessionRegistry:
    """Owns every SessionController of the server and the task that expires idle ones."""

    def __init__(self, *, config: ServiceConfig, services: SessionServices) -> None:
        self._config = config
        self._services = services
        # Streaming sessions plus those waiting in the admission queue; beyond that, reject.
        self._manager = SessionManager(
            max_sessions=services.admission.slots + config.streaming.max_queue,
            session_timeout_seconds=config.streaming.session_timeout_seconds,
        )
        self._controllers: dict[str, SessionController] = {}
        self._reaper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._controllers)

    @property
    def max_sessions(self) -> int:
        return self._manager.max_sessions

    def open(self, *, transport: str, sink: SessionSink) -> SessionController:
        """Admit a session for ``sink``; raises SessionRejected when the server is full or not ready."""
        metrics = self._services.metrics
        if not self._services.pool.ready:
            metrics.admission_rejections.labels(reason="warming").inc()
            raise SessionRejected("no GPU worker is ready yet", code="gpu_unavailable")
        try:
            session = self._manager.create(transport=transport)
        except SessionRejected:
            metrics.admission_rejections.labels(reason="full").inc()
            raise
        delivery = DeliveryLog(
            transport=transport, metrics=metrics, keep_frames=self._config.streaming.frame_log_size
        )
        controller = SessionController(
            session=session, services=self._services, sink=sink, delivery=delivery, on_closed=self._forget
        )
        self._controllers[session.id] = controller
        logger.info("session %s: opened over %s (%d live)", session.short_id, transport, len(self._controllers))
        return controller

    @property
    def services(self) -> SessionServices:
        return self._services

    def get(self, session_id: str) -> SessionController | None:
        return self._controllers.get(session_id)

    def _forget(self, controller: SessionController) -> None:
        self._controllers.pop(controller.session.id, None)
        self._manager.remove(controller.session.id)

    def start_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_forever(), name="idle-reaper")

    async def _reap_forever(self) -> None:
        interval = self._config.streaming.reaper_interval_seconds
        while True:
            await asyncio.sleep(interval)
            for session in self._manager.timed_out():
                controller = self._controllers.get(session.id)
                if controller is None:
                    continue
                try:
                    await controller.expire()
                except Exception:
                    logger.exception("session %s: expiring failed", session.short_id)

    async def close(self) -> None:
        """Stop the reaper, then end every session one by one. Idempotent."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for controller in list(self._controllers.values()):
            try:
                await controller.shutdown()
            except Exception:
                logger.exception("session %s: shutdown failed", controller.session.short_id)
