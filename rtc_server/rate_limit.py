"""A token bucket: how much of a per-client budget is left, and when more will be. Pure code, no asyncio.

Tokens accrue at ``rate_per_s`` up to ``burst``; an action costing ``cost`` tokens may go ahead
when that many are there. The bucket starts full, so a client may spend its whole burst at once
and then one action per ``cost / rate_per_s`` seconds. Time comes from an injected clock
(``time.monotonic`` by default), so tests drive it by hand.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["TokenBucket"]

_EPSILON = 1e-9  # tokens; absorbs float rounding so a bucket refilled to exactly ``cost`` allows it


def _positive_finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


class TokenBucket:
    """A budget of ``burst`` tokens refilled at ``rate_per_s``; not thread-safe (one owner)."""

    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate_per_s = _positive_finite("rate_per_s", rate_per_s)
        self._burst = _positive_finite("burst", burst)
        self._clock = clock
        self._tokens = self._burst
        self._updated = clock()

    @property
    def rate_per_s(self) -> float:
        """Tokens added per second."""
        return self._rate_per_s

    @property
    def burst(self) -> float:
        """The most tokens the bucket holds (and holds at the start)."""
        return self._burst

    @property
    def tokens(self) -> float:
        """Tokens there now."""
        self._refill()
        return self._tokens

    def try_take(self, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if they are there (True); else take nothing (False)."""
        cost = self._checked_cost(cost)
        self._refill()
        if self._tokens + _EPSILON < cost:
            return False
        self._tokens = max(0.0, self._tokens - cost)
        return True

    def retry_after_s(self, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens will be there (0.0 when they are now); takes nothing."""
        cost = self._checked_cost(cost)
        self._refill()
        missing = cost - self._tokens
        return 0.0 if missing <= _EPSILON else missing / self._rate_per_s

    def _checked_cost(self, cost: float) -> float:
        cost = _positive_finite("cost", cost)
        if cost > self._burst + _EPSILON:
            # It could never be paid: waiting would not help, so the caller has a bug.
            raise ValueError(f"cost {cost!r} exceeds the bucket's burst of {self._burst!r}")
        return cost

    def _refill(self) -> None:
        now = self._clock()
        # max(): a clock that steps back adds nothing rather than draining the bucket.
        elapsed = max(0.0, now - self._updated)
        self._updated = max(now, self._updated)
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate_per_s)
