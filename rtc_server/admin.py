"""Operator access: the admin bearer token, and what /status shows to everyone else."""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from gpu.pool_status import PoolStatus
from rtc_server.auth import bearer_token

__all__ = ["is_admin", "public_status"]

# The original system's per-GPU fields a client may rely on, and ours without process ids or error text.
_PUBLIC_WORKER_FIELDS = (
    "gpu_id",
    "state",
    "ready",
    "available",
    "client_count",
    "process_alive",
    "warmup_enabled",
    "warmup_success",
    "warmup_timings",
    "current_model_id",
)


def is_admin(request: web.Request, admin_token: str | None) -> bool:
    """True when the request carries the configured admin token (never when none is configured)."""
    offered = bearer_token(request.headers.get("Authorization"))
    if admin_token is None or offered is None:
        return False
    return hmac.compare_digest(offered.encode(), admin_token.encode())


def public_status(status: PoolStatus) -> dict[str, Any]:
    """/status for anyone: the counts of protocol.md and each worker's state, without its details."""
    body = status.to_json()
    body["gpu_status"] = {
        worker_id: {field: worker[field] for field in _PUBLIC_WORKER_FIELDS}
        for worker_id, worker in body["gpu_status"].items()
    }
    return body
