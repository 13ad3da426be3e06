"""Polling for a condition in async tests: fail with a message after a timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["wait_until"]


async def wait_until(predicate: Callable[[], object], timeout: float, message: str, *, poll_s: float = 0.05) -> None:
    """Return once ``predicate()`` is true; AssertionError(``message``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        await asyncio.sleep(poll_s)
