"""Per-client limits: sessions open at once and session starts per minute, per token subject or address.

Pure bookkeeping (a clock is injected). A client over a limit is told when to retry.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from rtc_server.rate_limit import TokenBucket

__all__ = ["ClientLimits", "TooManyRequests"]

SECONDS_PER_MINUTE = 60.0
PRUNE_ABOVE_CLIENTS = 4096  # clients remembered before idle ones are forgotten


class TooManyRequests(Exception):
    """A client over its share; ``retry_after_s`` says when it may try again."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def retry_after_header(self) -> str:
        """Whole seconds for ``Retry-After``, at least 1."""
        return str(max(1, math.ceil(self.retry_after_s)))


@dataclass
class _Client:
    starts: TokenBucket
    sessions: int = 0


class ClientLimits:
    """Counts each client's sessions and session starts."""

    def __init__(
        self, *, sessions_per_client: int, starts_per_minute: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._sessions_per_client = sessions_per_client
        self._starts_per_minute = starts_per_minute
        self._clock = clock
        self._clients: dict[str, _Client] = {}

    def __len__(self) -> int:
        return len(self._clients)

    def sessions_of(self, client: str) -> int:
        entry = self._clients.get(client)
        return entry.sessions if entry is not None else 0

    def open(self, client: str, *, max_sessions: int | None = None) -> None:
        """Count a new session of ``client`` (``max_sessions``: its token's own, lower, cap); TooManyRequests when over."""
        entry = self._entry(client)
        cap = self._sessions_per_client if max_sessions is None else min(max_sessions, self._sessions_per_client)
        if entry.sessions >= cap:
            raise TooManyRequests(
                f"this client already has {entry.sessions} sessions (at most {cap})", retry_after_s=5.0
            )
        if not entry.starts.try_take():
            retry_s = entry.starts.retry_after_s()
            raise TooManyRequests(
                f"too many session starts from this client (at most {self._starts_per_minute} a minute)",
                retry_after_s=retry_s,
            )
        entry.sessions += 1

    def close(self, client: str) -> None:
        """A session of ``client`` ended; a client with none left and a full bucket is forgotten."""
        entry = self._clients.get(client)
        if entry is None:
            return
        entry.sessions = max(0, entry.sessions - 1)
        if self._idle(entry):
            del self._clients[client]

    @staticmethod
    def _idle(entry: _Client) -> bool:
        """No session and a full bucket: forgetting it changes nothing."""
        return entry.sessions == 0 and entry.starts.tokens >= entry.starts.burst

    def _prune(self) -> None:
        for client in [c for c, e in self._clients.items() if self._idle(e)]:
            del self._clients[client]

    def _entry(self, client: str) -> _Client:
        entry = self._clients.get(client)
        if entry is None and len(self._clients) >= PRUNE_ABOVE_CLIENTS:
            self._prune()
        if entry is None:
            bucket = TokenBucket(
                rate_per_s=self._starts_per_minute / SECONDS_PER_MINUTE,
                burst=self._starts_per_minute,
                clock=self._clock,
            )
            entry = self._clients[client] = _Client(bucket)
        return entry
