"""The control-event log shared by the headless clients."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

__all__ = ["EventLog"]


class EventLog:
    """Server events in arrival order, with a wait for the first one matching a condition."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._event_added = asyncio.Event()
        self.on_event: Callable[[dict[str, Any]], None] | None = None  # called with each event as it arrives

    def record_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self._event_added.set()
        if self.on_event is not None:
            self.on_event(event)

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    async def wait_for_event(
        self, kind: str, predicate: Callable[[dict[str, Any]], bool] | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """The first event of ``kind`` (matching ``predicate``), waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event.get("type") == kind and (predicate is None or predicate(event)):
                    return event
            seen = len(self.events)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {kind!r} event within {timeout}s; got {[e.get('type') for e in self.events]}")
            self._event_added.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event_added.wait(), remaining)
