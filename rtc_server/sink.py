"""What a transport gives the session controller: where events and frames go."""

from __future__ import annotations

import enum
from typing import Protocol

import numpy as np

from rtc_server.protocol import ServerMessage

__all__ = ["CloseReason", "SessionSink"]


class CloseReason(enum.Enum):
    """Why a session's transport is being closed; transports map it to their own codes."""

    NORMAL = "normal"
    ERROR = "error"
    TIMEOUT = "timeout"
    REJECTED = "rejected"
    INVALID = "invalid"
    CLIENT_LEFT = "client_left"
    SHUTDOWN = "shutdown"


class SessionSink(Protocol):
    """A transport's side of one session.

    ``send_event`` never blocks (it queues); ``send_segment`` returns once the
    segment is accepted for delivery; ``wait_for_room`` implements look-ahead
    by returning when another segment may be generated.
    """

    def send_event(self, message: ServerMessage) -> None: ...

    async def wait_for_room(self) -> None: ...

    async def send_segment(self, segment_idx: int, frames: np.ndarray) -> None: ...

    async def drain(self) -> None: ...

    async def close(self, reason: CloseReason) -> None: ...
