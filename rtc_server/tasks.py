"""Owning background tasks: each is cancelled and awaited by its owner, its failure logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["TaskSet", "cancel_and_wait"]

logger = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it; a failure while it unwinds is logged, never raised."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        logger.exception("%s failed while being cancelled", task.get_name())


class TaskSet:
    """Side tasks of one owner (a session's store I/O and LLM calls), cancelled together at its end."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` on the side; a failure is logged with its traceback."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s: side task %s failed", self._label, task.get_name(), exc_info=task.exception())

    async def cancel_all(self) -> None:
        """Cancel every task one by one and wait for each (the caller's own task is left alone)."""
        for task in list(self._tasks):
            if task is not asyncio.current_task() and not task.done():
                await cancel_and_wait(task)
