"""Liveness, readiness and status payloads (protocol.md, "Health endpoints"). Pure functions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

__all__ = ["SERVICE_NAME", "healthz_payload", "readyz_payload"]

SERVICE_NAME = "rtc-video-stream"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def healthz_payload() -> dict[str, Any]:
    return {"status": "ok", "service": SERVICE_NAME, "ts": _now_iso()}


def ready_worker_count(pool_status: dict[str, Any]) -> int:
    return sum(1 for worker in pool_status.get("gpu_status", {}).values() if worker.get("ready"))


def readyz_payload(pool_status: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The /readyz body and whether the service is ready (at least one worker ready)."""
    ready_workers = ready_worker_count(pool_status)
    payload = {
        "status": "ready" if ready_workers > 0 else "warming",
        "service": SERVICE_NAME,
        "ready_gpu_workers": ready_workers,
        "total_gpus": int(pool_status.get("total_gpus", 0)),
        "available_gpus": int(pool_status.get("available_gpus", 0)),
        "warmup_successful_gpus": int(pool_status.get("warmup_successful_gpus", 0)),
        "warmup_failed_gpus": int(pool_status.get("warmup_failed_gpus", 0)),
        "queue_size": int(pool_status.get("queue_size", 0)),
        "ts": _now_iso(),
    }
    return payload, ready_workers > 0
