"""Replicas, their health state machine, and the rule that picks one for a new session. Plain code, no I/O.

State machine per replica (N = ``failure_threshold``, M = ``recovery_threshold``)::

    UNKNOWN --(first success)--> HEALTHY --(N failures in a row)--> UNHEALTHY
       |                            ^                                   |
       +--(N failures in a row)-----|------------> UNHEALTHY            |
                                    +-----(M successes in a row)--------+

Results come from the periodic probes and, between them, from the requests the router relays: a
replica that refuses a connection counts a failure at once (passive health).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from rtc_server.router.config import ReplicaEndpoint

__all__ = ["ProbeResult", "Replica", "ReplicaRegistry", "ReplicaState"]


class ReplicaState(enum.Enum):
    UNKNOWN = "unknown"  # not probed successfully yet, and not failed N times either
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class ProbeResult:
    """One probe of one replica: whether it answered, and the free session slots its /status reported."""

    ok: bool
    latency_ms: float | None = None
    error: str | None = None
    free_slots: int | None = None  # None: the replica did not say (an older server, or /status unreadable)
    session_capacity: int | None = None


class Replica:
    """One replica's live health, updated by probe results (``record``) and read by selection."""

    def __init__(
        self,
        endpoint: ReplicaEndpoint,
        *,
        failure_threshold: int = 3,
        recovery_threshold: int = 2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.endpoint = endpoint
        self._failure_threshold = failure_threshold
        self._recovery_threshold = recovery_threshold
        self._clock = clock
        self.state = ReplicaState.UNKNOWN
        self.consecutive_failures = 0
        self.consecutive_successes = 0
        self.last_probe_at: float | None = None  # unix seconds
        self.last_ok_at: float | None = None
        self.last_latency_ms: float | None = None
        self.last_error: str | None = None
        self.free_slots: int | None = None  # as last reported (or 0 after the replica refused a session as full)
        self.session_capacity: int | None = None
        self._placed_since_probe = 0

    @property
    def url(self) -> str:
        return self.endpoint.url

    @property
    def primary(self) -> bool:
        return self.endpoint.primary

    @property
    def is_healthy(self) -> bool:
        return self.state is ReplicaState.HEALTHY

    @property
    def has_free_slot(self) -> bool:
        """False only when the replica said it has no room; an unknown count is given the benefit of the doubt."""
        return self.free_slots is None or self.free_slots > 0

    @property
    def estimated_free_slots(self) -> int | None:
        """The reported free slots less the sessions placed here since that report (None: not reported)."""
        if self.free_slots is None:
            return None
        return max(0, self.free_slots - self._placed_since_probe)

    def record(self, result: ProbeResult) -> ReplicaState:
        """Apply one probe result; returns the state after it."""
        self.last_probe_at = self._clock()
        if result.ok:
            self._succeeded(result)
        else:
            self._failed(result.error or "probe failed")
        return self.state

    def record_failure(self, error: str) -> ReplicaState:
        """A failure seen while relaying a request (passive health): counts like a failed probe."""
        return self.record(ProbeResult(ok=False, error=error))

    def note_placed(self) -> None:
        """A session was just placed here: ranked as one slot fewer until the next probe.

        Only ranking uses this estimate: a replica is skipped only when it said it is full, since a
        session placed here may as well have ended (or been refused) since.
        """
        self._placed_since_probe += 1

    def note_full(self) -> None:
        """The replica refused a session for lack of room: no slot until the next probe says otherwise."""
        self.free_slots = 0

    def _succeeded(self, result: ProbeResult) -> None:
        self.last_ok_at = self.last_probe_at
        self.last_latency_ms = result.latency_ms
        self.last_error = None
        self.free_slots = result.free_slots
        self.session_capacity = result.session_capacity
        self._placed_since_probe = 0
        self.consecutive_failures = 0
        self.consecutive_successes += 1
        if self.state is ReplicaState.UNKNOWN or (
            self.state is ReplicaState.UNHEALTHY and self.consecutive_successes >= self._recovery_threshold
        ):
            self.state = ReplicaState.HEALTHY

    def _failed(self, error: str) -> None:
        self.last_error = error
        self.consecutive_successes = 0
        self.consecutive_failures += 1
        if self.state is not ReplicaState.UNHEALTHY and self.consecutive_failures >= self._failure_threshold:
            self.state = ReplicaState.UNHEALTHY

    def to_json(self) -> dict[str, object]:
        """This replica's entry in the router's /status (the original system's keys, and ours)."""
        return {
            "url": self.url,
            "name": self.endpoint.label,
            "role": self.endpoint.role,
            "primary": self.primary,
            "state": self.state.value,
            "status": self.state.value,  # the original system's name for it
            "last_probe_at": self.last_probe_at,
            "last_ok_at": self.last_ok_at,
            "last_latency_ms": self.last_latency_ms,
            "last_error": self.last_error,
            "consecutive_failures": self.consecutive_failures,
            "consecutive_successes": self.consecutive_successes,
            "free_slots": self.free_slots,
            "session_capacity": self.session_capacity,
        }


class ReplicaRegistry:
    """The replicas in configured order, keyed by URL, and the selection rule.

    Selection (``select``): among healthy replicas with a free session slot, the primary; else the
    secondary with the most free slots (as reported, less the sessions placed there since), the
    first in configured order among equals; else None, so the router refuses new sessions.
    """

    def __init__(
        self,
        replicas: Iterable[ReplicaEndpoint],
        *,
        failure_threshold: int = 3,
        recovery_threshold: int = 2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._replicas = {
            endpoint.url: Replica(
                endpoint, failure_threshold=failure_threshold, recovery_threshold=recovery_threshold, clock=clock
            )
            for endpoint in replicas
        }
        if not self._replicas:
            raise ValueError("ReplicaRegistry requires at least one replica")

    def __iter__(self) -> Iterator[Replica]:
        return iter(self._replicas.values())

    def __len__(self) -> int:
        return len(self._replicas)

    def all(self) -> list[Replica]:
        return list(self._replicas.values())

    def get(self, url: str) -> Replica | None:
        return self._replicas.get(url)

    def healthy(self) -> list[Replica]:
        return [replica for replica in self._replicas.values() if replica.is_healthy]

    def select(self, *, exclude: Iterable[str] = ()) -> Replica | None:
        """The replica for a new session, skipping the URLs in ``exclude`` (already tried); None when none fits."""
        skipped = set(exclude)
        candidates = [r for r in self._replicas.values() if r.is_healthy and r.has_free_slot and r.url not in skipped]
        for replica in candidates:
            if replica.primary:
                return replica
        if not candidates:
            return None
        # max() keeps the first of equal keys: configured order breaks ties (an unknown count ranks as 0).
        return max(candidates, key=lambda replica: replica.estimated_free_slots or 0)
