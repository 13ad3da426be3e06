"""Liveness, readiness and status payloads (protocol.md, "Health endpoints"). Pure functions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gpu.pool_status import PoolStatus

__all__ = ["SERVICE_NAME", "healthz_payload", "readyz_payload"]

SERVICE_NAME = "rtc-video-stream"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def healthz_payload() -> dict[str, Any]:
    return {"status": "ok", "service": SERVICE_NAME, "ts": _now_iso()}


def readyz_payload(pool_status: PoolStatus) -> tuple[dict[str, Any], bool]:
    """The /readyz body and whether the service is ready (at least one worker ready)."""
    ready_workers = pool_status.ready_workers
    payload = {
        "status": "ready" if ready_workers > 0 else "warming",
        "service": SERVICE_NAME,
        "ready_gpu_workers": ready_workers,
        "total_gpus": pool_status.total_gpus,
        "available_gpus": pool_status.available_gpus,
        "warmup_successful_gpus": pool_status.warmup_successful_gpus,
        "warmup_failed_gpus": pool_status.warmup_failed_gpus,
        "queue_size": pool_status.queue_size,
        "ts": _now_iso(),
    }
    return payload, ready_workers > 0
