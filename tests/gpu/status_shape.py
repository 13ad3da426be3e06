"""The /status JSON shape of protocol.md ("Health endpoints"), which both pools must produce."""

STATUS_KEYS = {
    "total_gpus",
    "available_gpus",
    "queue_size",
    "warmup_enabled",
    "warmup_successful_gpus",
    "warmup_failed_gpus",
    "gpu_status",
}
WORKER_KEYS = {
    "gpu_id",
    "state",
    "ready",
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
