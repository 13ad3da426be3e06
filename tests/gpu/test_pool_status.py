"""Typed pool status: the /status JSON shape and the counts the health endpoints and metrics read."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gpu.pool_status import PoolStatus, WorkerStatus
from gpu.worker_state import WorkerState


def _worker(**changes: Any) -> WorkerStatus:
    fields: dict[str, Any] = {
        "gpu_id": 0,
        "state": WorkerState.READY,
        "ready": True,
        "alive": True,
        "pid": 1234,
        "sessions": 1,
        "running": 0,
        "segments_done": 7,
        "last_error": None,
        "warmup_ms": 55.5,
        "boot_ms": 900.0,
        "restarts": 0,
    }
    fields.update(changes)
    return WorkerStatus(**fields)


def _pool(workers: dict[str, WorkerStatus]) -> PoolStatus:
    return PoolStatus(
        total_gpus=len(workers),
        available_gpus=1,
        queue_size=2,
        warmup_enabled=True,
        warmup_successful_gpus=1,
        warmup_failed_gpus=1,
        gpu_status=workers,
    )


def test_to_json_is_the_status_endpoint_body() -> None:
    failed = _worker(gpu_id=1, state=WorkerState.FAILED, ready=False, alive=False, pid=None, last_error="boom")
    body = _pool({"gpu-0": _worker(), "gpu-1": failed}).to_json()
    assert json.loads(json.dumps(body)) == body
    assert body == {
        "total_gpus": 2,
        "available_gpus": 1,
        "queue_size": 2,
        "warmup_enabled": True,
        "warmup_successful_gpus": 1,
        "warmup_failed_gpus": 1,
        "gpu_status": {
            "gpu-0": {
                "gpu_id": 0,
                "state": "ready",
                "ready": True,
                "alive": True,
                "pid": 1234,
                "sessions": 1,
                "segments_done": 7,
                "running": 0,
                "last_error": None,
                "warmup_ms": 55.5,
                "boot_ms": 900.0,
                "restarts": 0,
            },
            "gpu-1": {
                "gpu_id": 1,
                "state": "failed",
                "ready": False,
                "alive": False,
                "pid": None,
                "sessions": 1,
                "segments_done": 7,
                "running": 0,
                "last_error": "boom",
                "warmup_ms": 55.5,
                "boot_ms": 900.0,
                "restarts": 0,
            },
        },
    }


def test_ready_and_busy_workers_are_counted() -> None:
    status = _pool(
        {
            "gpu-0": _worker(running=1),
            "gpu-1": _worker(running=0),
            "gpu-2": _worker(ready=False, state=WorkerState.RESTARTING, running=0),
        }
    )
    assert (status.ready_workers, status.busy_workers) == (2, 1)
    assert status.ready
    assert not _pool({"gpu-0": _worker(ready=False, state=WorkerState.BOOTING)}).ready


def test_a_snapshot_does_not_follow_the_dict_it_was_built_from() -> None:
    workers = {"gpu-0": _worker()}
    status = _pool(workers)
    workers["gpu-1"] = _worker()
    assert list(status.gpu_status) == ["gpu-0"]
    with pytest.raises(TypeError):
        status.gpu_status["gpu-2"] = _worker()  # type: ignore[index]
