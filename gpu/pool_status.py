"""A pool's status as typed values: what ``/status``, ``/readyz`` and the metrics read.

``PoolStatus.to_json()`` is the ``/status`` body of protocol.md ("Health endpoints"): the counts plus
``gpu_status`` keyed by worker id. Both pools report every ``WorkerStatus`` field (in process ``pid``
is null and ``restarts`` stays 0); ``boot_ms`` covers building the generator and warming it up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gpu.worker_state import WorkerState

__all__ = ["PoolStatus", "WorkerStatus"]


@dataclass(frozen=True, kw_only=True)
class WorkerStatus:
    """One worker: lifecycle state, load, and what went wrong last.

    ``running`` counts segments the worker is generating now (an abandoned one included, until it
    stops); ``sessions`` the sessions bound to it.
    """

    gpu_id: int
    state: WorkerState
    ready: bool
    alive: bool
    pid: int | None
    sessions: int
    running: int
    segments_done: int
    last_error: str | None
    warmup_ms: float | None
    boot_ms: float | None
    restarts: int

    @property
    def busy(self) -> bool:
        """Whether the worker is generating a segment now."""
        return self.running > 0

    def to_json(self) -> dict[str, Any]:
        """The worker's entry in ``/status`` ``gpu_status``."""
        return {
            "gpu_id": self.gpu_id,
            "state": self.state.value,
            "ready": self.ready,
            "alive": self.alive,
            "pid": self.pid,
            "sessions": self.sessions,
            "segments_done": self.segments_done,
            "running": self.running,
            "last_error": self.last_error,
            "warmup_ms": self.warmup_ms,
            "boot_ms": self.boot_ms,
            "restarts": self.restarts,
        }


@dataclass(frozen=True, kw_only=True)
class PoolStatus:
    """A snapshot of a whole pool; ``queue_size`` counts segments waiting for a worker to start them."""

    total_gpus: int
    available_gpus: int
    queue_size: int
    warmup_enabled: bool
    warmup_successful_gpus: int
    warmup_failed_gpus: int
    gpu_status: Mapping[str, WorkerStatus]

    def __post_init__(self) -> None:
        # A read-only copy: a snapshot must not change when the caller's dict does.
        object.__setattr__(self, "gpu_status", MappingProxyType(dict(self.gpu_status)))

    @property
    def ready_workers(self) -> int:
        """Workers ready to generate."""
        return sum(1 for worker in self.gpu_status.values() if worker.ready)

    @property
    def busy_workers(self) -> int:
        """Workers generating a segment now."""
        return sum(1 for worker in self.gpu_status.values() if worker.busy)

    @property
    def ready(self) -> bool:
        """Whether at least one worker is ready (what ``/readyz`` answers)."""
        return self.ready_workers > 0

    def to_json(self) -> dict[str, Any]:
        """The ``/status`` body."""
        return {
            "total_gpus": self.total_gpus,
            "available_gpus": self.available_gpus,
            "queue_size": self.queue_size,
            "warmup_enabled": self.warmup_enabled,
            "warmup_successful_gpus": self.warmup_successful_gpus,
            "warmup_failed_gpus": self.warmup_failed_gpus,
            "gpu_status": {worker_id: worker.to_json() for worker_id, worker in self.gpu_status.items()},
        }
