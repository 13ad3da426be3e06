"""Where one session's events go: the client (through the transport's sink), the session log, the metrics."""

from __future__ import annotations

from typing import Any

from rtc_server.metrics import ServiceMetrics
from rtc_server.protocol import ErrorCode, ErrorMessage, ServerMessage
from rtc_server.session import Session
from rtc_server.session_log import SessionLogger
from rtc_server.sink import SessionSink

__all__ = ["SessionEvents"]


class SessionEvents:
    """Sends, logs and counts what happens in one session."""

    def __init__(self, *, session: Session, sink: SessionSink, log: SessionLogger, metrics: ServiceMetrics) -> None:
        self._session = session
        self._sink = sink
        self._log = log
        self.metrics = metrics

    def send(self, message: ServerMessage) -> None:
        """Queue a message for the client (never blocks)."""
        self._sink.send_event(message)

    def log(self, event: str, **fields: Any) -> None:
        """One line in the session's JSONL log."""
        self._log.event(self._session.id, event, **fields)

    def error(self, code: ErrorCode, message: str, *, retryable: bool = False) -> None:
        """Tell the client about a problem (the session goes on unless the caller ends it)."""
        self.log("error", code=code, message=message)
        self.metrics.errors.labels(code=code).inc()
        self.send(ErrorMessage(code=code, message=message, retryable=retryable))
