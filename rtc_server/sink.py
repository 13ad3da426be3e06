"""What a transport gives the session controller: where events and frames go."""

from __future__ import annotations

import enum
from typing import Protocol

import numpy as np

from rtc_server.protocol import ServerMessage

__all__ = ["CloseReason", "SegmentOutput", "SessionSink", "TeeOutput"]


class CloseReason(enum.Enum):
    """Why a session's transport is being closed; transports map it to their own codes."""

    NORMAL = "normal"
    ERROR = "error"
    TIMEOUT = "timeout"
    REJECTED = "rejected"
    INVALID = "invalid"
    CLIENT_LEFT = "client_left"
    SHUTDOWN = "shutdown"


class SegmentOutput(Protocol):
    """One segment's frames on their way to the client, put chunk by chunk as they are made."""

    @property
    def delivered(self) -> bool:
        """True once any of its frames has left for the client: from then on it plays."""
        ...

    def put_frames(self, frames: np.ndarray, audio: np.ndarray | None = None) -> None:
        """Queue ``(n, H, W, 3)`` frames for delivery with their audio (``(samples, channels)`` float32
        owning exactly those frames, see gpu/audio.py; None without sound); never blocks.

        Frames arrive in order, from the segment's first, each exactly once."""
        ...

    async def finish(self) -> None:
        """Every frame was put; returns once the segment is accepted for delivery."""
        ...

    def retract(self) -> bool:
        """Take the segment back if none of it was delivered (its frames are dropped); False otherwise."""
        ...


class SessionSink(Protocol):
    """A transport's side of one session.

    ``send_event`` never blocks (it queues); ``wait_for_room`` implements look-ahead
    by returning when another segment may be generated; ``open_segment`` starts a
    segment whose frames then flow through the returned output as they are made.
    """

    def send_event(self, message: ServerMessage) -> None: ...

    async def wait_connected(self) -> None:
        """Return once the client can receive media (a WebRTC peer has connected); a session takes a
        streaming slot only then, so offers that never connect squat nothing."""
        ...

    async def wait_for_room(self) -> None: ...

    def open_segment(self, segment_idx: int, *, num_frames: int) -> SegmentOutput: ...

    async def drain(self) -> None: ...

    async def close(self, reason: CloseReason) -> None: ...


class TeeOutput:
    """A segment's frames to the owner's output and to a follower's (viewers'): a SegmentOutput.

    The owner's output decides what is delivered, finished and taken back; the follower is told to
    finish and take back with it, and never holds the owner up (its ``finish`` does not wait for it
    to be done, and a follower that cannot take its frames back keeps them)."""

    def __init__(self, owner: SegmentOutput, follower: SegmentOutput) -> None:
        self._owner = owner
        self._follower = follower

    @property
    def delivered(self) -> bool:
        return self._owner.delivered

    def put_frames(self, frames: np.ndarray, audio: np.ndarray | None = None) -> None:
        self._owner.put_frames(frames, audio)
        self._follower.put_frames(frames, audio)

    async def finish(self) -> None:
        await self._follower.finish()
        await self._owner.finish()

    def retract(self) -> bool:
        if not self._owner.retract():
            return False
        self._follower.retract()
        return True
