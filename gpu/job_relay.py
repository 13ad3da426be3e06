"""One segment's progress and frames, carried to the caller's callbacks on the event loop thread.

A pool runs a backend off the loop (a thread, a worker process); the caller's ``on_step`` and
``on_frames`` run on the loop, in order, until the job is abandoned. Once abandoned (the caller was
cancelled, or one of its callbacks raised) no callback runs again, and a backend still working in a
thread gets SegmentCancelled at its next step or chunk.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from gpu.generator import FrameCallback, SegmentCancelled, StepCallback

__all__ = ["JobRelay"]

logger = logging.getLogger(__name__)


class JobRelay:
    """Delivers one job's callbacks on the loop thread and tells the backend when nobody listens.

    The job counts as abandoned from the moment ``owner`` (the task awaiting it) is asked to cancel.
    Loop side: ``step`` and ``frames``. Thread side (a backend in an executor thread):
    ``step_from_thread`` and ``frames_from_thread``, which hop onto the loop in call order.
    An exception from ``on_frames`` (frames cannot be dropped silently) or SegmentCancelled from
    ``on_step`` abandons the job and is kept in ``failure`` for the caller to raise; any other
    exception from ``on_step`` is logged and the segment goes on.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        label: str,
        on_step: StepCallback | None = None,
        on_frames: FrameCallback | None = None,
        on_abandon: Callable[[], None] | None = None,
        owner: asyncio.Task[Any] | None = None,
    ) -> None:
        self._loop = loop
        self._label = label
        self._on_step = on_step
        self._on_frames = on_frames
        self._on_abandon = on_abandon
        # Set on the loop thread, read by executor threads.
        self._abandoned = threading.Event()
        self._failure: BaseException | None = None
        # The task awaiting the job: once it is asked to cancel, callbacks already queued on the
        # loop must not run, though the CancelledError has not reached it yet.
        self._owner = owner
        self._owner_cancels = owner.cancelling() if owner is not None else 0

    @property
    def abandoned(self) -> bool:
        return self._abandoned.is_set()

    @property
    def failure(self) -> BaseException | None:
        """What a callback raised that ended the job, if anything."""
        return self._failure

    @property
    def streams_frames(self) -> bool:
        """Whether the caller takes frames through ``on_frames`` (rather than in the result)."""
        return self._on_frames is not None

    def abandon(self) -> None:
        """Stop delivering (loop thread); idempotent. ``on_abandon`` runs on the first call only."""
        if self._abandoned.is_set():
            return
        self._abandoned.set()
        if self._on_abandon is not None:
            self._on_abandon()

    def raise_failure(self) -> None:
        """Raise what a callback raised, if one ended the job."""
        if self._failure is not None:
            raise self._failure

    # Loop side.

    def _delivering(self) -> bool:
        if self._abandoned.is_set():
            return False
        if self._owner is not None and self._owner.cancelling() > self._owner_cancels:
            self.abandon()
            return False
        return True

    def step(self, step: int, total: int) -> None:
        """Call ``on_step`` unless the job is abandoned."""
        if self._on_step is None or not self._delivering():
            return
        try:
            self._on_step(step, total)
        except SegmentCancelled as exc:
            self._fail(exc)
        except Exception:  # a broken progress callback must not kill the segment
            logger.exception("%s: on_step callback failed", self._label)

    def frames(self, chunk: np.ndarray, audio: np.ndarray | None = None) -> None:
        """Call ``on_frames`` unless the job is abandoned."""
        if self._on_frames is None or not self._delivering():
            return
        try:
            self._on_frames(chunk, audio)
        except Exception as exc:  # noqa: BLE001  (carried to the caller, who raises it from run())
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        self.abandon()

    # Thread side.

    def step_from_thread(self, step: int, total: int) -> None:
        """From a backend thread: queue ``step`` on the loop; SegmentCancelled once abandoned."""
        self._check()
        if self._on_step is not None:
            self._call_soon(self.step, step, total)

    def frames_from_thread(self, chunk: np.ndarray, audio: np.ndarray | None = None) -> None:
        """From a backend thread: queue ``chunk`` (and its audio) on the loop; SegmentCancelled once abandoned.

        No copy: backends hand over frames they no longer touch (see ``FrameCallback``)."""
        self._check()
        if self._on_frames is not None:
            self._call_soon(self.frames, chunk, audio)

    def _check(self) -> None:
        if self._abandoned.is_set():
            raise SegmentCancelled(f"{self._label}: the segment was abandoned")

    def _call_soon(self, callback: Callable[..., None], *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError as exc:  # the loop is closed: the caller is gone, so stop the backend
            raise SegmentCancelled(f"{self._label}: the event loop is closed") from exc
