"""Liveness, readiness and status payloads (protocol.md, "Health endpoints"). Pure functions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gpu.pool_status import PoolStatus

__all__ = ["SERVICE_NAME", "healthz_payload", "readyz_payload", "session_slots"]

SERVICE_NAME = "rtc-video-stream"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def healthz_payload() -> dict[str, Any]:
    return {"status": "ok", "service": SERVICE_NAME, "ts": _now_iso()}


def readyz_payload(pool_status: PoolStatus, *, draining: bool = False) -> tuple[dict[str, Any], bool]:
    """The /readyz body and whether the service is ready (at least one worker ready, not shutting down)."""
    ready_workers = pool_status.ready_workers
    status = "draining" if draining else "ready" if ready_workers > 0 else "warming"
    payload = {
        "status": status,
        "service": SERVICE_NAME,
        "ready_gpu_workers": ready_workers,
        "total_gpus": pool_status.total_gpus,
        "available_gpus": pool_status.available_gpus,
        "warmup_successful_gpus": pool_status.warmup_successful_gpus,
        "warmup_failed_gpus": pool_status.warmup_failed_gpus,
        "queue_size": pool_status.queue_size,
        "ts": _now_iso(),
    }
    return payload, ready_workers > 0 and not draining


def session_slots(*, capacity: int, open_sessions: int, ready: bool) -> dict[str, int]:
    """What ``/status`` adds for the router: ``session_capacity`` (sessions held at once, streaming or
    queued) and ``free_slots`` (new sessions it would take now; 0 while it is not ``ready`` to: warming
    or draining)."""
    free = max(0, capacity - open_sessions) if ready else 0
    return {"session_capacity": capacity, "free_slots": free}
