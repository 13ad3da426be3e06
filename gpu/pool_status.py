"""A pool's status as typed values: what ``/status``, ``/readyz`` and the metrics read.

``PoolStatus.to_json()`` is the ``/status`` body of protocol.md ("Health endpoints"): the counts plus
``gpu_status`` keyed by worker id. Both pools report every ``WorkerStatus`` field (in process ``pid``
is null and ``restarts`` stays 0); ``boot_ms`` covers building the generator and warming it up.

The original system's fields (FastVideo's ``GPUPool.get_status``) keep its meanings: a worker is
``available`` when it is ready, its process alive and no session is bound to it (``client_count``
0), and ``available_gpus`` counts those; ``warmup_success`` says the worker's latest boot finished
its warm-up, ``warmup_error`` why it did not get ready (a generator that cannot even be built counts
as a failed warm-up here), ``warmup_timings`` the warm-up's times in ms (empty until it succeeded),
``current_model_id`` the backend the worker serves (null until one was built); ``queue_size`` counts
sessions waiting to be admitted. This project's fields (``state``, ``sessions``, ``running``,
``queued_segments``...) come alongside.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from gpu.worker_state import WorkerState

__all__ = ["PoolStatus", "WorkerStatus"]


@dataclass(frozen=True, kw_only=True)
class WorkerStatus:
    """One worker: lifecycle state, load, and what went wrong last.

    ``running`` counts segments the worker is generating now (an abandoned one included, until it
    stops); ``sessions`` the sessions bound to it; ``alive`` whether its process (in process: its
    generator) is up. ``warmup_success``, ``warmup_error`` and ``current_model_id`` are the original
    system's fields (see the module docstring); ``available``, ``client_count``, ``process_alive``
    and ``warmup_timings`` follow from the others.
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
    warmup_enabled: bool
    warmup_success: bool
    warmup_error: str | None
    current_model_id: str | None

    @property
    def busy(self) -> bool:
        """Whether the worker is generating a segment now."""
        return self.running > 0

    @property
    def client_count(self) -> int:
        """Sessions bound to the worker (the original's name for ``sessions``)."""
        return self.sessions

    @property
    def process_alive(self) -> bool:
        """Whether the worker's process is running (the original's name for ``alive``)."""
        return self.alive

    @property
    def available(self) -> bool:
        """Whether a new session would get this worker to itself now: ready, alive, no session bound."""
        return self.ready and self.alive and self.sessions == 0

    @property
    def warmup_timings(self) -> dict[str, float]:
        """The successful warm-up's times in ms; empty when it did not run or did not succeed."""
        if not self.warmup_success:
            return {}
        timings = {"warmup_ms": self.warmup_ms, "boot_ms": self.boot_ms}
        return {name: value for name, value in timings.items() if value is not None}

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
            "available": self.available,
            "client_count": self.client_count,
            "process_alive": self.process_alive,
            "warmup_enabled": self.warmup_enabled,
            "warmup_success": self.warmup_success,
            "warmup_error": self.warmup_error,
            "warmup_timings": self.warmup_timings,
            "current_model_id": self.current_model_id,
        }


@dataclass(frozen=True, kw_only=True)
class PoolStatus:
    """A snapshot of a whole pool.

    ``queue_size`` counts sessions waiting to be admitted: a pool counts those waiting in its own
    ``acquire``, and the server adds those waiting in its admission queue (``with_waiting_sessions``).
    ``queued_segments`` counts segments of bound sessions waiting for a worker to start them.
    """

    total_gpus: int
    available_gpus: int
    queue_size: int
    queued_segments: int
    warmup_enabled: bool
    warmup_successful_gpus: int
    warmup_failed_gpus: int
    gpu_status: Mapping[str, WorkerStatus]

    def __post_init__(self) -> None:
        # A read-only copy: a snapshot must not change when the caller's dict does.
        object.__setattr__(self, "gpu_status", MappingProxyType(dict(self.gpu_status)))

    def with_waiting_sessions(self, waiting: int) -> PoolStatus:
        """This snapshot with ``waiting`` more sessions waiting for admission (the server's queue)."""
        return replace(self, queue_size=self.queue_size + max(waiting, 0))

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
            "queued_segments": self.queued_segments,
            "warmup_enabled": self.warmup_enabled,
            "warmup_successful_gpus": self.warmup_successful_gpus,
            "warmup_failed_gpus": self.warmup_failed_gpus,
            "gpu_status": {worker_id: worker.to_json() for worker_id, worker in self.gpu_status.items()},
        }
