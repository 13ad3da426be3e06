"""Video generation: the generator contract, backends, frame markers and GPU pools."""

from gpu.factory import build_generator
from gpu.frame_marker import FrameMarker, draw_marker, marker_region, read_marker
from gpu.generator import (
    ContinuationState,
    FrameCallback,
    Generator,
    GeneratorError,
    IncompatibleStateError,
    SegmentCancelled,
    SegmentRequest,
    SegmentResult,
    StepCallback,
)
from gpu.pool import (
    GpuPool,
    InProcessGpuPool,
    PoolAssignment,
    PoolError,
    PoolUnavailableError,
    SessionNotBoundError,
)
from gpu.pool_status import PoolStatus, WorkerStatus
from gpu.synthetic import SyntheticGenerator
from gpu.worker_state import CrashReason, WorkerState

__all__ = [
    "ContinuationState",
    "CrashReason",
    "FrameCallback",
    "FrameMarker",
    "Generator",
    "GeneratorError",
    "GpuPool",
    "InProcessGpuPool",
    "IncompatibleStateError",
    "PoolAssignment",
    "PoolError",
    "PoolStatus",
    "PoolUnavailableError",
    "SegmentCancelled",
    "SegmentRequest",
    "SegmentResult",
    "SessionNotBoundError",
    "StepCallback",
    "SyntheticGenerator",
    "WorkerState",
    "WorkerStatus",
    "build_generator",
    "draw_marker",
    "marker_region",
    "read_marker",
]
