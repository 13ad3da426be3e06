"""The /status JSON shape of protocol.md ("Health endpoints"), which both pools must produce.

``ORIGINAL_*`` are the fields of the original system's ``/status`` (FastVideo's
``GPUPool.get_status``), with the JSON types it gives them; the others are this project's additions.
"""

ORIGINAL_STATUS_KEYS = {
    "total_gpus",
    "available_gpus",
    "queue_size",
    "warmup_enabled",
    "warmup_successful_gpus",
    "warmup_failed_gpus",
    "gpu_status",
}
STATUS_KEYS = ORIGINAL_STATUS_KEYS | {"queued_segments"}
# The original's per-GPU fields and the JSON types of their values (None: null allowed).
ORIGINAL_WORKER_TYPES: dict[str, tuple[type | None, ...]] = {
    "ready": (bool,),
    "available": (bool,),
    "client_count": (int,),
    "current_model_id": (str, None),
    "process_alive": (bool,),
    "warmup_enabled": (bool,),
    "warmup_success": (bool,),
    "warmup_error": (str, None),
    "warmup_timings": (dict,),
}
WORKER_KEYS = set(ORIGINAL_WORKER_TYPES) | {
    "gpu_id",
    "state",
    "alive",
    "pid",
    "sessions",
    "segments_done",
    "running",
    "last_error",
    "warmup_ms",
    "boot_ms",
    "restarts",
}


def check_original_worker_types(worker: dict[str, object]) -> None:
    """Assert ``worker`` (one ``gpu_status`` entry, parsed JSON) has the original's fields, typed as it types them."""
    for name, types in ORIGINAL_WORKER_TYPES.items():
        value = worker[name]
        if value is None:
            assert None in types, f"{name} is null"
            continue
        allowed = tuple(t for t in types if t is not None)
        assert isinstance(value, allowed), f"{name}={value!r}"
        if allowed == (int,):
            assert not isinstance(value, bool), f"{name}={value!r}"
    timings = worker["warmup_timings"]
    assert isinstance(timings, dict)
    assert all(isinstance(k, str) and isinstance(v, float) for k, v in timings.items())
