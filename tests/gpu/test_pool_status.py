"""Typed pool status: the /status JSON shape and the counts the health endpoints and metrics read."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gpu.pool_status import PoolStatus, WorkerStatus
from gpu.worker_state import WorkerState
from tests.gpu.status_shape import STATUS_KEYS, WORKER_KEYS, check_original_worker_types


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
        "warmup_enabled": True,
        "warmup_success": True,
        "warmup_error": None,
        "current_model_id": "synthetic",
    }
    fields.update(changes)
    return WorkerStatus(**fields)


def _pool(workers: dict[str, WorkerStatus]) -> PoolStatus:
    return PoolStatus(
        total_gpus=len(workers),
        available_gpus=1,
        queue_size=2,
        queued_segments=3,
        warmup_enabled=True,
        warmup_successful_gpus=1,
        warmup_failed_gpus=1,
        gpu_status=workers,
    )


def test_to_json_is_the_status_endpoint_body() -> None:
    failed = _worker(
        gpu_id=1,
        state=WorkerState.FAILED,
        ready=False,
        alive=False,
        pid=None,
        sessions=0,
        last_error="boom",
        warmup_ms=None,
        boot_ms=None,
        warmup_success=False,
        warmup_error="boom",
        current_model_id=None,
    )
    body = _pool({"gpu-0": _worker(), "gpu-1": failed}).to_json()
    assert json.loads(json.dumps(body)) == body
    assert body == {
        "total_gpus": 2,
        "available_gpus": 1,
        "queue_size": 2,
        "queued_segments": 3,
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
                "available": False,  # a session is bound to it
                "client_count": 1,
                "process_alive": True,
                "warmup_enabled": True,
                "warmup_success": True,
                "warmup_error": None,
                "warmup_timings": {"warmup_ms": 55.5, "boot_ms": 900.0},
                "current_model_id": "synthetic",
            },
            "gpu-1": {
                "gpu_id": 1,
                "state": "failed",
                "ready": False,
                "alive": False,
                "pid": None,
                "sessions": 0,
                "segments_done": 7,
                "running": 0,
                "last_error": "boom",
                "warmup_ms": None,
                "boot_ms": None,
                "restarts": 0,
                "available": False,
                "client_count": 0,
                "process_alive": False,
                "warmup_enabled": True,
                "warmup_success": False,
                "warmup_error": "boom",
                "warmup_timings": {},
                "current_model_id": None,
            },
        },
    }
    assert set(body) == STATUS_KEYS
    for worker in body["gpu_status"].values():
        assert set(worker) == WORKER_KEYS
        check_original_worker_types(worker)


@pytest.mark.parametrize(
    ("changes", "available"),
    [
        ({"sessions": 0}, True),
        ({"sessions": 1}, False),
        ({"sessions": 0, "ready": False, "state": WorkerState.BOOTING}, False),
        ({"sessions": 0, "alive": False}, False),
    ],
)
def test_a_worker_is_available_when_ready_alive_and_without_sessions(changes: dict[str, Any], available: bool) -> None:
    assert _worker(**changes).available is available


def test_client_count_and_process_alive_are_the_originals_names() -> None:
    worker = _worker(sessions=3, alive=False)
    assert (worker.client_count, worker.process_alive) == (3, False)


def test_warmup_timings_only_after_a_successful_warm_up() -> None:
    assert _worker().warmup_timings == {"warmup_ms": 55.5, "boot_ms": 900.0}
    assert _worker(warmup_success=False).warmup_timings == {}
    assert _worker(boot_ms=None).warmup_timings == {"warmup_ms": 55.5}


def test_with_waiting_sessions_adds_to_queue_size_only() -> None:
    status = _pool({"gpu-0": _worker()})
    waiting = status.with_waiting_sessions(4)
    assert (waiting.queue_size, waiting.queued_segments) == (6, 3)
    assert status.queue_size == 2  # the snapshot itself is unchanged
    assert status.with_waiting_sessions(-1).queue_size == 2
    assert waiting.gpu_status == status.gpu_status


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
