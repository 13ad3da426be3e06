"""Admission: a fixed number of active slots and a FIFO queue of sessions waiting for one.

Waiters are told their position when they join and whenever it changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["AdmissionQueue", "PositionCallback"]

PositionCallback = Callable[[int, int], None]
"""Called as ``on_position(position, queue_depth)``; position 1 is next in line."""


@dataclass
class _Waiter:
    session_id: str
    granted: asyncio.Future[None]
    on_position: PositionCallback


class AdmissionQueue:
    """Grants up to ``slots`` sessions at once; the rest wait first come, first served."""

    def __init__(self, *, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self._slots = slots
        self._active: set[str] = set()
        self._waiting: list[_Waiter] = []

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def depth(self) -> int:
        """Sessions waiting for a slot."""
        return len(self._waiting)

    def try_enter(self, session_id: str) -> bool:
        """Take a free slot now if there is one and nobody is waiting ahead."""
        if session_id in self._active:
            return True
        if len(self._active) < self._slots and not self._waiting:
            self._active.add(session_id)
            return True
        return False

    async def wait(self, session_id: str, on_position: PositionCallback) -> None:
        """Queue until a slot is granted; cancelling the wait leaves the queue."""
        if self.try_enter(session_id):
            return
        waiter = _Waiter(session_id, asyncio.get_running_loop().create_future(), on_position)
        self._waiting.append(waiter)
        on_position(len(self._waiting), len(self._waiting))
        try:
            await waiter.granted
        except asyncio.CancelledError:
            self.leave(session_id)
            raise

    def leave(self, session_id: str) -> None:
        """Give up a slot or a place in the queue; unknown ids are a no-op."""
        if session_id in self._active:
            self._active.discard(session_id)
            self._grant_next()
            return
        remaining = [w for w in self._waiting if w.session_id != session_id]
        if len(remaining) != len(self._waiting):
            self._waiting = remaining
            self._announce_positions()

    def _grant_next(self) -> None:
        while self._waiting and len(self._active) < self._slots:
            waiter = self._waiting.pop(0)
            if waiter.granted.done():
                continue
            self._active.add(waiter.session_id)
            waiter.granted.set_result(None)
        self._announce_positions()

    def _announce_positions(self) -> None:
        depth = len(self._waiting)
        for position, waiter in enumerate(self._waiting, start=1):
            waiter.on_position(position, depth)
