"""The lifecycle of a pool worker, shared by both pools, and why a worker process was lost.

Pure enums and a transition table; no I/O. A pool moves a worker only along the table's edges, so a
late message (a ``ready`` report from a worker already given up on) cannot resurrect it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["CrashReason", "InvalidTransitionError", "WorkerState", "advance"]


class WorkerState(enum.Enum):
    """Where a worker is in its life; the value is what ``/status`` shows."""

    NEW = "new"
    BOOTING = "booting"  # building the generator and warming it up
    READY = "ready"
    FAILED = "failed"  # could not boot; kept out of service
    RESTARTING = "restarting"  # lost after being ready; a fresh process is on its way
    STOPPING = "stopping"
    STOPPED = "stopped"

    def can_become(self, target: WorkerState) -> bool:
        """Whether the lifecycle allows moving from this state to ``target``."""
        return target in _TRANSITIONS[self]


_TRANSITIONS: Mapping[WorkerState, frozenset[WorkerState]] = MappingProxyType(
    {
        WorkerState.NEW: frozenset({WorkerState.BOOTING, WorkerState.STOPPING}),
        WorkerState.BOOTING: frozenset({WorkerState.READY, WorkerState.FAILED, WorkerState.STOPPING}),
        WorkerState.READY: frozenset({WorkerState.RESTARTING, WorkerState.STOPPING}),
        WorkerState.RESTARTING: frozenset({WorkerState.BOOTING, WorkerState.STOPPING}),
        WorkerState.FAILED: frozenset({WorkerState.STOPPING}),
        WorkerState.STOPPING: frozenset({WorkerState.STOPPED}),
        WorkerState.STOPPED: frozenset(),
    }
)


class InvalidTransitionError(RuntimeError):
    """A pool tried to move a worker along an edge its lifecycle does not have (a bug in the pool)."""


def advance(current: WorkerState, target: WorkerState) -> WorkerState:
    """``target`` if ``current`` may become it, else InvalidTransitionError naming both."""
    if not current.can_become(target):
        raise InvalidTransitionError(f"worker cannot go from {current.value} to {target.value}")
    return target


class CrashReason(enum.Enum):
    """Why a worker process went away or was given up on; the value reads well in an error message."""

    PROCESS_DIED = "worker process died"
    DEADLINE_OVERRUN = "overran the segment deadline"
    BOOT_TIMEOUT = "sent no ready report before the boot deadline"
    BOOT_FAILED = "failed to boot"
    DIED_WHILE_BOOTING = "died while booting"
