"""Session lifecycle: the state machine of protocol.md.

Pure code: no asyncio, no I/O. The running side (controllers, capacity, the idle
reaper) lives in ``registry.py``.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "InvalidSessionTransition",
    "Session",
    "SessionRejected",
    "SessionState",
]


class SessionState(enum.Enum):
    """Where a session is in its life; the last four are terminal."""

    INITIALIZING = "initializing"
    QUEUED = "queued"
    GPU_BINDING = "gpu_binding"
    ACTIVE = "active"
    COMPLETE = "complete"
    ERROR = "error"
    TIMEOUT = "timeout"
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({SessionState.COMPLETE, SessionState.ERROR, SessionState.TIMEOUT, SessionState.REJECTED})

_TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.INITIALIZING: frozenset(
        {SessionState.QUEUED, SessionState.GPU_BINDING, SessionState.REJECTED, SessionState.ERROR}
    ),
    SessionState.QUEUED: frozenset(
        {SessionState.GPU_BINDING, SessionState.ERROR, SessionState.TIMEOUT, SessionState.REJECTED}
    ),
    SessionState.GPU_BINDING: frozenset({SessionState.ACTIVE, SessionState.ERROR, SessionState.TIMEOUT}),
    SessionState.ACTIVE: frozenset(
        {SessionState.ACTIVE, SessionState.COMPLETE, SessionState.ERROR, SessionState.TIMEOUT}
    ),
}


class InvalidSessionTransition(RuntimeError):
    """An edge the state machine does not have; the message names both states."""


class SessionRejected(RuntimeError):
    """The server cannot take another session now.

    ``retryable`` is what the ``error`` message says, as in the original: ``session_rejected`` (the
    server is full) is not retryable, ``gpu_unavailable`` (warming up, draining) is; both close
    WebSockets with 1013 and answer offers with 503 and ``Retry-After``.
    """

    def __init__(
        self, message: str, *, code: Literal["session_rejected", "gpu_unavailable"] = "session_rejected",
        retry_after_seconds: int = 5,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_seconds = retry_after_seconds
        self.retryable = code != "session_rejected"


@dataclass(eq=False)
class Session:
    """One client's session: identity, lifecycle state and idle bookkeeping."""

    clock: Callable[[], float] = time.monotonic
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: SessionState = SessionState.INITIALIZING
    client_id: str | None = None
    transport: str = "webrtc"
    created_at: float = 0.0
    last_activity: float = 0.0

    def __post_init__(self) -> None:
        self.created_at = self.last_activity = self.clock()

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def transition(self, target: SessionState) -> None:
        """Move to ``target``; raise InvalidSessionTransition on an edge the machine lacks."""
        if target not in _TRANSITIONS.get(self.state, frozenset()):
            raise InvalidSessionTransition(f"session {self.short_id}: {self.state.value} -> {target.value} is not allowed")
        self.state = target
        self.touch()

    def end(self, target: SessionState) -> None:
        """Enter terminal ``target``, or error where ``target`` is not reachable (a session still
        initialising cannot "complete"); a session already ended stays as it is."""
        if self.state.terminal:
            return
        self.transition(target if target in _TRANSITIONS[self.state] else SessionState.ERROR)

    def end_state_for_departure(self) -> SessionState:
        """The terminal state for a session whose client left: complete once streaming, else error."""
        return SessionState.COMPLETE if self.state is SessionState.ACTIVE else SessionState.ERROR

    def touch(self) -> None:
        """Record activity, postponing the idle timeout."""
        self.last_activity = self.clock()

    def idle_for(self, now: float | None = None) -> float:
        return (self.clock() if now is None else now) - self.last_activity
